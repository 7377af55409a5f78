"""The durable spool: a control API outage loses nothing and counts nothing twice."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from control_api.client import InternalClient, Spool, SpoolFull
from core.models import (
    BillingInterval,
    Instance,
    InstanceState,
    InstanceStateHistory,
    ProcessedEvent,
    UsageRecord,
)
from core.wire import LifecycleEventIn, UsageRecordIn
from tests.client.conftest import FaultyProxy, Servers, ServerThread, free_port
from tests.conftest import SERVICE_TOKEN

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def event(launch_id: str, state: str, minute: int, **extra: Any) -> LifecycleEventIn:
    return LifecycleEventIn(event_id=f"{launch_id}-{state}-{minute}", launch_id=launch_id,
                            cluster_name="c", provider="local", instance_type="L4-1-24G",
                            state=InstanceState(state), at=T0 + timedelta(minutes=minute),
                            **extra)


def record(request_id: str) -> UsageRecordIn:
    return UsageRecordIn(request_id=request_id, model="tiny", prompt_tokens=3,
                         completion_tokens=4, status="completed", at=T0)


def client_for(url: str, spool_dir: Path, **kw: Any) -> InternalClient:
    kw.setdefault("sleep", lambda _s: None)
    kw.setdefault("max_retries", 1)
    return InternalClient(url, SERVICE_TOKEN, spool_dir=spool_dir, timeout=5.0, **kw)


def count(db: sessionmaker[Session], model: Any, *where: Any) -> int:
    with db() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_spool_survives_a_control_api_outage_and_a_restart(
        servers: Servers, tmp_path: Path, db: sessionmaker[Session]) -> None:
    port = free_port()  # nothing listens yet: connection refused
    url = f"http://127.0.0.1:{port}"
    spool_dir = tmp_path / "spool"
    first = client_for(url, spool_dir, usage_batch_size=100)
    lc1 = first.send_lifecycle_events([event("O1", "requested", 0),
                                       event("O1", "booting", 2, provider_instance_id="srv-o1")])
    lc2 = first.send_lifecycle_events([event("O1", "ready", 5), event("O2", "requested", 6)])
    used = first.send_usage([record(f"o-{i}") for i in range(250)])  # 3 batches
    assert (lc1.spooled_batches, lc2.spooled_batches, used.spooled_batches) == (1, 1, 3)
    for i in range(250, 330):
        first.enqueue_usage(record(f"o-{i}"))  # buffered in memory, no network
    assert first.buffered_usage == 80
    first.close()  # flush at shutdown: unreachable, so the buffer goes to disk too
    assert first.stats.spooled_batches == 6 and first.stats.dropped_usage_records == 0
    on_disk = sorted(p.name for p in (spool_dir / "lifecycle").glob("*.json"))
    assert len(on_disk) == 2 and len(list((spool_dir / "usage").glob("*.json"))) == 4
    assert not list(spool_dir.rglob(".tmp-*"))
    assert count(db, UsageRecord) == 0 and count(db, Instance) == 0
    del first  # the process "restarts": only the disk remains

    servers.start(port)
    second = client_for(url, spool_dir)
    assert second.spool.count("lifecycle") == 2 and second.spool.count("usage") == 4
    report = second.flush()
    assert report.reachable and report.sent_batches == 6 and report.pending_batches == 0
    assert list(spool_dir.glob("*/*.json")) == []
    assert count(db, UsageRecord) == 330
    assert count(db, ProcessedEvent) == 4
    with db() as s:
        o1 = s.scalar(select(Instance).where(Instance.launch_id == "O1"))
        assert o1 is not None and o1.state == InstanceState.READY
        hist = s.scalars(select(InstanceStateHistory.to_state).where(
            InstanceStateHistory.instance_id == o1.id).order_by(InstanceStateHistory.id)).all()
        assert hist == [InstanceState.REQUESTED, InstanceState.BOOTING, InstanceState.READY]
        starts = s.scalars(select(BillingInterval.started_at).where(
            BillingInterval.instance_id == o1.id)).all()
        assert starts == [T0 + timedelta(minutes=2)]  # billed from the cloud's confirmation

    # Sending everything again (a replay after a crash before deletion): all duplicates.
    again = second.send_usage([record(f"o-{i}") for i in range(330)])
    assert (again.result.inserted, again.result.duplicates) == (0, 330)
    dup = second.send_lifecycle_events([event("O1", "requested", 0), event("O1", "ready", 5)])
    assert (dup.result.applied, dup.result.duplicates) == (0, 2)
    second.close()
    assert count(db, UsageRecord) == 330 and count(db, InstanceStateHistory) == 4


def test_new_batches_wait_behind_spooled_ones(servers: Servers, tmp_path: Path,
                                              db: sessionmaker[Session]) -> None:
    """Lifecycle order is kept across an outage: a batch sent after the API came back is sent
    only after the older spooled ones (else `booting` would arrive after `ready`: stale)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    client = client_for(url, tmp_path / "spool")
    assert client.send_lifecycle_events([event("Q1", "booting", 1)]).spooled_batches == 1
    servers.start(port)
    sent = client.send_lifecycle_events([event("Q1", "ready", 3)])
    assert sent.delivered and sent.result.rejected == []
    assert client.stats.replayed_batches == 1
    client.close()
    with db() as s:
        inst = s.scalar(select(Instance).where(Instance.launch_id == "Q1"))
        assert inst is not None and inst.state == InstanceState.READY


