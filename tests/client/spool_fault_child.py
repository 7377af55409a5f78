"""Run by ``test_spool_faults`` inside a private mount namespace where ``argv[1]`` is a tiny
tmpfs: the usage client's spool meets a real full disk (ENOSPC), then a read-only one (EROFS),
while the control API is down. Prints what happened as one JSON line."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from control_api.client.internal import InternalClient
from core.spec import DeploymentSpec
from serve_apps import protocol
from serve_apps.admission import Admission
from serve_apps.auth import Principal
from serve_apps.spools import UsageHealth


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed


def records(n: int, tag: str) -> list[dict[str, Any]]:
    return [{"request_id": f"{tag}-{i}", "model": "tiny", "prompt_tokens": 3,
             "completion_tokens": 4, "status": "completed", "at": datetime.now(UTC)}
            for i in range(n)]


def fill(path: Path) -> None:
    """Write until the file system says ENOSPC."""
    with path.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            pass


def admit(health: UsageHealth) -> str:
    adm = Admission(enabled=False, limiter_name="t", metering=health)
    dep = DeploymentSpec.model_validate({
        "name": "chat", "model": {"name": "m", "source": "/nowhere", "task": "chat"},
        "engine": {"max_model_len": 2048}})
    key = Principal(api_key_id=uuid.uuid4(), org_id=uuid.uuid4(), user_id=None,
                    allowed_models=None, rpm_limit=None, tpm_limit=None, budget_left_eur=None)
    try:
        asyncio.run(adm.admit("r", key, dep, 1, 1))
    except protocol.OpenAIError as err:
        return f"{err.status} {err.code}"
    return "admitted"


def snapshot(client: InternalClient, health: UsageHealth) -> dict[str, Any]:
    st = client.stats
    return {"failure": client.spool_failure, "buffered": client.buffered_usage,
            "pending": client.spool.count("usage"), "write_errors": st.spool_write_errors,
            "dropped": st.dropped_usage_records, "admit": admit(health),
            "leftovers": sorted(p.name for p in (client.spool.root / "usage").glob(".tmp-*"))}


def main() -> None:
    root = Path(sys.argv[1])
    client = InternalClient(dead_url(), "t", spool_dir=root / "spool", max_retries=0,
                            sleep=lambda _s: None, usage_batch_size=500)
    health = UsageHealth(client)
    out: dict[str, Any] = {"before": snapshot(client, health)}
    filler = root / "filler"
    fill(filler)
    for rec in records(1200, "a"):
        client.enqueue_usage(rec)
    client.flush()  # the API is down and the disk is full
    out["full"] = snapshot(client, health)
    filler.unlink()
    out["probe"] = client.check_spool()
    client.flush()
    out["freed"] = snapshot(client, health)
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    for rec in records(700, "b"):
        client.enqueue_usage(rec)
    client.flush()
    out["read_only"] = snapshot(client, health)
    client.close(flush=False)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
