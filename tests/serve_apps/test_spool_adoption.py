"""Spool slots and the adoption of orphaned spools, with real files, real processes (an
"ingress replica" is a child Python process that spools usage while the control API is down,
then is SIGKILLed) and the real control API on the test databases."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from core.models import UsageRecord
from serve_apps.spools import (
    SLOT_LOCK,
    SpoolSlot,
    adopt_orphan_spools,
    claim_slot,
    replay_spool,
)
from tests.client.conftest import ServerThread, free_port, live_server, servers  # noqa: F401
from tests.conftest import SERVICE_TOKEN

REPO = Path(__file__).resolve().parents[2]

# A replica: owns its slot, spools N usage records (the control API is down), says so, waits.
REPLICA = textwrap.dedent("""
    import sys, time
    from datetime import UTC, datetime
    from pathlib import Path
    from control_api.client.internal import InternalClient
    from serve_apps.spools import claim_slot

    root, preferred, url, token, n = sys.argv[1:6]
    slot = claim_slot(Path(root), preferred)
    client = InternalClient(url, token, spool_dir=slot.path / "usage", max_retries=0, timeout=2)
    for i in range(int(n)):
        client.enqueue_usage({"request_id": f"{slot.path.name}-{i}", "model": "tiny",
                              "prompt_tokens": 3, "completion_tokens": 2,
                              "status": "completed", "at": datetime.now(UTC)})
    report = client.flush()
    assert not report.reachable and report.spooled_batches == 1, report
    print("ready", slot.path.name, flush=True)
    time.sleep(600)
""")


class Replica:
    def __init__(self, root: Path, preferred: str, url: str, n: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", REPLICA, str(root), preferred, url, SERVICE_TOKEN, str(n)],
            stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()  # blocks until spooled (or the child died)
        assert line[:1] == ["ready"], f"replica failed: {self.proc.poll()}"
        self.slot = line[1]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # no cleanup at all, like an OOM kill
        self.proc.wait(30)


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    made: list[Replica] = []
    yield made
    for r in made:
        r.kill()


def usage_count(db: sessionmaker[Session]) -> int:
    with db() as s:
        return int(s.scalar(select(func.count()).select_from(UsageRecord)) or 0)


def spooled(slot_dir: Path) -> list[Path]:
    return sorted(slot_dir.glob("usage/usage/[0-9]*.json"))


def test_a_slot_has_one_owner_and_a_dead_owner_frees_it(tmp_path: Path,
                                                        replicas: list[Replica]) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    replica = Replica(tmp_path, "rank-0", down, 1)
    replicas.append(replica)
    assert replica.slot == "rank-0"
    assert SpoolSlot.try_acquire(tmp_path / "rank-0") is None  # alive: not ours
    # A second replica with the same Serve rank (the old one still shutting down) gets its
    # own slot rather than writing into a spool it does not own.
    second = claim_slot(tmp_path, "rank-0")
    assert second.path.name == "rank-0-1"
    assert "rank-0-1" in {p.name for p in tmp_path.iterdir()}
    second.release()
    replica.kill()
    freed = SpoolSlot.try_acquire(tmp_path / "rank-0")
    assert freed is not None
    assert (tmp_path / "rank-0" / SLOT_LOCK).read_text().split()[1] == str(os.getpid())
    freed.release()
    freed.release()  # idempotent


def test_orphaned_spool_is_replayed_once_by_a_live_replica(
        live_server: ServerThread, db: sessionmaker[Session], tmp_path: Path,  # noqa: F811
        replicas: list[Replica]) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    root = tmp_path / "spool"
    gone = Replica(root, "rank-1", down, 5)
    alive = Replica(root, "rank-0", down, 3)
    replicas += [gone, alive]
    me = claim_slot(root, "rank-2")  # this test process plays the adopting replica

    def replay(spool_dir: Path) -> int:
        return replay_spool(live_server.url, SERVICE_TOKEN, spool_dir)

    # While their owners live, nobody touches their spools.
    assert adopt_orphan_spools(root, me.path.name, replay) == {}
    assert len(spooled(root / "rank-1")) == 1 and usage_count(db) == 0
    kept = tmp_path / "kept.json"
    shutil.copy(spooled(root / "rank-1")[0], kept)

    gone.kill()  # scale-down: the replica is gone with its batch still spooled
    assert adopt_orphan_spools(root, me.path.name, replay) == {"rank-1": 1}
    assert usage_count(db) == 5 and spooled(root / "rank-1") == []
    assert len(spooled(root / "rank-0")) == 1  # still owned: untouched
    # The adopter let the slot go again (a new replica may take it).
    taken = SpoolSlot.try_acquire(root / "rank-1")
    assert taken is not None
    taken.release()

    # Replays are safe against doubles: the same batch coming back (e.g. a crash between the
    # control API's answer and the file's removal) is counted as duplicates.
    shutil.copy(kept, root / "rank-1" / "usage" / "usage" / kept.name.replace(
        "kept", "00000000000000000001-deadbeef"))
    assert adopt_orphan_spools(root, me.path.name, replay) == {"rank-1": 1}
    assert usage_count(db) == 5

    # Control API unreachable: nothing is lost, the files wait for the next round.
    alive.kill()
    assert adopt_orphan_spools(root, me.path.name,
                               lambda d: replay_spool(down, SERVICE_TOKEN, d)) == {"rank-0": 0}
    assert len(spooled(root / "rank-0")) == 1
    # Another live adopter holding the orphan's lock: skipped, not replayed twice.
    other = SpoolSlot.try_acquire(root / "rank-0")
    assert other is not None
    assert adopt_orphan_spools(root, me.path.name, replay) == {}
    other.release()
    assert adopt_orphan_spools(root, me.path.name, replay) == {"rank-0": 1}
    assert usage_count(db) == 8
    me.release()
