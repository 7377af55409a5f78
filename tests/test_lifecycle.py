"""The instance state machine: every transition and refusal, guarded updates, history, billing."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from control_api import lifecycle
from control_api.errors import InvalidTransition, NotFound
from control_api.lifecycle import ConcurrentModification, transition
from core.models import (
    ActionLog,
    BillingInterval,
    Instance,
    InstanceState,
    InstanceStateHistory,
    Provider,
)

S = InstanceState
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

# Written out by hand from DESIGN.md, independently of lifecycle.ALLOWED: the chain may be
# skipped forward, `failed` is reachable from every non-final state, draining may go back to
# ready, a failed instance may still be cleaned up, and `archived` follows terminated/failed.
EXPECTED: dict[InstanceState, set[InstanceState]] = {
    S.REQUESTED: {S.PROVISIONING, S.BOOTING, S.JOINING, S.READY, S.DRAINING, S.TERMINATING,
                  S.TERMINATED, S.FAILED},
    S.PROVISIONING: {S.BOOTING, S.JOINING, S.READY, S.DRAINING, S.TERMINATING, S.TERMINATED,
                     S.FAILED},
    S.BOOTING: {S.JOINING, S.READY, S.DRAINING, S.TERMINATING, S.TERMINATED, S.FAILED},
    S.JOINING: {S.READY, S.DRAINING, S.TERMINATING, S.TERMINATED, S.FAILED},
    S.READY: {S.DRAINING, S.TERMINATING, S.TERMINATED, S.FAILED},
    S.DRAINING: {S.READY, S.TERMINATING, S.TERMINATED, S.FAILED},
    S.TERMINATING: {S.TERMINATED, S.FAILED},
    S.TERMINATED: {S.ARCHIVED},
    S.FAILED: {S.TERMINATING, S.TERMINATED, S.ARCHIVED},
    S.ARCHIVED: set(),
}


def test_expected_table_covers_every_state() -> None:
    assert set(EXPECTED) == set(InstanceState)


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(InstanceState, InstanceState)))
def test_can_transition_matches_expected_table(src: InstanceState, dst: InstanceState) -> None:
    assert lifecycle.can_transition(src, dst) is (dst in EXPECTED[src])


def test_every_non_final_state_has_a_deadline_entry() -> None:
    for state in InstanceState:
        if state in (S.TERMINATED, S.ARCHIVED):
            continue
        assert state in lifecycle.DEFAULT_DEADLINES
    assert lifecycle.deadline_for(S.BOOTING, T0) == T0 + timedelta(minutes=20)
    assert lifecycle.deadline_for(S.READY, T0) is None


# ---------------------------------------------------------------- on the database


def _provider(s: Session) -> None:
    if s.get(Provider, "local") is None:
        s.add(Provider(code="local", name="Local"))
        s.flush()


def _instance(s: Session, state: InstanceState = S.REQUESTED, at: datetime = T0) -> Instance:
    _provider(s)
    inst = Instance(launch_id=f"launch-{uuid.uuid4().hex[:12]}", cluster_name="c1",
                    provider_code="local", instance_type_name="L4-1-24G", state=state,
                    state_entered_at=at, created_at=at, updated_at=at)
    s.add(inst)
    s.flush()
    return inst


def _counts(s: Session, instance_id: uuid.UUID) -> tuple[int, int]:
    hist = s.scalar(select(func.count()).select_from(InstanceStateHistory)
                    .where(InstanceStateHistory.instance_id == instance_id))
    logs = s.scalar(select(func.count()).select_from(ActionLog)
                    .where(ActionLog.instance_id == instance_id))
    return int(hist or 0), int(logs or 0)


@pytest.mark.parametrize("src", list(InstanceState))
def test_every_transition_from_state_on_db(db: sessionmaker[Session], src: InstanceState) -> None:
    """For each target: allowed ones succeed (state, version, history, log); others refused."""
    with db() as s, s.begin():
        for dst in InstanceState:
            inst = _instance(s, src)
            at = T0 + timedelta(minutes=5)
            error_code = "boom" if dst == S.FAILED else None
            if dst in EXPECTED[src]:
                res = transition(s, inst.id, dst, at=at, error_code=error_code,
                                 reason="test", actor="tests")
                assert (res.from_state, res.to_state, res.at) == (src, dst, at)
                s.expire_all()
                row = s.get(Instance, inst.id)
                assert row is not None
                assert row.state == dst and row.version == 2 and row.state_entered_at == at
                assert row.state_deadline_at == lifecycle.deadline_for(dst, at)
                hist = s.scalars(select(InstanceStateHistory).where(
                    InstanceStateHistory.instance_id == inst.id)).all()
                assert [(h.from_state, h.to_state, h.actor) for h in hist] == [
                    (src, dst, "tests")]
                log = s.scalars(select(ActionLog).where(ActionLog.instance_id == inst.id)).one()
                assert log.type == "instance.transition"
                assert log.status == ("failure" if dst == S.FAILED else "success")
                assert log.details is not None
                assert log.details["from"] == src.value and log.details["to"] == dst.value
            else:
                with pytest.raises(InvalidTransition):
                    transition(s, inst.id, dst, at=at, error_code=error_code)
                s.expire_all()
                row = s.get(Instance, inst.id)
                assert row is not None and row.state == src and row.version == 1
                assert _counts(s, inst.id) == (0, 0)


def test_failed_needs_an_error_code(db: sessionmaker[Session]) -> None:
    with db() as s, s.begin():
        inst = _instance(s, S.BOOTING)
        with pytest.raises(InvalidTransition, match="error code"):
            transition(s, inst.id, S.FAILED)
        s.expire_all()
        assert s.get(Instance, inst.id).state == S.BOOTING  # type: ignore[union-attr]
        transition(s, inst.id, S.FAILED, error_code="quota_exceeded", error_message="no GPUs")
        s.expire_all()
        row = s.get(Instance, inst.id)
        assert row is not None
        assert (row.state, row.error_code, row.error_message) == (
            S.FAILED, "quota_exceeded", "no GPUs")


def test_expected_from_and_unknown_instance(db: sessionmaker[Session]) -> None:
    with db() as s, s.begin():
        inst = _instance(s, S.BOOTING)
        with pytest.raises(InvalidTransition, match="expected provisioning"):
            transition(s, inst.id, S.JOINING, expected_from=S.PROVISIONING)
        with pytest.raises(NotFound):
            transition(s, uuid.uuid4(), S.JOINING)


def test_history_and_action_logs_append_per_transition(db: sessionmaker[Session]) -> None:
    with db() as s, s.begin():
        inst = _instance(s)
        path = [S.PROVISIONING, S.BOOTING, S.READY, S.DRAINING, S.READY, S.TERMINATING,
                S.TERMINATED, S.ARCHIVED]
        for i, state in enumerate(path, start=1):
            transition(s, inst.id, state, at=T0 + timedelta(minutes=i))
        hist = s.scalars(select(InstanceStateHistory).where(
            InstanceStateHistory.instance_id == inst.id).order_by(InstanceStateHistory.id)).all()
        assert [h.to_state for h in hist] == path
        assert [h.from_state for h in hist] == [S.REQUESTED, *path[:-1]]
        assert _counts(s, inst.id) == (len(path), len(path))
        s.expire_all()
        assert s.get(Instance, inst.id).version == 1 + len(path)  # type: ignore[union-attr]


def test_concurrent_modification_is_detected(db: sessionmaker[Session]) -> None:
    """Two writers read version 1; the second guarded UPDATE finds the row changed."""
    with db() as s, s.begin():
        inst_id = _instance(s, S.BOOTING).id
    a, b = db(), db()
    try:
        b_inst = b.get(Instance, inst_id)
        assert b_inst is not None and b_inst.version == 1
        # End b's read transaction but keep its copy (expire_on_commit=False): on SQLite a
        # writer holds the database lock for its whole transaction, so the interleaving is
        # read (b) -> write (a) -> stale write (b), as between two API workers.
        b.commit()
        a_inst = a.get(Instance, inst_id)
        assert a_inst is not None
        transition(a, inst_id, S.JOINING, at=T0 + timedelta(minutes=1))
        a.commit()
        # b still holds the version-1 copy (state booting): its guarded UPDATE matches no row.
        with pytest.raises(ConcurrentModification) as exc_info:
            transition(b, inst_id, S.READY, at=T0 + timedelta(minutes=2))
        assert exc_info.value.code == "concurrent_modification"
        assert isinstance(exc_info.value, InvalidTransition)
        # The stale copy was expired: a retry reads joining/version 2 and succeeds.
        res = transition(b, inst_id, S.READY, at=T0 + timedelta(minutes=2))
        assert res.from_state == S.JOINING
        b.commit()
    finally:
        a.close()
        b.close()
    with db() as s:
        row = s.get(Instance, inst_id)
        assert row is not None and row.state == S.READY and row.version == 3
        assert _counts(s, inst_id) == (2, 2)


def test_billing_interval_open_and_close_are_idempotent(db: sessionmaker[Session]) -> None:
    with db() as s, s.begin():
        inst = _instance(s, S.BOOTING)
        assert lifecycle.open_billing_interval(s, inst, T0) is True
        assert lifecycle.open_billing_interval(s, inst, T0 + timedelta(minutes=1)) is False
        rows = s.scalars(select(BillingInterval).where(
            BillingInterval.instance_id == inst.id)).all()
        assert [(r.started_at, r.ended_at) for r in rows] == [(T0, None)]
        assert (rows[0].provider_code, rows[0].instance_type_name) == ("local", "L4-1-24G")
        end = T0 + timedelta(hours=2)
        assert lifecycle.close_billing_interval(s, inst, end) is True
        assert lifecycle.close_billing_interval(s, inst, end + timedelta(hours=1)) is False
        s.expire_all()
        rows = s.scalars(select(BillingInterval).where(
            BillingInterval.instance_id == inst.id)).all()
        assert [(r.started_at, r.ended_at) for r in rows] == [(T0, end)]
        # A close before the start is clamped (never a negative interval).
        assert lifecycle.open_billing_interval(s, inst, end + timedelta(hours=3)) is True
        assert lifecycle.close_billing_interval(s, inst, end) is True
        last = s.scalars(select(BillingInterval).where(BillingInterval.instance_id == inst.id)
                         .order_by(BillingInterval.id.desc())).first()
        assert last is not None and last.ended_at == last.started_at
