"""A spool the disk refuses: real OS errors (a directory that is not one, a full tmpfs, a
read-only remount), never a silent loss — usage stays in memory, the failure is counted and
named, and admission answers 503 ``metering_unavailable`` until the disk takes writes again."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from control_api.client.internal import InternalClient
from control_api.client.spool import Spool, SpoolUnwritable
from core.spec import DeploymentSpec
from serve_apps import protocol
from serve_apps.admission import Admission
from serve_apps.auth import Principal
from serve_apps.spools import UsageHealth
from tests.client.conftest import free_port

CHILD = Path(__file__).with_name("spool_fault_child.py")


def record(i: int) -> dict[str, object]:
    return {"request_id": f"r-{i}", "model": "tiny", "prompt_tokens": 3,
            "completion_tokens": 4, "status": "completed", "at": datetime.now(UTC)}


def break_dir(path: Path) -> None:
    """Replace a directory by a plain file: every create inside it fails with ENOTDIR."""
    shutil.rmtree(path)
    path.write_bytes(b"")


def admit(health: UsageHealth) -> protocol.OpenAIError | None:
    adm = Admission(enabled=False, limiter_name="t", metering=health)
    dep = DeploymentSpec.model_validate({
        "name": "chat", "model": {"name": "m", "source": "/nowhere", "task": "chat"},
        "engine": {"max_model_len": 2048}})
    key = Principal(api_key_id=uuid.uuid4(), org_id=uuid.uuid4(), user_id=None,
                    allowed_models=None, rpm_limit=None, tpm_limit=None, budget_left_eur=None)
    try:
        asyncio.run(adm.admit("r", key, dep, 1, 1))
    except protocol.OpenAIError as err:
        return err
    return None


def test_a_refused_write_raises_spool_unwritable_and_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    break_dir(tmp_path / "usage")
    with pytest.raises(SpoolUnwritable) as info:
        spool.put("usage", {"records": []})
    assert info.value.errno_name == "ENOTDIR" and info.value.code == "spool_unwritable"
    assert spool.count() == 0
    with pytest.raises(SpoolUnwritable):
        spool.probe()


def test_usage_is_kept_counted_and_admission_refused_until_the_disk_recovers(
        tmp_path: Path) -> None:
    client = InternalClient(f"http://127.0.0.1:{free_port()}", "t", spool_dir=tmp_path,
                            max_retries=0, sleep=lambda _s: None, usage_batch_size=10)
    health = UsageHealth(client)
    assert admit(health) is None
    break_dir(tmp_path / "usage")
    for i in range(25):
        client.enqueue_usage(record(i))
    report = client.flush()  # control API down, spool refused
    assert not report.reachable and report.spooled_batches == 0
    assert client.buffered_usage == 25  # nothing lost
    assert client.stats.spool_write_errors == 1 and client.stats.dropped_usage_records == 0
    assert client.spool_failure == "ENOTDIR" and not client.usage_durable
    err = admit(health)
    assert err is not None and (err.status, err.code) == (503, "metering_unavailable")
    assert err.body()["error"]["type"] == "server_error" and err.headers["Retry-After"]
    assert client.check_spool() is False  # still broken
    (tmp_path / "usage").unlink()
    (tmp_path / "usage").mkdir()
    assert client.check_spool() is True and client.usage_durable
    assert admit(health) is None
    client.flush()
    assert client.buffered_usage == 0 and client.spool.count("usage") == 3
    client.close(flush=False)


def test_over_the_memory_bound_records_are_dropped_and_counted(tmp_path: Path) -> None:
    client = InternalClient(f"http://127.0.0.1:{free_port()}", "t", spool_dir=tmp_path,
                            max_retries=0, sleep=lambda _s: None, usage_batch_size=10,
                            max_buffered_usage=20)
    break_dir(tmp_path / "usage")
    for i in range(35):
        client.enqueue_usage(record(i))  # over 20 the oldest batch is spilled: refused
    assert client.buffered_usage + client.stats.dropped_usage_records == 35
    assert client.stats.dropped_usage_records > 0 and client.spool_failure == "ENOTDIR"
    client.close(flush=False)


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs root and mount namespaces (unshare -m)")
def test_enospc_and_erofs_on_a_real_tiny_tmpfs(tmp_path: Path) -> None:
    """In a private mount namespace (gone with the child process): a 512 KiB tmpfs, filled,
    then freed, then remounted read-only."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = 'mount -t tmpfs -o size=512k tmpfs "$1" && exec "$2" "$3" "$1"'
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(mnt),
         sys.executable, str(CHILD)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["before"]["admit"] == "admitted"
    full = out["full"]
    assert full["failure"] == "ENOSPC" and full["write_errors"] >= 1
    assert full["buffered"] == 1200 and full["dropped"] == 0 and full["leftovers"] == []
    assert full["admit"] == "503 metering_unavailable"
    assert out["probe"] is True
    freed = out["freed"]
    assert freed["failure"] is None and freed["buffered"] == 0 and freed["pending"] == 3
    assert freed["admit"] == "admitted"
    ro = out["read_only"]
    assert ro["failure"] == "EROFS" and ro["buffered"] == 700 and ro["dropped"] == 0
    assert ro["admit"] == "503 metering_unavailable"
    assert not any(mnt.iterdir())  # the tmpfs never existed out here
