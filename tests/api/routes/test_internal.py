"""/api/internal: idempotent lifecycle and usage batches, key verification, bad input."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from control_api.errors import NotFound
from control_api.services import internal as service
from core.db import utcnow
from core.keys import generate_api_key
from core.models import (
    ActionLog,
    ApiKey,
    BillingInterval,
    Instance,
    InstanceState,
    InstanceStateHistory,
    Org,
    ProcessedEvent,
    UsageRecord,
    User,
)
from core.wire import LifecycleEventIn

LIFECYCLE = "/api/internal/lifecycle-events"
USAGE = "/api/internal/usage"
VERIFY = "/api/internal/keys/verify"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def ev(launch_id: str, state: str, minute: float, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": extra.pop("event_id", f"{launch_id}-{state}-{minute}"),
        "launch_id": launch_id, "cluster_name": "c1", "provider": "scaleway",
        "instance_type": "L4-1-24G", "zone": "fr-par-2", "state": state,
        "at": (T0 + timedelta(minutes=minute)).isoformat(),
    }
    body.update(extra)
    return body


def usage(request_id: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": request_id, "model": "tiny", "deployment": "tiny-chat",
        "prompt_tokens": 10, "completion_tokens": 5, "ttft_ms": 12.5, "duration_ms": 80.0,
        "status": "completed", "streamed": True, "at": T0.isoformat(),
    }
    body.update(extra)
    return body


def post(client: TestClient, headers: dict[str, str], path: str, body: Any,
         status: int = 200) -> dict[str, Any]:
    r = client.post(path, json=body, headers=headers)
    assert r.status_code == status, r.text
    return r.json()  # type: ignore[no-any-return]


def _count(db: sessionmaker[Session], model: Any, *where: Any) -> int:
    with db() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def _instance(db: sessionmaker[Session], launch_id: str) -> Instance:
    with db() as s:
        inst = s.scalar(select(Instance).where(Instance.launch_id == launch_id))
        assert inst is not None
        return inst


def _intervals(db: sessionmaker[Session], launch_id: str) -> list[tuple[datetime, datetime | None]]:
    with db() as s:
        rows = s.execute(
            select(BillingInterval.started_at, BillingInterval.ended_at)
            .join(Instance, Instance.id == BillingInterval.instance_id)
            .where(Instance.launch_id == launch_id).order_by(BillingInterval.id)).all()
        return [(r[0], r[1]) for r in rows]


# ---------------------------------------------------------------- auth


@pytest.mark.parametrize("path", [LIFECYCLE, USAGE, VERIFY])
def test_internal_routes_need_a_service_token(client: TestClient, admin_headers: dict[str, str],
                                              path: str) -> None:
    body: dict[str, Any] = {"events": []} if path == LIFECYCLE else (
        {"records": []} if path == USAGE else {"key_hash": "0" * 64})
    assert client.post(path, json=body).status_code == 401
    # A user's session token is not a service token, even a platform admin's.
    r = client.post(path, json=body, headers=admin_headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    r = client.post(path, json=body, headers={"Authorization": "Bearer ist-forged"})
    assert r.status_code == 401


# ---------------------------------------------------------------- lifecycle


def test_lifecycle_batch_applied_once(client: TestClient, service_headers: dict[str, str],
                                      db: sessionmaker[Session]) -> None:
    events = [
        ev("L1", "requested", 0),
        ev("L1", "provisioning", 1, provider_instance_id="srv-1"),
        ev("L1", "booting", 2, cloud_exists=True),
        ev("L1", "joining", 5, private_ip="10.0.0.7", ray_node_id="ray-abc"),
        ev("L1", "ready", 6),
    ]
    first = post(client, service_headers, LIFECYCLE, {"events": events})
    assert first == {"applied": 5, "duplicates": 0, "rejected": []}
    inst = _instance(db, "L1")
    assert (inst.state, inst.provider_instance_id, inst.private_ip, inst.ray_node_id) == (
        InstanceState.READY, "srv-1", "10.0.0.7", "ray-abc")
    assert inst.state_entered_at == T0 + timedelta(minutes=6)
    assert inst.zone_code == "fr-par-2" and inst.provider_code == "scaleway"
    # Billing starts when the cloud confirmed the VM (booting, cloud_exists) — not at request.
    assert _intervals(db, "L1") == [(T0 + timedelta(minutes=2), None)]
    history = _count(db, InstanceStateHistory, InstanceStateHistory.instance_id == inst.id)
    logs = _count(db, ActionLog)
    assert history == 5  # creation + 4 transitions
    assert _count(db, ProcessedEvent, ProcessedEvent.kind == "lifecycle") == 5

    second = post(client, service_headers, LIFECYCLE, {"events": events})
    assert second == {"applied": 0, "duplicates": 5, "rejected": []}
    assert _count(db, InstanceStateHistory, InstanceStateHistory.instance_id == inst.id) == history
    assert _count(db, ActionLog) == logs
    assert _count(db, Instance) == 1
    assert _intervals(db, "L1") == [(T0 + timedelta(minutes=2), None)]
    assert _instance(db, "L1").version == inst.version


def test_duplicates_inside_one_batch(client: TestClient, service_headers: dict[str, str],
                                     db: sessionmaker[Session]) -> None:
    e = ev("L2", "provisioning", 1)
    res = post(client, service_headers, LIFECYCLE, {"events": [e, e, ev("L2", "booting", 2), e]})
    assert res == {"applied": 2, "duplicates": 2, "rejected": []}
    assert _instance(db, "L2").state == InstanceState.BOOTING
    # A first event that is not `requested` still writes the intent, then moves on.
    inst = _instance(db, "L2")
    with db() as s:
        hist = s.scalars(select(InstanceStateHistory.to_state).where(
            InstanceStateHistory.instance_id == inst.id).order_by(InstanceStateHistory.id)).all()
    assert hist == [InstanceState.REQUESTED, InstanceState.PROVISIONING, InstanceState.BOOTING]


def test_events_are_applied_in_time_order_per_launch(client: TestClient,
                                                     service_headers: dict[str, str],
                                                     db: sessionmaker[Session]) -> None:
    events = [ev("L3", "ready", 9), ev("L4", "booting", 3), ev("L3", "requested", 0),
              ev("L3", "joining", 4), ev("L4", "requested", 1)]
    res = post(client, service_headers, LIFECYCLE, {"events": events})
    assert res == {"applied": 5, "duplicates": 0, "rejected": []}
    assert _instance(db, "L3").state == InstanceState.READY
    assert _instance(db, "L4").state == InstanceState.BOOTING
    with db() as s:
        hist = s.execute(select(InstanceStateHistory.to_state, InstanceStateHistory.at)
                         .join(Instance).where(Instance.launch_id == "L3")
                         .order_by(InstanceStateHistory.id)).all()
    assert [(h[0], h[1]) for h in hist] == [
        (InstanceState.REQUESTED, T0), (InstanceState.JOINING, T0 + timedelta(minutes=4)),
        (InstanceState.READY, T0 + timedelta(minutes=9))]


def test_rejections_do_not_fail_the_batch(client: TestClient, service_headers: dict[str, str],
                                          db: sessionmaker[Session]) -> None:
    post(client, service_headers, LIFECYCLE, {"events": [
        ev("R1", "ready", 10, provider_instance_id="srv-r1"),
        ev("R2", "terminated", 10, cloud_exists=False)]})
    events = [
        ev("R0", "requested", 0, provider="nope"),             # provider not in the catalog
        ev("R1", "booting", 5),                                # older than ready: stale
        ev("R2", "ready", 20),                                 # terminated -> ready: invalid
        ev("R1", "failed", 30),                                # failed without error code
        ev("R3", "requested", 0, deployment_id=str(uuid.uuid4())),  # unknown deployment
        ev("R1", "draining", 40),                              # fine
    ]
    res = post(client, service_headers, LIFECYCLE, {"events": events})
    assert res["applied"] == 1 and res["duplicates"] == 0
    codes = {r["event_id"]: r["code"] for r in res["rejected"]}
    assert codes == {
        events[0]["event_id"]: "unknown_provider", events[1]["event_id"]: "stale",
        events[2]["event_id"]: "invalid_transition", events[3]["event_id"]: "missing_error_code",
        events[4]["event_id"]: "unknown_deployment"}
    assert all(r["message"] for r in res["rejected"])
    assert _instance(db, "R1").state == InstanceState.DRAINING
    assert _instance(db, "R2").state == InstanceState.TERMINATED
    assert _count(db, Instance, Instance.launch_id.in_(["R0", "R3"])) == 0
    rejected_logs = _count(db, ActionLog, ActionLog.type == "instance.event_rejected")
    assert rejected_logs == 5
    # Rejections are final: replaying the batch reports every event as a duplicate.
    again = post(client, service_headers, LIFECYCLE, {"events": events})
    assert again == {"applied": 0, "duplicates": 6, "rejected": []}
    assert _count(db, ActionLog, ActionLog.type == "instance.event_rejected") == rejected_logs


def test_same_state_event_updates_fields_without_transition(
        client: TestClient, service_headers: dict[str, str], db: sessionmaker[Session]) -> None:
    post(client, service_headers, LIFECYCLE, {"events": [ev("F1", "booting", 1)]})
    version = _instance(db, "F1").version
    res = post(client, service_headers, LIFECYCLE, {"events": [
        ev("F1", "booting", 2, public_ip="51.0.0.1", node_type="gpu_l4")]})
    assert res == {"applied": 1, "duplicates": 0, "rejected": []}
    inst = _instance(db, "F1")
    assert (inst.state, inst.version, inst.public_ip, inst.node_type) == (
        InstanceState.BOOTING, version, "51.0.0.1", "gpu_l4")


def test_billing_opens_on_cloud_confirmation_and_closes_when_gone(
        client: TestClient, service_headers: dict[str, str], db: sessionmaker[Session]) -> None:
    post(client, service_headers, LIFECYCLE, {"events": [
        ev("B1", "requested", 0), ev("B1", "provisioning", 1)]})
    assert _intervals(db, "B1") == []  # no VM confirmed yet
    post(client, service_headers, LIFECYCLE, {"events": [
        ev("B1", "booting", 3, provider_instance_id="srv-b1")]})  # provider id: the VM exists
    assert _intervals(db, "B1") == [(T0 + timedelta(minutes=3), None)]
    post(client, service_headers, LIFECYCLE, {"events": [
        ev("B1", "ready", 8, cloud_exists=True), ev("B1", "terminating", 60)]})
    # A transient (cloud_exists unknown) never closes; `terminating` is not gone.
    post(client, service_headers, LIFECYCLE, {"events": [
        ev("B1", "terminating", 61, event_id="B1-transient")]})
    assert _intervals(db, "B1") == [(T0 + timedelta(minutes=3), None)]
    post(client, service_headers, LIFECYCLE, {"events": [
        ev("B1", "terminated", 62, cloud_exists=False)]})
    closed = [(T0 + timedelta(minutes=3), T0 + timedelta(minutes=62))]
    assert _intervals(db, "B1") == closed
    # An old observation saying the VM exists does not reopen a closed interval.
    post(client, service_headers, LIFECYCLE, {"events": [
        ev("B1", "terminated", 50, cloud_exists=True, event_id="B1-late")]})
    assert _intervals(db, "B1") == closed
    assert _count(db, ActionLog, ActionLog.type == "billing.interval_opened") == 1
    assert _count(db, ActionLog, ActionLog.type == "billing.interval_closed") == 1


def test_billing_starts_at_the_clouds_creation_time(
        client: TestClient, service_headers: dict[str, str], db: sessionmaker[Session]) -> None:
    """A VM reported late (e.g. adopted after a provider crash) is billed from its creation."""
    created = (T0 + timedelta(minutes=2)).isoformat()
    post(client, service_headers, LIFECYCLE, {"events": [
        ev("C1", "ready", 9, cloud_exists=True, provider_instance_id="srv-c1",
           cloud_created_at=created)]})
    assert _intervals(db, "C1") == [(T0 + timedelta(minutes=2), None)]
    # A creation time after the event's time is not trusted: the interval starts at the event.
    post(client, service_headers, LIFECYCLE, {"events": [
        ev("C2", "ready", 9, cloud_exists=True, provider_instance_id="srv-c2",
           cloud_created_at=(T0 + timedelta(minutes=30)).isoformat())]})
    assert _intervals(db, "C2") == [(T0 + timedelta(minutes=9), None)]


def test_failed_with_cloud_gone_closes_billing(client: TestClient,
                                               service_headers: dict[str, str],
                                               db: sessionmaker[Session]) -> None:
    post(client, service_headers, LIFECYCLE, {"events": [
        ev("B2", "booting", 1, cloud_exists=True),
        ev("B2", "failed", 9, error_code="boot_timeout", error_message="never joined")]})
    # failed but the VM may still exist: keep billing.
    assert _intervals(db, "B2") == [(T0 + timedelta(minutes=1), None)]
    inst = _instance(db, "B2")
    assert (inst.state, inst.error_code) == (InstanceState.FAILED, "boot_timeout")
    post(client, service_headers, LIFECYCLE, {"events": [
        ev("B2", "failed", 12, cloud_exists=False, error_code="boot_timeout")]})
    assert _intervals(db, "B2") == [(T0 + timedelta(minutes=1), T0 + timedelta(minutes=12))]


def test_concurrent_creates_of_one_launch_id_make_one_instance(
        client: TestClient, db: sessionmaker[Session]) -> None:
    """Two transactions see no row for the launch id; the second waits on the unique index,
    then falls back to the row the first committed."""
    a = db()
    first = LifecycleEventIn.model_validate(ev("C1", "requested", 0))
    second = LifecycleEventIn.model_validate(ev("C1", "provisioning", 1))
    outcome: dict[str, Any] = {}
    try:
        res_a = service.apply_lifecycle_events(a, [first], actor="a")
        assert res_a.applied == 1

        def other() -> None:
            with db() as b:
                outcome["result"] = service.apply_lifecycle_events(b, [second], actor="b")
                b.commit()

        t = threading.Thread(target=other)
        t.start()
        _wait_until_blocked(a, t)
        a.commit()
        t.join(30)
        assert not t.is_alive()
    finally:
        a.close()
    assert outcome["result"].applied == 1 and outcome["result"].rejected == []
    assert _count(db, Instance, Instance.launch_id == "C1") == 1
    assert _instance(db, "C1").state == InstanceState.PROVISIONING


def _wait_until_blocked(session: Session, t: threading.Thread) -> None:
    """Wait until the other transaction is waiting on our lock (Postgres); SQLite has no view
    of that, so give the thread a moment to reach its write."""
    if session.get_bind().dialect.name != "postgresql":
        time.sleep(0.3)
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and t.is_alive():
        with session.get_bind().connect() as conn:  # type: ignore[union-attr]
            waiting = conn.scalar(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"))
        if waiting:
            return
        time.sleep(0.02)
    pytest.fail("the concurrent transaction never blocked on the launch id")


@pytest.mark.parametrize(("body", "where"), [
    ({"events": [ev("X", "flying", 0)]}, "state"),
    ({"events": [{**ev("X", "ready", 0), "at": "2025-03-01T12:00:00"}]}, "at"),
    ({"events": [{**ev("X", "ready", 0), "owner": "me"}]}, "owner"),
    ({"events": [{**ev("X", "ready", 0), "deployment_id": "not-a-uuid"}]}, "deployment_id"),
    ({"events": [{**ev("X", "ready", 0), "event_id": ""}]}, "event_id"),
    ({"events": [{**ev("X", "ready", 0), "launch_id": "x" * 65}]}, "launch_id"),
    ({"events": [{**ev("X", "ready", 0), "reason": "a\x00b"}]}, "reason"),
    ({"events": [ev("X", "ready", i) for i in range(1001)]}, "events"),
    ({"events": "nope"}, "events"),
    ({}, "events"),
])
def test_lifecycle_bad_input_is_422(client: TestClient, service_headers: dict[str, str],
                                    body: dict[str, Any], where: str) -> None:
    r = client.post(LIFECYCLE, json=body, headers=service_headers)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_error"
    assert any(where in ".".join(d["loc"]) for d in err["details"])


# ---------------------------------------------------------------- usage


def _real_key(db: sessionmaker[Session]) -> tuple[uuid.UUID, uuid.UUID]:
    """An API key of a new org (usage records must name a key of their own org)."""
    from core.models import ApiKey, Org

    with db() as s, s.begin():
        org = Org(name=f"usage-{uuid.uuid4().hex[:8]}")
        s.add(org)
        s.flush()
        secret = generate_api_key()
        key = ApiKey(org_id=org.id, name="k", prefix=secret.prefix, key_hash=secret.hash)
        s.add(key)
        s.flush()
        return key.id, org.id


def test_usage_duplicates_are_ignored(client: TestClient, service_headers: dict[str, str],
                                      db: sessionmaker[Session]) -> None:
    key_id, org_id = _real_key(db)
    batch = [usage("u1", api_key_id=str(key_id), org_id=str(org_id)),
             usage("u2", at="2025-03-01T13:00:00+01:00"),
             usage("u3", status="aborted", completion_tokens=0)]
    assert post(client, service_headers, USAGE, {"records": batch}) == {
        "inserted": 3, "duplicates": 0, "rejected": []}
    assert post(client, service_headers, USAGE, {"records": batch}) == {
        "inserted": 0, "duplicates": 3, "rejected": []}
    assert post(client, service_headers, USAGE, {"records": [usage("u4"), usage("u4"),
                                                             usage("u1")]}) == {
        "inserted": 1, "duplicates": 2, "rejected": []}
    assert post(client, service_headers, USAGE, {"records": []}) == {
        "inserted": 0, "duplicates": 0, "rejected": []}
    assert _count(db, UsageRecord) == 4
    with db() as s:
        row = s.scalar(select(UsageRecord).where(UsageRecord.request_id == "u1"))
        assert row is not None
        assert (row.api_key_id, row.org_id, row.prompt_tokens, row.completion_tokens,
                row.streamed, row.at, row.ttft_ms) == (key_id, org_id, 10, 5, True, T0, 12.5)
        assert s.scalar(select(UsageRecord.at).where(UsageRecord.request_id == "u2")) == T0


def test_usage_large_batch_counts_exactly(client: TestClient, service_headers: dict[str, str],
                                          db: sessionmaker[Session]) -> None:
    first = [usage(f"big-{i}") for i in range(1200)]
    assert post(client, service_headers, USAGE, {"records": first})["inserted"] == 1200
    mixed = [usage(f"big-{i}") for i in range(1000, 5000)]
    assert post(client, service_headers, USAGE, {"records": mixed}) == {
        "inserted": 3800, "duplicates": 200, "rejected": []}
    assert _count(db, UsageRecord) == 5000


@pytest.mark.parametrize(("record", "where"), [
    (usage("b", prompt_tokens=-1), "prompt_tokens"),
    (usage("b", completion_tokens=2**31), "completion_tokens"),
    (usage("b", status="weird"), "status"),
    (usage("b", at="2025-03-01T12:00:00"), "at"),
    (usage("b", ttft_ms=-3), "ttft_ms"),
    (usage("b", api_key_id="123"), "api_key_id"),
    ({**usage("b"), "request_id": ""}, "request_id"),
    (usage("b", prompt_tokens="many"), "prompt_tokens"),
    ({**usage("b"), "cost": 3}, "cost"),
    (usage("b", model="ti\x00ny"), "model"),
    (usage("b", at="0001-01-01T00:00:00+01:00"), "at"),
])
def test_usage_bad_input_is_422(client: TestClient, service_headers: dict[str, str],
                                record: dict[str, Any], where: str) -> None:
    r = client.post(USAGE, json={"records": [record]}, headers=service_headers)
    assert r.status_code == 422, r.text
    assert any(where in ".".join(d["loc"]) for d in r.json()["error"]["details"])


def test_usage_batch_bound(client: TestClient, service_headers: dict[str, str]) -> None:
    r = client.post(USAGE, json={"records": [usage(f"n{i}") for i in range(5001)]},
                    headers=service_headers)
    assert r.status_code == 422


# ---------------------------------------------------------------- key verification


def _key(db: sessionmaker[Session], **fields: Any) -> tuple[str, uuid.UUID, uuid.UUID]:
    secret = generate_api_key()
    with db() as s, s.begin():
        org = s.scalar(select(Org).where(Org.name == "default"))
        user = s.scalar(select(User).where(User.username == "admin"))
        assert org is not None and user is not None
        key = ApiKey(org_id=org.id, user_id=user.id, name=fields.pop("name", "k"),
                     prefix=secret.prefix, key_hash=secret.hash, **fields)
        s.add(key)
        s.flush()
        return secret.hash, key.id, org.id


def test_verify_valid_key(client: TestClient, service_headers: dict[str, str],
                          db: sessionmaker[Session]) -> None:
    expires = utcnow() + timedelta(days=3)
    key_hash, key_id, org_id = _key(db, name="prod", allowed_models=["tiny"], rpm_limit=60,
                                    tpm_limit=1000, monthly_budget_eur=Decimal("12.50"),
                                    expires_at=expires)
    body = post(client, service_headers, VERIFY, {"key_hash": key_hash.upper()})
    assert body["valid"] is True
    assert (body["api_key_id"], body["org_id"], body["name"]) == (str(key_id), str(org_id), "prod")
    assert (body["allowed_models"], body["rpm_limit"], body["tpm_limit"]) == (["tiny"], 60, 1000)
    assert datetime.fromisoformat(body["expires_at"]) == expires.replace(
        microsecond=expires.microsecond)
    # Money travels as strings; no usage yet, so the whole budget is left.
    assert isinstance(body["monthly_budget_eur"], str)
    assert Decimal(body["monthly_budget_eur"]) == Decimal("12.50")
    assert Decimal(body["spent_this_month_eur"]) == 0
    assert Decimal(body["budget_left_eur"]) == Decimal("12.50")
    with db() as s:
        row = s.get(ApiKey, key_id)
        assert row is not None and row.last_used_at is not None


def test_verify_key_without_budget(client: TestClient, service_headers: dict[str, str],
                                   db: sessionmaker[Session]) -> None:
    key_hash, _, _ = _key(db)
    body = post(client, service_headers, VERIFY, {"key_hash": key_hash})
    assert body["monthly_budget_eur"] is None and body["budget_left_eur"] is None
    assert body["allowed_models"] is None and body["expires_at"] is None


@pytest.mark.parametrize(("fields", "code"), [
    ({"revoked_at": T0}, "revoked_api_key"),
    ({"expires_at": T0}, "expired_api_key"),
])
def test_verify_refused_keys(client: TestClient, service_headers: dict[str, str],
                             db: sessionmaker[Session], fields: dict[str, Any], code: str) -> None:
    key_hash, key_id, _ = _key(db, **fields)
    r = client.post(VERIFY, json={"key_hash": key_hash}, headers=service_headers)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == code
    with db() as s:
        assert s.get(ApiKey, key_id).last_used_at is None  # type: ignore[union-attr]


def test_verify_unknown_and_disabled(client: TestClient, service_headers: dict[str, str],
                                     db: sessionmaker[Session]) -> None:
    r = client.post(VERIFY, json={"key_hash": "ab" * 32}, headers=service_headers)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "invalid_api_key"
    key_hash, _, _ = _key(db)
    with db() as s, s.begin():
        user = s.scalar(select(User).where(User.username == "admin"))
        assert user is not None
        user.is_active = False
    r = client.post(VERIFY, json={"key_hash": key_hash}, headers=service_headers)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "disabled_api_key"


@pytest.mark.parametrize("body", [
    {"key_hash": "abc"}, {"key_hash": "g" * 64}, {"key_hash": 12}, {"key_hash": "a" * 65},
    {}, {"key_hash": "a" * 64, "key": "ia-x"},
])
def test_verify_bad_input(client: TestClient, service_headers: dict[str, str],
                          body: dict[str, Any]) -> None:
    r = client.post(VERIFY, json=body, headers=service_headers)
    assert r.status_code == 422
    assert "ia-x" not in r.text  # submitted values are never echoed


def test_last_used_at_written_at_most_once_a_minute(client: TestClient,
                                                    db: sessionmaker[Session]) -> None:
    key_hash, key_id, _ = _key(db)

    def verify_at(now: datetime) -> datetime | None:
        with db() as s, s.begin():
            service.verify_key(s, key_hash, now=now)
        with db() as s:
            return s.get(ApiKey, key_id).last_used_at  # type: ignore[union-attr]

    now = utcnow()
    assert verify_at(now) == now
    assert verify_at(now + timedelta(seconds=59)) == now
    assert verify_at(now + timedelta(seconds=61)) == now + timedelta(seconds=61)
    with db() as s, pytest.raises(NotFound):
        service.verify_key(s, "cd" * 32, now=now)
