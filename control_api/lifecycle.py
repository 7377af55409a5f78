"""The instance lifecycle state machine: allowed transitions, deadlines, guarded updates.

``requested → provisioning → booting → joining → ready → draining → terminating → terminated``,
``failed`` from every non-final state, ``archived`` after ``terminated`` (or ``failed``).
Events from the data plane may skip forward along the chain (a node can be seen ``ready`` before
we heard it ``joining``); they never move backwards, except ``draining → ready`` (drain cancelled).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from control_api.errors import InvalidTransition, NotFound
from core.db import utcnow
from core.models import (
    ActionLog,
    BillingInterval,
    Instance,
    InstanceState,
    InstanceStateHistory,
)

S = InstanceState

CHAIN: tuple[InstanceState, ...] = (
    S.REQUESTED, S.PROVISIONING, S.BOOTING, S.JOINING, S.READY, S.DRAINING, S.TERMINATING,
    S.TERMINATED,
)
FINAL_STATES = frozenset({S.TERMINATED, S.ARCHIVED})
# States in which the VM may exist at the cloud (so the reconciler must look for it).
LIVE_STATES = frozenset(CHAIN[:-1])

# Default deadline per non-final state; ``None`` means no deadline (a ready node may run forever).
DEFAULT_DEADLINES: dict[InstanceState, timedelta | None] = {
    S.REQUESTED: timedelta(minutes=5),
    S.PROVISIONING: timedelta(minutes=15),
    S.BOOTING: timedelta(minutes=20),
    S.JOINING: timedelta(minutes=10),
    S.READY: None,
    S.DRAINING: timedelta(minutes=30),
    S.TERMINATING: timedelta(minutes=15),
    S.FAILED: None,
}


def _build_allowed() -> dict[InstanceState, frozenset[InstanceState]]:
    allowed: dict[InstanceState, set[InstanceState]] = {}
    for i, state in enumerate(CHAIN):
        nxt = set(CHAIN[i + 1 :])
        if state not in FINAL_STATES:
            nxt.add(S.FAILED)
        allowed[state] = nxt
    allowed[S.DRAINING].add(S.READY)
    allowed[S.TERMINATED] = {S.ARCHIVED}
    # A failed instance may still hold a VM: it can be cleaned up, then archived.
    allowed[S.FAILED] = {S.TERMINATING, S.TERMINATED, S.ARCHIVED}
    allowed[S.ARCHIVED] = set()
    return {k: frozenset(v) for k, v in allowed.items()}


ALLOWED: dict[InstanceState, frozenset[InstanceState]] = _build_allowed()


class ConcurrentModification(InvalidTransition):
    """Another writer moved the instance between our read and our guarded UPDATE."""

    code = "concurrent_modification"


def can_transition(src: InstanceState, dst: InstanceState) -> bool:
    """Whether the state machine allows ``src → dst`` (staying in place is not a transition)."""
    return dst in ALLOWED[src]


def deadline_for(state: InstanceState, at: datetime,
                 deadlines: dict[InstanceState, timedelta | None] | None = None) -> datetime | None:
    """When an instance entering ``state`` at ``at`` is overdue, or ``None`` (no deadline)."""
    delta = (deadlines or DEFAULT_DEADLINES).get(state)
    return at + delta if delta is not None else None


@dataclass(frozen=True)
class TransitionResult:
    instance_id: uuid.UUID
    from_state: InstanceState
    to_state: InstanceState
    at: datetime


def transition(
    session: Session,
    instance_id: uuid.UUID,
    to_state: InstanceState,
    *,
    expected_from: InstanceState | None = None,
    at: datetime | None = None,
    reason: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    actor: str = "control_api",
    user_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
) -> TransitionResult:
    """Move an instance to ``to_state`` with a guarded UPDATE (state and version must match).

    Appends a history row and an action log. Raises ``InvalidTransition`` when the move is not
    allowed, and its subclass ``ConcurrentModification`` when another writer changed the instance
    in between (the in-session copy was stale): re-read and retry.
    """
    at = at or utcnow()
    inst = session.get(Instance, instance_id)
    if inst is None:
        raise NotFound(f"instance {instance_id} not found")
    src = inst.state
    if expected_from is not None and src != expected_from:
        raise InvalidTransition(
            f"instance {instance_id} is {src.value}, expected {expected_from.value}"
        )
    if not can_transition(src, to_state):
        raise InvalidTransition(f"cannot go from {src.value} to {to_state.value}")
    if to_state == S.FAILED and not error_code:
        raise InvalidTransition("a transition to failed needs an error code")
    values: dict[str, Any] = {
        "state": to_state,
        "state_entered_at": at,
        "state_deadline_at": deadline_for(to_state, at),
        "version": inst.version + 1,
        "updated_at": at,
    }
    if error_code:
        values["error_code"] = error_code
        values["error_message"] = error_message
    res = session.execute(
        update(Instance)
        .where(Instance.id == instance_id, Instance.state == src, Instance.version == inst.version)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        # Our copy is stale: expire it so a retry by the caller reads the current row.
        session.expire(inst)
        raise ConcurrentModification(f"instance {instance_id} changed concurrently; retry")
    session.add(
        InstanceStateHistory(
            instance_id=instance_id, from_state=src, to_state=to_state, at=at, reason=reason,
            error_code=error_code, actor=actor,
        )
    )
    session.add(
        ActionLog(
            type="instance.transition", component=actor,
            status="failure" if to_state == S.FAILED else "success",
            error_code=error_code, error_message=error_message, instance_id=instance_id,
            user_id=user_id, created_at=at,
            details={"from": src.value, "to": to_state.value, "reason": reason, **(details or {})},
        )
    )
    session.flush()
    session.refresh(inst)
    return TransitionResult(instance_id, src, to_state, at)


def open_billing_interval(session: Session, inst: Instance, started_at: datetime) -> bool:
    """Open the cost interval when the cloud confirms the VM exists; no-op if one is open."""
    existing = session.scalar(
        select(BillingInterval).where(
            BillingInterval.instance_id == inst.id, BillingInterval.ended_at.is_(None)
        )
    )
    if existing is not None:
        return False
    session.add(
        BillingInterval(
            instance_id=inst.id, provider_code=inst.provider_code, zone_code=inst.zone_code,
            instance_type_name=inst.instance_type_name, deployment_id=inst.deployment_id,
            started_at=started_at,
        )
    )
    session.flush()
    return True


def close_billing_interval(session: Session, inst: Instance, ended_at: datetime) -> bool:
    """Close the open cost interval when the cloud confirms the VM is gone; no-op if none."""
    interval = session.scalar(
        select(BillingInterval).where(
            BillingInterval.instance_id == inst.id, BillingInterval.ended_at.is_(None)
        )
    )
    if interval is None:
        return False
    interval.ended_at = max(ended_at, interval.started_at)
    session.flush()
    return True
