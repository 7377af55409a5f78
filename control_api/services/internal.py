"""What the data plane's internal calls do: apply lifecycle events, record usage, verify keys.

Every write here is idempotent, so the data plane may retry or replay its spool freely:
lifecycle events are applied once per ``event_id`` (recorded in ``processed_events``), usage
records once per ``request_id`` (a unique column, inserted with ON CONFLICT DO NOTHING).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from control_api.errors import NotFound
from control_api.lifecycle import (
    ConcurrentModification,
    can_transition,
    close_billing_interval,
    deadline_for,
    open_billing_interval,
    transition,
)
from core.db import utcnow
from core.models import (
    ActionLog,
    ApiKey,
    BillingInterval,
    Deployment,
    Instance,
    InstanceState,
    InstanceStateHistory,
    Membership,
    Org,
    ProcessedEvent,
    Provider,
    Role,
    User,
)
from core.wire import (
    EventRejection,
    KeyVerifyResult,
    LifecycleEventIn,
    LifecycleEventsResult,
    UsageRecordIn,
    UsageRejection,
    UsageResult,
)
from finops.ingest import insert_usage_rows

log = logging.getLogger(__name__)

S = InstanceState
LIFECYCLE_KIND = "lifecycle"
# In these states a VM with a provider id is running at the cloud, hence billed.
BILLED_STATES = frozenset({S.BOOTING, S.JOINING, S.READY, S.DRAINING})
# States in which a ``cloud_exists: false`` observation closes the cost interval.
GONE_STATES = frozenset({S.TERMINATED, S.FAILED, S.ARCHIVED})
# ``last_used_at`` is refreshed at most this often: one write per key per minute, not per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# Rows per INSERT statement: 500 x 13 columns stays far below SQLite's and Postgres' bind limits.
USAGE_CHUNK = 500
TRANSITION_ATTEMPTS = 3
# Event fields copied onto the instance when given: event field -> instance column.
_FIELDS = {
    "provider_instance_id": "provider_instance_id",
    "ray_node_id": "ray_node_id",
    "private_ip": "private_ip",
    "public_ip": "public_ip",
    "zone": "zone_code",
    "node_type": "node_type",
    "deployment_id": "deployment_id",
}


class EventRejected(Exception):
    """One lifecycle event cannot be applied. ``permanent`` ones are recorded as processed, so a
    replay reports them as duplicates; the others may succeed on a later retry."""

    def __init__(self, code: str, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.permanent = permanent


# ---------------------------------------------------------------- lifecycle events


def apply_lifecycle_events(
    session: Session, events: Sequence[LifecycleEventIn], *, actor: str = "data_plane",
    now: datetime | None = None,
) -> LifecycleEventsResult:
    """Apply a batch of lifecycle events, each at most once (by ``event_id``).

    Events are applied per launch id in ``at`` order, each in its own savepoint so one bad event
    does not undo the others. The caller commits.
    """
    now = now or utcnow()
    duplicates = 0
    unique: dict[str, LifecycleEventIn] = {}
    for ev in events:
        if ev.event_id in unique:
            duplicates += 1  # the same event twice in one batch: the first one counts
        else:
            unique[ev.event_id] = ev
    done = _processed_ids(session, list(unique))
    todo = [ev for eid, ev in unique.items() if eid not in done]
    duplicates += len(unique) - len(todo)
    applied = 0
    rejected: list[EventRejection] = []
    for ev in _in_apply_order(todo):
        outcome = _apply_once(session, ev, actor, now)
        if outcome is None:
            applied += 1
        elif isinstance(outcome, EventRejection):
            rejected.append(outcome)
        else:
            duplicates += 1
    return LifecycleEventsResult(applied=applied, duplicates=duplicates, rejected=rejected)


def _processed_ids(session: Session, event_ids: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(event_ids), 500):
        chunk = event_ids[i : i + 500]
        found.update(session.scalars(
            select(ProcessedEvent.event_id).where(ProcessedEvent.event_id.in_(chunk))))
    return found


def _in_apply_order(events: Iterable[LifecycleEventIn]) -> list[LifecycleEventIn]:
    """Launch ids in order of first appearance; within one, by ``at`` (stable for ties)."""
    groups: dict[str, list[LifecycleEventIn]] = {}
    for ev in events:
        groups.setdefault(ev.launch_id, []).append(ev)
    ordered: list[LifecycleEventIn] = []
    for group in groups.values():
        ordered.extend(sorted(group, key=lambda e: e.at))
    return ordered


def _apply_once(session: Session, ev: LifecycleEventIn, actor: str,
                now: datetime) -> EventRejection | str | None:
    """``None`` when applied, ``"duplicate"``, or the rejection."""
    sp = session.begin_nested()
    try:
        # Claim the event id first: a concurrent request applying the same event blocks here
        # (Postgres waits on the primary key) and then sees the conflict.
        session.add(ProcessedEvent(event_id=ev.event_id, kind=LIFECYCLE_KIND, at=now))
        session.flush()
    except IntegrityError:
        sp.rollback()
        return "duplicate"
    try:
        _apply_event(session, ev, actor)
    except EventRejected as rej:
        sp.rollback()
        return _reject(session, ev, rej, actor, now)
    except (IntegrityError, DataError) as exc:
        sp.rollback()
        log.warning("lifecycle event %s refused by the database: %s", ev.event_id,
                    type(exc).__name__)
        return _reject(session, ev, EventRejected(
            "database_refused", f"the database refused the event ({type(exc).__name__})",
            permanent=False), actor, now)
    sp.commit()
    return None


def _reject(session: Session, ev: LifecycleEventIn, rej: EventRejected, actor: str,
            now: datetime) -> EventRejection | str:
    rejection = EventRejection(event_id=ev.event_id, code=rej.code, message=rej.message)
    if not rej.permanent:
        return rejection
    instance_id = session.scalar(select(Instance.id).where(Instance.launch_id == ev.launch_id))
    sp = session.begin_nested()
    try:
        session.add(ProcessedEvent(event_id=ev.event_id, kind=LIFECYCLE_KIND, at=now))
        session.add(ActionLog(
            type="instance.event_rejected", component=actor, status="failure",
            error_code=rej.code, error_message=rej.message, instance_id=instance_id,
            created_at=now, details=_event_details(ev),
        ))
        session.flush()
    except IntegrityError:
        sp.rollback()
        return "duplicate"
    sp.commit()
    return rejection


def _event_details(ev: LifecycleEventIn) -> dict[str, Any]:
    return {"event_id": ev.event_id, "launch_id": ev.launch_id, "state": ev.state.value,
            "at": ev.at.isoformat(), "cloud_exists": ev.cloud_exists}


def _lock_instance(session: Session, launch_id: str) -> Instance | None:
    # FOR UPDATE (Postgres) serialises concurrent events of one instance; populate_existing
    # refreshes a copy the session may already hold.
    return session.scalar(
        select(Instance).where(Instance.launch_id == launch_id).with_for_update()
        .execution_options(populate_existing=True)
    )


def _apply_event(session: Session, ev: LifecycleEventIn, actor: str) -> None:
    inst = _lock_instance(session, ev.launch_id)
    if inst is None:
        inst = _create_instance(session, ev, actor)
    elif inst.provider_code != ev.provider:
        raise EventRejected("launch_id_mismatch",
                            f"launch id {ev.launch_id} belongs to provider {inst.provider_code}")
    if ev.deployment_id is not None and ev.deployment_id != inst.deployment_id:
        _require_deployment(session, ev.deployment_id)

    for attempt in range(TRANSITION_ATTEMPTS):
        stale = ev.at < inst.state_entered_at
        if ev.state != inst.state:
            _check_transition(inst, ev, stale)
        _copy_fields(inst, ev, overwrite=not stale)
        session.flush()
        if ev.state == inst.state:
            break
        try:
            transition(
                session, inst.id, ev.state, expected_from=inst.state,
                # History stays monotonic even when a late event moves forward.
                at=max(ev.at, inst.state_entered_at), reason=ev.reason,
                error_code=ev.error_code, error_message=ev.error_message, actor=actor,
                details={"event_id": ev.event_id, "launch_id": ev.launch_id,
                         "cloud_exists": ev.cloud_exists},
            )
            break
        except ConcurrentModification:
            session.refresh(inst)
            if attempt == TRANSITION_ATTEMPTS - 1:
                raise EventRejected("concurrent_modification",
                                    "the instance kept changing concurrently",
                                    permanent=False) from None
    _apply_billing(session, inst, ev, actor)


def _check_transition(inst: Instance, ev: LifecycleEventIn, stale: bool) -> None:
    if not can_transition(inst.state, ev.state):
        if stale:
            raise EventRejected(
                "stale", f"event at {ev.at.isoformat()} ({ev.state.value}) is older than the "
                f"current state {inst.state.value} entered at {inst.state_entered_at.isoformat()}")
        raise EventRejected("invalid_transition",
                            f"cannot go from {inst.state.value} to {ev.state.value}")
    if ev.state == S.FAILED and not ev.error_code:
        raise EventRejected("missing_error_code", "a failed event needs an error_code")


def _copy_fields(inst: Instance, ev: LifecycleEventIn, *, overwrite: bool) -> None:
    # A late (stale) event only fills what we do not know yet; a current one overwrites.
    for src, dst in _FIELDS.items():
        value = getattr(ev, src)
        if value is not None and (overwrite or getattr(inst, dst) is None):
            setattr(inst, dst, value)


def _require_deployment(session: Session, deployment_id: uuid.UUID) -> None:
    if session.get(Deployment, deployment_id) is None:
        raise EventRejected("unknown_deployment", f"deployment {deployment_id} does not exist")


def _create_instance(session: Session, ev: LifecycleEventIn, actor: str) -> Instance:
    """Write the intent row of a launch id seen for the first time (state ``requested``)."""
    if session.get(Provider, ev.provider) is None:
        raise EventRejected("unknown_provider", f"provider {ev.provider!r} is not in the catalog")
    if ev.deployment_id is not None:
        _require_deployment(session, ev.deployment_id)
    inner = session.begin_nested()
    inst = Instance(
        launch_id=ev.launch_id, cluster_name=ev.cluster_name, provider_code=ev.provider,
        zone_code=ev.zone, instance_type_name=ev.instance_type, node_type=ev.node_type,
        deployment_id=ev.deployment_id, state=S.REQUESTED, state_entered_at=ev.at,
        state_deadline_at=deadline_for(S.REQUESTED, ev.at), created_at=ev.at, updated_at=ev.at,
    )
    session.add(inst)
    try:
        session.flush()
    except IntegrityError:
        # Another request created this launch id in between (launch_id is unique): use theirs.
        inner.rollback()
        log.info("launch id %s was created concurrently; using that row", ev.launch_id)
        existing = _lock_instance(session, ev.launch_id)
        if existing is None:
            raise
        return existing
    session.add(InstanceStateHistory(instance_id=inst.id, from_state=None, to_state=S.REQUESTED,
                                     at=ev.at, reason="first event of the launch id", actor=actor))
    session.add(ActionLog(type="instance.created", component=actor, status="success",
                          instance_id=inst.id, created_at=ev.at, details=_event_details(ev)))
    session.flush()
    inner.commit()
    return inst


def _apply_billing(session: Session, inst: Instance, ev: LifecycleEventIn, actor: str) -> None:
    """Open the cost interval when the cloud confirms the VM, close it when confirmed gone.

    ``cloud_exists`` unknown (a transient cloud error) never closes anything.
    """
    confirmed_gone = (ev.cloud_exists is False and ev.state in GONE_STATES) or (
        ev.state == S.TERMINATED and ev.cloud_exists is None)
    if confirmed_gone:
        if close_billing_interval(session, inst, ev.at):
            _billing_log(session, inst, "billing.interval_closed", ev, actor)
        return
    exists = ev.cloud_exists is True or (
        ev.cloud_exists is None and ev.state in BILLED_STATES
        and inst.provider_instance_id is not None)
    if not exists or ev.state in (S.TERMINATED, S.ARCHIVED):
        return
    last_end = session.scalar(
        select(BillingInterval.ended_at).where(
            BillingInterval.instance_id == inst.id, BillingInterval.ended_at.is_not(None))
        .order_by(BillingInterval.ended_at.desc()).limit(1))
    if last_end is not None and last_end >= ev.at:
        return  # an old observation must not reopen an interval already closed after it
    start = ev.at
    if ev.cloud_created_at is not None and ev.cloud_created_at < ev.at:
        start = ev.cloud_created_at if last_end is None else max(ev.cloud_created_at, last_end)
    if open_billing_interval(session, inst, start):
        _billing_log(session, inst, "billing.interval_opened", ev, actor)


def _billing_log(session: Session, inst: Instance, kind: str, ev: LifecycleEventIn,
                 actor: str) -> None:
    session.add(ActionLog(type=kind, component=actor, status="info", instance_id=inst.id,
                          created_at=ev.at, details=_event_details(ev)))
    session.flush()


# ---------------------------------------------------------------- usage


def _attribution_problem(r: UsageRecordIn, key_orgs: dict[uuid.UUID, uuid.UUID]) -> str | None:
    """Why a record's key/org attribution cannot be stored (None: it can)."""
    if r.api_key_id is None:
        return "org_without_key" if r.org_id is not None else None
    org = key_orgs.get(r.api_key_id)
    if org is None:
        return "unknown_api_key"
    if r.org_id is not None and r.org_id != org:
        return "key_org_mismatch"
    return None