def test_background_flush_sends_buffered_usage(live_server: ServerThread, tmp_path: Path,
                                               db: sessionmaker[Session]) -> None:
    client = client_for(live_server.url, tmp_path / "spool", usage_batch_size=200)
    client.start_background_flush(interval=0.05)
    for i in range(450):
        client.enqueue_usage(record(f"bg-{i}"))
    deadline = time.monotonic() + 20
    while count(db, UsageRecord) < 450 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count(db, UsageRecord) == 450
    assert client.buffered_usage == 0 and client.spool.count() == 0
    client.close()


def test_enqueue_never_waits_for_a_hung_api(live_server: ServerThread,
                                            faulty_proxy: Callable[..., FaultyProxy],
                                            tmp_path: Path, db: sessionmaker[Session]) -> None:
    """The API accepts connections but never answers: the hot path stays fast; the records
    are delivered once it answers again."""
    proxy = faulty_proxy(live_server.url, ["hang"])
    client = client_for(proxy.url, tmp_path / "spool", usage_batch_size=50, max_retries=0)
    client.start_background_flush(interval=0.05)
    started = time.monotonic()
    for i in range(200):
        client.enqueue_usage(record(f"h-{i}"))
    # 200 records with the flusher stuck in a 5 s request: enqueue took no network time.
    assert time.monotonic() - started < 2.0
    proxy.stop()  # releases the hung request (the connection closes without an answer)
    client.close()  # final flush: through the now-stopped proxy -> spooled, nothing lost
    survivor = client_for(live_server.url, tmp_path / "spool")
    survivor.flush()
    survivor.close()
    assert count(db, UsageRecord) == 200


def test_send_raises_when_the_spool_is_full(tmp_path: Path) -> None:
    client = client_for(f"http://127.0.0.1:{free_port()}", tmp_path / "spool",
                        spool_max_files=1, max_retries=0)
    assert client.send_usage([record("f-1")]).spooled_batches == 1
    with pytest.raises(SpoolFull):
        client.send_usage([record("f-2")])
    assert client.stats.spool_full_errors == 1 and client.spool.count() == 1
    client.close(flush=False)


def test_buffer_overflow_is_counted_never_silent(tmp_path: Path) -> None:
    client = client_for(f"http://127.0.0.1:{free_port()}", tmp_path / "spool",
                        spool_max_files=1, usage_batch_size=10, max_buffered_usage=20)
    for i in range(35):  # 20 fit in memory, 10 spill to the one spool slot, 5 are dropped
        client.enqueue_usage(record(f"of-{i}"))
    assert client.spool.count("usage") == 1
    assert client.buffered_usage + 10 + client.stats.dropped_usage_records == 35
    assert client.stats.dropped_usage_records == 5
    client.close(flush=False)


# ---------------------------------------------------------------- the spool itself


def test_spool_writes_whole_files_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    paths = [spool.put("usage", {"records": [{"n": i}]}) for i in range(5)]
    assert spool.pending("usage") == paths
    assert [spool.read(p).body["records"][0]["n"] for p in paths] == list(range(5))  # type: ignore[union-attr]
    doc = json.loads(paths[0].read_text())
    assert doc["version"] == 1 and doc["kind"] == "usage"
    assert oct(os.stat(paths[0]).st_mode & 0o777) == "0o600"
    assert spool.count() == 5 and spool.size_bytes == sum(p.stat().st_size for p in paths)
    spool.remove(paths[0])
    assert spool.pending("usage") == paths[1:] and spool.count("usage") == 4


def test_spool_order_survives_restart_with_a_clock_going_back(tmp_path: Path) -> None:
    early = Spool(tmp_path, clock=lambda: 2_000_000_000_000_000_000)
    a = early.put("lifecycle", {"events": ["a"]})
    # A restarted process whose wall clock is behind still appends after what is on disk.
    late = Spool(tmp_path, clock=lambda: 1_000)
    b = late.put("lifecycle", {"events": ["b"]})
    c = late.put("lifecycle", {"events": ["c"]})
    assert late.pending("lifecycle") == [a, b, c]
    assert late.count("lifecycle") == 3


def test_spool_cleans_interrupted_writes_and_quarantines_garbage(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    good = spool.put("usage", {"records": []})
    (tmp_path / "usage" / ".tmp-00000000000000000001-dead.json").write_text('{"trunc')
    bad = tmp_path / "usage" / "00000000000000000002-beef.json"
    bad.write_text("not json")
    reopened = Spool(tmp_path)
    assert not list((tmp_path / "usage").glob(".tmp-*"))
    assert reopened.pending("usage") == [bad, good]
    assert reopened.read(bad) is None
    assert reopened.quarantined("usage") == [tmp_path / "usage" / "quarantine" / bad.name]
    assert reopened.pending("usage") == [good] and reopened.count("usage") == 1


def test_spool_bound_refuses_without_writing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=300)
    spool.put("usage", {"records": ["x" * 100]})
    with pytest.raises(SpoolFull):
        spool.put("usage", {"records": ["y" * 200]})
    assert spool.count() == 1 and len(list(tmp_path.rglob("*.json"))) == 1
    with pytest.raises(ValueError):
        spool.put("other", {})


def test_refused_spooled_batch_is_quarantined_not_retried_forever(
        live_server: ServerThread, tmp_path: Path, db: sessionmaker[Session]) -> None:
    spool = Spool(tmp_path / "spool")
    spool.put("usage", {"records": [{"request_id": "q", "bogus": True}]})  # the API says 422
    spool.put("usage", {"records": [record("ok-1").model_dump(mode="json")]})
    client = client_for(live_server.url, tmp_path / "spool")
    report = client.replay()
    assert report.sent_batches == 1 and report.pending_batches == 0
    assert client.stats.quarantined_batches == 1 and len(client.spool.quarantined("usage")) == 1
    client.close()
    assert count(db, UsageRecord) == 1
