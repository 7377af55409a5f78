"""Process supervision on ``psutil`` (portable: Linux and macOS), the one place that looks at
other processes: whether a pid still runs (and is still *ours*, not a reused pid), the members
of a process group, processes marked by an environment variable, and stopping a group.

``psutil`` is already a dependency of Ray and vLLM. A process we may not inspect (another
user's, macOS hardened processes) counts as "not ours": we never signal what we cannot identify.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

__all__ = [
    "MarkedProcess", "alive", "find_marked", "group_members", "signal_group", "start_time",
    "stop_group", "wait_gone",
]

_DEAD = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
# Two reads of a process's creation time differ by rounding only (psutil derives it from boot
# time + clock ticks): this tolerance tells the same process from a reused pid.
_START_TOLERANCE_S = 0.05


def start_time(pid: int | None) -> float | None:
    """The process's creation time (seconds since the epoch), or None if it does not run."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() in _DEAD:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None


def alive(pid: int | None, started_at: float | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, when given, was created at ``started_at``."""
    created = start_time(pid)
    if created is None:
        return False
    return started_at is None or abs(created - started_at) <= _START_TOLERANCE_S


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of the process group ``pgid``."""
    out: list[int] = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] in _DEAD:
                continue
            if os.getpgid(proc.pid) == pgid:
                out.append(proc.pid)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return out


@dataclass(frozen=True)
class MarkedProcess:
    pid: int
    ppid: int
    environ: dict[str, str]


def find_marked(key: str, value: str | None = None, *,
                exclude: Iterable[int] = ()) -> list[MarkedProcess]:
    """Live processes whose environment has ``key`` (equal to ``value`` when given).

    Every process a node or service starts inherits its marker, also those that move to a
    session of their own, which a process-group signal would miss.
    """
    skip = {os.getpid(), *exclude}
    found: list[MarkedProcess] = []
    for proc in psutil.process_iter(["status", "ppid"]):
        if proc.pid in skip or proc.info["status"] in _DEAD:
            continue
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if key in env and (value is None or env[key] == value):
            found.append(MarkedProcess(proc.pid, int(proc.info["ppid"] or 0), dict(env)))
    return found


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False if it no longer exists or is not ours."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def wait_gone(pids: Iterable[int], timeout_s: float) -> list[int]:
    """Wait up to ``timeout_s`` for the processes to exit; returns those still alive."""
    procs: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    _gone, still = psutil.wait_procs(procs, timeout=max(0.0, timeout_s))
    return [p.pid for p in still if alive(p.pid)]


def stop_group(pgid: int, grace_s: float = 10.0, poll_s: float = 0.1) -> bool:
    """SIGTERM the group led by ``pgid``, SIGKILL what is left after ``grace_s``.

    Returns True if the group existed. Waits until no member runs (zombies do not count).
    """
    if not signal_group(pgid, signal.SIGTERM):
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not group_members(pgid):
            return True
        time.sleep(poll_s)
    signal_group(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(poll_s)
    return True