def insert_usage(session: Session, records: Sequence[UsageRecordIn]) -> UsageResult:
    """Insert usage records, ignoring request ids already stored (or repeated in the batch).

    A record must be attributed consistently: its API key exists and belongs to the record's
    org (a record without an org gets its key's). Others are refused (``rejected``, each with
    a code), so no token can charge one org's usage to another's key.
    """
    unique: dict[str, UsageRecordIn] = {}
    for r in records:
        unique.setdefault(r.request_id, r)
    key_ids = list({r.api_key_id for r in unique.values() if r.api_key_id is not None})
    key_orgs: dict[uuid.UUID, uuid.UUID] = {}
    for i in range(0, len(key_ids), USAGE_CHUNK):
        key_orgs.update(session.execute(select(ApiKey.id, ApiKey.org_id).where(
            ApiKey.id.in_(key_ids[i : i + USAGE_CHUNK]))).tuples().all())
    rejected: list[UsageRejection] = []
    rows = []
    for r in unique.values():
        problem = _attribution_problem(r, key_orgs)
        if problem is not None:
            rejected.append(UsageRejection(request_id=r.request_id, code=problem))
            continue
        row = r.model_dump()
        if r.api_key_id is not None:
            row["org_id"] = key_orgs[r.api_key_id]
        rows.append(row)
    # One array-parameter statement on Postgres (finops.ingest): building a multi-VALUES
    # statement of thousands of parameters was ~80 % of the ingest time.
    inserted = len(insert_usage_rows(session, rows))
    if rejected:
        log.warning("usage: %d record(s) refused for inconsistent key/org attribution",
                    len(rejected))
    return UsageResult(inserted=inserted, duplicates=len(records) - inserted - len(rejected),
                       rejected=rejected)


