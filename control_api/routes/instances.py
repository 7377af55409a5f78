"""Routes under /api/instances.

Instances are the platform's VMs. Platform admins see all of them; other users only the
instances serving a deployment dedicated to one of their orgs (``allowed_orgs`` naming it), and
without the network and cloud details (addresses, provider and Ray ids, error messages).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from control_api.deps import AdminDep, NowDep, Principal, PrincipalDep, SessionDep, access
from control_api.errors import InvalidTransition, NotFound
from control_api.lifecycle import FINAL_STATES, transition
from control_api.pagination import after_cursor, decode_cursor, page
from control_api.schemas.fields import DEFAULT_LIMIT, MAX_LIMIT
from control_api.schemas.instances import InstanceDetail, InstanceList, InstanceOut, TerminateIn
from core.models import Deployment, Instance, InstanceState, Org

router = APIRouter(prefix="/api/instances", tags=["instances"])

CodeQuery = Annotated[str | None, Query(min_length=1, max_length=64)]
# States from which a terminate request makes no sense: already gone, or already on its way.
NOT_TERMINABLE = FINAL_STATES | {InstanceState.TERMINATING}


def _get(db: Session, instance_id: uuid.UUID) -> Instance:
    inst = db.get(Instance, instance_id)
    if inst is None:
        raise NotFound("instance not found")
    return inst


def dedicated_deployments(db: Session, principal: Principal) -> list[uuid.UUID]:
    """Ids of the deployments whose ``allowed_orgs`` names one of the caller's orgs (by id or
    name). Deployments open to every org are shared: their VMs are not the caller's."""
    if not principal.roles:
        return []
    mine = {str(i) for i in principal.roles} | set(
        db.scalars(select(Org.name).where(Org.id.in_(list(principal.roles)))))
    out = []
    for dep_id, spec in db.execute(select(Deployment.id, Deployment.spec)).tuples():
        allowed = (spec or {}).get("allowed_orgs")
        if isinstance(allowed, list) and any(str(ref) in mine for ref in allowed):
            out.append(dep_id)
    return out


def _visible(db: Session, principal: Principal, instance_id: uuid.UUID) -> Instance:
    inst = _get(db, instance_id)
    if not principal.is_platform_admin and (
            inst.deployment_id is None
            or inst.deployment_id not in dedicated_deployments(db, principal)):
        raise NotFound("instance not found")
    return inst


_PRIVATE = {"provider_instance_id": None, "ray_node_id": None, "private_ip": None,
            "public_ip": None, "error_message": None}


def _shown(out: InstanceOut, principal: Principal) -> InstanceOut:
    return out if principal.is_platform_admin else out.model_copy(update=_PRIVATE)


@router.get("", response_model=InstanceList, openapi_extra=access("user"))
def list_instances(
    principal: PrincipalDep,
    db: SessionDep,
    state: Annotated[InstanceState | None, Query()] = None,
    provider: CodeQuery = None,
    cluster: CodeQuery = None,
    zone: CodeQuery = None,
    deployment_id: Annotated[uuid.UUID | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
) -> InstanceList:
    """Instances, newest first, filtered; ``next_cursor`` fetches the following page.
    Platform admins see all; others those of deployments dedicated to their orgs."""
    stmt = select(Instance)
    if not principal.is_platform_admin:
        stmt = stmt.where(Instance.deployment_id.in_(dedicated_deployments(db, principal)))
    if state is not None:
        stmt = stmt.where(Instance.state == state)
    if provider is not None:
        stmt = stmt.where(Instance.provider_code == provider)
    if cluster is not None:
        stmt = stmt.where(Instance.cluster_name == cluster)
    if zone is not None:
        stmt = stmt.where(Instance.zone_code == zone)
    if deployment_id is not None:
        stmt = stmt.where(Instance.deployment_id == deployment_id)
    after = decode_cursor(cursor, uuid.UUID) if cursor is not None else None
    stmt = after_cursor(stmt, Instance.created_at, Instance.id, after).limit(limit + 1)
    items, next_cursor = page(list(db.scalars(stmt)), limit)
    return InstanceList(items=[_shown(InstanceOut.of(i), principal) for i in items],
                        next_cursor=next_cursor)


@router.get("/{instance_id}", response_model=InstanceDetail, openapi_extra=access("user"))
def get_instance(instance_id: uuid.UUID, principal: PrincipalDep,
                 db: SessionDep) -> InstanceDetail:
    """One instance with its state history and billing intervals (404 unless visible)."""
    shown = _shown(InstanceDetail.of(_visible(db, principal, instance_id)), principal)
    assert isinstance(shown, InstanceDetail)
    return shown


@router.post("/{instance_id}/terminate", response_model=InstanceDetail,
             openapi_extra=access("platform_admin"))
def terminate_instance(
    instance_id: uuid.UUID, admin: AdminDep, db: SessionDep, now: NowDep,
    body: TerminateIn | None = None,
) -> InstanceDetail:
    """Move an instance to ``terminating``; the node provider deletes the VM afterwards.

    Allowed from every live state and from ``failed`` (to clean up a VM that may remain);
    409 ``invalid_transition`` when it is already terminating, terminated or archived.
    """
    inst = _get(db, instance_id)
    if inst.state in NOT_TERMINABLE:
        raise InvalidTransition(f"instance is {inst.state.value}; it cannot be terminated")
    reason = (body.reason if body else None) or "terminate requested via the control API"
    # expected_from guards against a concurrent transition between our read and the update.
    transition(db, instance_id, InstanceState.TERMINATING, expected_from=inst.state, at=now,
               reason=reason, actor="control_api", user_id=admin.user_id)
    db.expire(inst)
    return InstanceDetail.of(_get(db, instance_id))


ARCHIVABLE = frozenset({InstanceState.TERMINATED, InstanceState.FAILED})


@router.post("/{instance_id}/archive", response_model=InstanceDetail,
             openapi_extra=access("platform_admin"))
def archive_instance(instance_id: uuid.UUID, admin: AdminDep, db: SessionDep,
                     now: NowDep) -> InstanceDetail:
    """Archive a terminated or failed instance: its history, billing intervals and action
    logs stay (costs are unchanged); it is done with. 409 ``invalid_transition`` from any
    other state (a live or terminating VM must be terminated first)."""
    inst = _get(db, instance_id)
    if inst.state not in ARCHIVABLE:
        raise InvalidTransition(f"instance is {inst.state.value}; only terminated or failed "
                                "instances can be archived")
    transition(db, instance_id, InstanceState.ARCHIVED, expected_from=inst.state, at=now,
               reason="archived via the control API", actor="control_api",
               user_id=admin.user_id)
    db.expire(inst)
    return InstanceDetail.of(_get(db, instance_id))
