"""InternalClient against a real control API over HTTP: idempotency, retries, lost answers."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from control_api.client import InternalApiError, InternalClient, KeyRejected
from control_api.client.internal import exponential_backoff
from core.keys import generate_api_key
from core.models import (
    ActionLog,
    ApiKey,
    Deployment,
    Instance,
    InstanceState,
    InstanceStateHistory,
    Org,
    ProcessedEvent,
    UsageRecord,
    User,
)
from core.models_weights import WeightDownload
from core.wire import LifecycleEventIn, UsageRecordIn
from core.wire_weights import WeightProgress
from tests.client.conftest import FaultyProxy, ServerThread
from tests.conftest import SERVICE_TOKEN

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def events(launch_id: str) -> list[LifecycleEventIn]:
    states: list[tuple[str, int, dict[str, Any]]] = [
        ("requested", 0, {}), ("provisioning", 1, {"provider_instance_id": f"srv-{launch_id}"}),
        ("booting", 2, {"cloud_exists": True}), ("ready", 5, {"ray_node_id": "n1"})]
    return [LifecycleEventIn(event_id=f"{launch_id}-{s}", launch_id=launch_id, cluster_name="c",
                             provider="scaleway", instance_type="L4-1-24G", zone="fr-par-2",
                             state=InstanceState(s), at=T0 + timedelta(minutes=m), **extra)
            for s, m, extra in states]


def records(prefix: str, n: int) -> list[UsageRecordIn]:
    return [UsageRecordIn(request_id=f"{prefix}-{i}", model="tiny", prompt_tokens=i,
                          completion_tokens=1, status="completed", at=T0) for i in range(n)]


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make_client(url: str, tmp_path: Path, **kw: Any) -> InternalClient:
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("backoff", lambda attempt: 0.1 * (attempt + 1))
    return InternalClient(url, kw.pop("token", SERVICE_TOKEN), spool_dir=tmp_path / "spool",
                          timeout=kw.pop("timeout", 10.0), **kw)


def count(db: sessionmaker[Session], model: Any, *where: Any) -> int:
    with db() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_lifecycle_batches_are_idempotent_over_http(live_server: ServerThread, tmp_path: Path,
                                                    db: sessionmaker[Session]) -> None:
    with make_client(live_server.url, tmp_path) as client:
        batch = events("L1") + events("L2")
        first = client.send_lifecycle_events(batch)
        assert first.delivered
        assert (first.result.applied, first.result.duplicates, first.result.rejected) == (8, 0, [])
        logs, history = count(db, ActionLog), count(db, InstanceStateHistory)
        second = client.send_lifecycle_events(batch)
        assert (second.result.applied, second.result.duplicates) == (0, 8)
        # Plain dicts are validated by the same schema and sent too.
        third = client.send_lifecycle_events([e.model_dump(mode="json") for e in events("L1")])
        assert (third.result.applied, third.result.duplicates) == (0, 4)
    assert count(db, ActionLog) == logs and count(db, InstanceStateHistory) == history
    assert count(db, Instance) == 2 and count(db, ProcessedEvent) == 8


def test_usage_duplicates_ignored_over_http(live_server: ServerThread, tmp_path: Path,
                                            db: sessionmaker[Session]) -> None:
    with make_client(live_server.url, tmp_path, usage_batch_size=300) as client:
        sent = client.send_usage(records("u", 700))  # 3 requests of <= 300
        assert (sent.result.inserted, sent.result.duplicates, sent.spooled_batches) == (700, 0, 0)
        again = client.send_usage(records("u", 750))
        assert (again.result.inserted, again.result.duplicates) == (50, 700)
        assert client.stats.sent_batches == 6
    assert count(db, UsageRecord) == 750
    with db() as s:
        assert s.scalar(select(func.sum(UsageRecord.prompt_tokens))) == sum(range(750))


def _key(db: sessionmaker[Session], **fields: Any) -> tuple[str, uuid.UUID]:
    secret = generate_api_key()
    with db() as s, s.begin():
        org = s.scalar(select(Org).where(Org.name == "default"))
        assert org is not None
        # Owned by the bootstrap admin (owner of "default"): a key without an active,
        # key-holding owner never verifies.
        owner = s.scalar(select(User.id).where(User.username == "admin"))
        key = ApiKey(org_id=org.id, name="k", prefix=secret.prefix, key_hash=secret.hash,
                     user_id=owner, **fields)
        s.add(key)
        s.flush()
        return secret.hash, key.id


def test_verify_key_over_http(live_server: ServerThread, tmp_path: Path,
                              db: sessionmaker[Session]) -> None:
    valid, valid_id = _key(db, monthly_budget_eur=Decimal("5"), rpm_limit=10)
    revoked, _ = _key(db, revoked_at=T0)
    expired, _ = _key(db, expires_at=T0)
    with make_client(live_server.url, tmp_path) as client:
        principal = client.verify_key(valid)
        assert principal.api_key_id == valid_id and principal.rpm_limit == 10
        assert principal.monthly_budget_eur == Decimal("5")
        assert principal.budget_left_eur == Decimal("5") - principal.spent_this_month_eur
        for key_hash, code in [(revoked, "revoked_api_key"), (expired, "expired_api_key"),
                               ("0" * 64, "invalid_api_key")]:
            with pytest.raises(KeyRejected) as exc_info:
                client.verify_key(key_hash)
            assert (exc_info.value.status, exc_info.value.code) == (404, code)
        with pytest.raises(ValidationError):
            client.verify_key("not-a-hash")  # refused before any request
        assert client.stats.retries == 0


def test_503_then_success_is_retried_with_backoff(
        live_server: ServerThread, faulty_proxy: Callable[..., FaultyProxy], tmp_path: Path,
        db: sessionmaker[Session]) -> None:
    proxy = faulty_proxy(live_server.url, ["503", "503"])
    sleeps = Sleeps()
    with make_client(proxy.url, tmp_path, sleep=sleeps, max_retries=3) as client:
        sent = client.send_usage(records("r", 20))
        assert sent.delivered and sent.result.inserted == 20
        assert client.stats.retries == 2 and client.spool.count() == 0
    assert [a for _, a in proxy.seen] == ["503", "503", "forward"]
    assert sleeps.calls == [0.1, 0.2]
    assert count(db, UsageRecord) == 20


def test_429_honours_retry_after(live_server: ServerThread,
                                 faulty_proxy: Callable[..., FaultyProxy], tmp_path: Path) -> None:
    proxy = faulty_proxy(live_server.url, ["429"], retry_after="2")
    sleeps = Sleeps()
    with make_client(proxy.url, tmp_path, sleep=sleeps) as client:
        assert client.send_usage(records("t", 3)).result.inserted == 3
    assert sleeps.calls == [2.0]


def test_other_4xx_is_not_retried_nor_spooled(
        live_server: ServerThread, faulty_proxy: Callable[..., FaultyProxy], tmp_path: Path,
        db: sessionmaker[Session]) -> None:
    proxy = faulty_proxy(live_server.url, ["400"])
    with make_client(proxy.url, tmp_path) as client:
        with pytest.raises(InternalApiError) as exc_info:
            client.send_usage(records("x", 2))
        assert (exc_info.value.status, exc_info.value.code) == (400, "injected_400")
        assert client.stats.retries == 0 and client.spool.count() == 0
        with pytest.raises(KeyRejected):
            client.verify_key("1" * 64)  # a 404 answer: not retried either
    assert [a for _, a in proxy.seen] == ["400", "forward"]
    assert count(db, UsageRecord) == 0


def test_retries_exhausted_spools_the_batch(
        live_server: ServerThread, faulty_proxy: Callable[..., FaultyProxy], tmp_path: Path,
        db: sessionmaker[Session]) -> None:
    proxy = faulty_proxy(live_server.url, ["503"] * 3)
    client = make_client(proxy.url, tmp_path, max_retries=2)
    sent = client.send_usage(records("s", 4))
    assert not sent.delivered and sent.spooled_batches == 1 and sent.result.inserted == 0
    assert client.spool.count("usage") == 1 and count(db, UsageRecord) == 0
    report = client.flush()  # the proxy forwards now
    assert report.sent_batches == 1 and report.pending_batches == 0
    client.close()
    assert count(db, UsageRecord) == 4


def test_lost_response_is_retried_as_duplicates(
        live_server: ServerThread, faulty_proxy: Callable[..., FaultyProxy], tmp_path: Path,
        db: sessionmaker[Session]) -> None:
    """The server applies the batch but the answer never arrives: the retry is answered with
    duplicates, and nothing is counted twice."""
    proxy = faulty_proxy(live_server.url, ["drop", "forward", "drop"])
    with make_client(proxy.url, tmp_path) as client:
        lifecycle = client.send_lifecycle_events(events("D1"))
        assert lifecycle.delivered
        assert (lifecycle.result.applied, lifecycle.result.duplicates) == (0, 4)
        usage = client.send_usage(records("d", 10))
        assert (usage.result.inserted, usage.result.duplicates) == (0, 10)
        assert client.stats.retries == 2
    assert [a for _, a in proxy.seen] == ["drop", "forward", "drop", "forward"]
    assert count(db, UsageRecord) == 10
    assert count(db, InstanceStateHistory) == 4  # creation + 3 transitions, once
    with db() as s:
        inst = s.scalar(select(Instance).where(Instance.launch_id == "D1"))
        assert inst is not None and inst.state == InstanceState.READY and inst.version == 4


def test_lost_response_without_retries_spools_then_replays_as_duplicates(
        live_server: ServerThread, faulty_proxy: Callable[..., FaultyProxy], tmp_path: Path,
        db: sessionmaker[Session]) -> None:
    proxy = faulty_proxy(live_server.url, ["drop"])
    client = make_client(proxy.url, tmp_path, max_retries=0)
    sent = client.send_usage(records("z", 6))
    assert sent.spooled_batches == 1
    assert count(db, UsageRecord) == 6  # applied although the client never heard back
    report = client.replay()
    assert report.sent_batches == 1
    assert report.results == [{"inserted": 0, "duplicates": 6, "rejected": []}]
    client.close()
    assert count(db, UsageRecord) == 6


def test_wrong_token_keeps_batches_for_a_fixed_client(live_server: ServerThread, tmp_path: Path,
                                                      db: sessionmaker[Session]) -> None:
    bad = make_client(live_server.url, tmp_path, token="ist-wrong")
    sent = bad.send_lifecycle_events(events("W1"))
    assert sent.spooled_batches == 1 and bad.stats.retries == 0
    assert bad.replay().reachable is False  # 401: stops, keeps the file
    bad.close(flush=False)
    assert count(db, Instance) == 0
    good = make_client(live_server.url, tmp_path)
    assert good.spool.count("lifecycle") == 1
    assert good.flush().sent_batches == 1
    good.close()
    assert count(db, ProcessedEvent) == 4 and good.spool.count() == 0


def test_token_never_in_repr(tmp_path: Path) -> None:
    client = make_client("http://127.0.0.1:9", tmp_path, token="ist-secret-value")
    assert "ist-secret-value" not in repr(client)
    client.close(flush=False)


def test_default_backoff_grows_and_is_capped() -> None:
    backoff = exponential_backoff(base=0.5, cap=4.0, rng=lambda: 1.0)
    assert [backoff(i) for i in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    low = exponential_backoff(base=0.5, cap=4.0, rng=lambda: 0.0)
    assert low(1) == 0.5  # jitter keeps at least half the delay


def _deployment(db: sessionmaker[Session], name: str) -> uuid.UUID:
    spec = {"name": name, "model": {"name": f"{name}-model", "source": "builtin:tiny-llama"},
            "engine": {"max_model_len": 512}, "limits": {"max_tokens": 16}}
    with db() as s, s.begin():
        dep = Deployment(name=name, spec=spec, version=1, status="applied")
        s.add(dep)
        s.flush()
        return dep.id


def test_weights_progress_over_http_latest_wins_and_a_failure_marks_it_failed(
        live_server: ServerThread, faulty_proxy: Callable[..., FaultyProxy], tmp_path: Path,
        db: sessionmaker[Session]) -> None:
    dep_id = _deployment(db, "chat-w")
    proxy = faulty_proxy(live_server.url, ["503", "drop"])
    report: dict[str, Any] = {
        "deployment": "chat-w", "node_id": "node-a", "source": "hf:org/m@" + "a" * 40,
        "revision": "a" * 40, "state": "downloading", "bytes_done": 10, "bytes_total": 100,
        "error": None}
    with make_client(proxy.url, tmp_path) as client:
        # A 503, then an answer lost after the server applied it: retried, one row.
        assert client.weights_progress(report).accepted is True
        assert client.stats.retries == 2 and client.spool.count() == 0
        client.weights_progress(WeightProgress.model_validate({**report, "bytes_done": 60}))
        with db() as s:
            rows = list(s.scalars(select(WeightDownload)))
            assert [(r.deployment_id, r.node_id, r.bytes_done) for r in rows] == [
                (dep_id, "node-a", 60)]
        client.weights_progress({**report, "state": "failed", "error": {
            "code": "source_gated", "message": "403: no access"}})
        with db() as s:
            dep = s.get(Deployment, dep_id)
            assert dep is not None and dep.status == "failed"
            assert dep.status_message == ("weights failed on node node-a: source_gated: "
                                          "403: no access")
        with pytest.raises(InternalApiError) as exc_info:
            client.weights_progress({**report, "deployment": "nope"})
        assert (exc_info.value.status, exc_info.value.code) == (404, "deployment_not_found")
        with pytest.raises(ValidationError):
            client.weights_progress({**report, "state": "failed"})  # refused before sending
    assert [a for _, a in proxy.seen] == ["503", "drop", "forward", "forward", "forward",
                                          "forward"]