# ---------------------------------------------------------------- key verification


def verify_key(session: Session, key_hash: str, *, now: datetime | None = None) -> KeyVerifyResult:
    """The principal behind an API key hash, with its limits and what is left of its budget.

    A key verifies only while its owner exists, is active, and is a member of the key's org
    with a role that may hold keys (``KEY_HOLDING_ROLES``): removing the owner from the org,
    demoting them to viewer, disabling or deleting them ends the key (within the ingress's
    cache TTL). Unknown, revoked, expired keys raise ``NotFound`` with the codes
    ``invalid_api_key``, ``revoked_api_key``, ``expired_api_key``; the others
    ``disabled_api_key``.
    """
    now = now or utcnow()
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
    if key is None:
        raise NotFound("unknown API key", code="invalid_api_key")
    if key.revoked_at is not None:
        raise NotFound("API key revoked", code="revoked_api_key")
    if key.expires_at is not None and key.expires_at <= now:
        raise NotFound("API key expired", code="expired_api_key")
    problem = key_holder_problem(session, key)
    if problem is not None:
        raise NotFound(problem, code="disabled_api_key")
    _touch_last_used(session, key, now)
    spent = _month_spend(session, key.id, now)
    budget = key.monthly_budget_eur
    left = max(Decimal(0), budget - spent) if budget is not None else None
    return KeyVerifyResult(
        valid=True, api_key_id=key.id, org_id=key.org_id,
        org_name=session.scalar(select(Org.name).where(Org.id == key.org_id)),
        user_id=key.user_id, name=key.name,
        allowed_models=key.allowed_models, rpm_limit=key.rpm_limit, tpm_limit=key.tpm_limit,
        monthly_budget_eur=budget, spent_this_month_eur=spent, budget_left_eur=left,
        expires_at=key.expires_at,
    )


