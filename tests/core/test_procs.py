"""Process supervision on psutil, with real processes: liveness and identity of a pid, zombies,
stopping a process group (SIGTERM, then SIGKILL), and processes found by an environment
marker."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import psutil
import pytest

from core import procs


def wait_until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.02)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start real processes; whatever a test leaves running is killed and reaped after it."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,  # noqa: S603 - fixed argv
                                **kwargs)  # type: ignore[call-overload]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, 9) if os.getpgid(proc.pid) == proc.pid else proc.kill()
            except ProcessLookupError:
                pass
            proc.wait(5)


def test_alive_and_start_time_of_a_real_child(spawn: Callable[..., subprocess.Popen[bytes]]
                                              ) -> None:
    proc = spawn(["sleep", "30"])
    started = procs.start_time(proc.pid)
    assert started is not None
    assert started == pytest.approx(psutil.Process(proc.pid).create_time(), abs=0.05)
    assert abs(started - time.time()) < 60
    assert procs.alive(proc.pid) and procs.alive(proc.pid, started)
    # Another creation time: the pid was reused by someone else, not our process.
    assert not procs.alive(proc.pid, started - 10)
    proc.kill()
    proc.wait(5)
    assert not procs.alive(proc.pid) and procs.start_time(proc.pid) is None
    assert not procs.alive(None) and procs.start_time(None) is None and not procs.alive(0)


def test_a_zombie_counts_as_dead(spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    proc = spawn(["sleep", "30"])
    proc.kill()  # not reaped: the child stays a zombie until we wait for it
    wait_until(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE)
    assert not procs.alive(proc.pid)
    assert procs.start_time(proc.pid) is None
    assert procs.group_members(os.getpgid(0)).count(proc.pid) == 0
    proc.wait(5)


def test_stop_group_terminates_a_real_process_group(
        spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    proc = spawn(["sh", "-c", "sleep 300 & sleep 300"], start_new_session=True)
    wait_until(lambda: len(procs.group_members(proc.pid)) == 3)  # sh and its two sleeps
    members = procs.group_members(proc.pid)
    assert proc.pid in members and os.getpid() not in members
    t0 = time.monotonic()
    assert procs.stop_group(proc.pid, grace_s=5.0) is True
    assert time.monotonic() - t0 < 4  # SIGTERM was enough: no wait for the grace period
    assert procs.group_members(proc.pid) == []
    assert proc.wait(5) is not None
    assert all(not procs.alive(pid) for pid in members)


def test_a_group_that_is_gone_is_not_signalled(
        spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    # (A group whose orphans wait, as zombies, for a slow init to reap them still exists.)
    proc = spawn(["sleep", "30"], start_new_session=True)
    proc.kill()
    proc.wait(5)
    assert procs.group_members(proc.pid) == []
    assert procs.signal_group(proc.pid, 15) is False
    assert procs.stop_group(proc.pid, grace_s=1.0) is False


def test_stop_group_escalates_to_sigkill_after_the_grace_period(
        spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    # An ignored SIGTERM is inherited across exec: the shell and its sleep both ignore it.
    proc = spawn(["sh", "-c", "trap '' TERM; sleep 300 & sleep 300"], start_new_session=True)
    wait_until(lambda: len(procs.group_members(proc.pid)) == 3)
    t0 = time.monotonic()
    assert procs.stop_group(proc.pid, grace_s=0.3) is True
    assert 0.3 <= time.monotonic() - t0 < 5
    assert procs.group_members(proc.pid) == []
    assert proc.wait(5) == -9


def test_wait_gone_returns_the_processes_still_running(
        spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    stays, goes = spawn(["sleep", "30"]), spawn(["sleep", "30"])
    goes.kill()
    goes.wait(5)
    assert procs.wait_gone([stays.pid, goes.pid], timeout_s=0.2) == [stays.pid]


def test_find_marked_finds_a_child_by_its_environment_marker(
        spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    key, value = "INVENTIV_TEST_MARK", uuid.uuid4().hex
    env = {"PATH": os.environ["PATH"], key: value}
    proc = spawn(["sleep", "30"], env=env, start_new_session=True)
    other = spawn(["sleep", "30"], env={**env, key: "someone-else"})

    def mine() -> list[procs.MarkedProcess]:
        return procs.find_marked(key, value)

    wait_until(lambda: len(mine()) == 1)
    [found] = mine()
    assert (found.pid, found.ppid) == (proc.pid, os.getpid())
    assert found.environ[key] == value and found.environ["PATH"] == os.environ["PATH"]
    # Any value of the key; the caller itself and excluded pids are never listed.
    assert {proc.pid, other.pid} <= {p.pid for p in procs.find_marked(key)}
    assert procs.find_marked(key, value, exclude=[proc.pid]) == []
    assert os.getpid() not in {p.pid for p in procs.find_marked("PATH")}
    proc.kill()
    proc.wait(5)
    assert mine() == []