# Roles whose members may create and use API keys (viewers may not).
KEY_HOLDING_ROLES = frozenset({Role.MEMBER, Role.ADMIN, Role.OWNER})


def key_holder_problem(session: Session, key: ApiKey) -> str | None:
    """Why ``key``'s owner may not use it now (None: they may)."""
    if key.user_id is None:
        return "the owner of this API key was deleted"
    owner = session.get(User, key.user_id)
    if owner is None:
        return "the owner of this API key was deleted"
    if not owner.is_active:
        return "the owner of this API key is disabled"
    role = session.scalar(select(Membership.role).where(Membership.user_id == owner.id,
                                                        Membership.org_id == key.org_id))
    if role is None:
        return "the owner of this API key is no longer a member of its organisation"
    if role not in KEY_HOLDING_ROLES:
        return "the owner's role in this organisation may not hold API keys"
    return None


def _touch_last_used(session: Session, key: ApiKey, now: datetime) -> None:
    if key.last_used_at is not None and now - key.last_used_at < LAST_USED_RESOLUTION:
        return
    # Guarded so concurrent verifications of one key write once per minute, not once each.
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key.id, or_(ApiKey.last_used_at.is_(None),
                                        ApiKey.last_used_at <= now - LAST_USED_RESOLUTION))
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )


def _month_spend(session: Session, api_key_id: uuid.UUID, now: datetime) -> Decimal:
    # Imported here: finops owns the spend computation and control_api must import cleanly
    # without loading it on every start.
    from finops.keys import month_spend_eur

    return Decimal(month_spend_eur(session, api_key_id, now))
