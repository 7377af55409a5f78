"""Routes under /api/service-tokens: tokens of data-plane components (platform admin)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from sqlalchemy import select

from control_api.deps import AdminDep, SessionDep, access
from control_api.schemas.identity import (
    ServiceTokenCreate,
    ServiceTokenCreated,
    ServiceTokenList,
    ServiceTokenOut,
)
from control_api.services import identity
from core.models import ServiceToken

router = APIRouter(prefix="/api/service-tokens", tags=["service-tokens"])


def _out(tok: ServiceToken) -> ServiceTokenOut:
    return ServiceTokenOut.model_validate(tok, from_attributes=True)


@router.get("", response_model=ServiceTokenList, openapi_extra=access("platform_admin"))
def list_tokens(admin: AdminDep, db: SessionDep) -> ServiceTokenList:
    """Every service token (no secrets), revoked ones included."""
    rows = db.scalars(select(ServiceToken).order_by(ServiceToken.created_at, ServiceToken.id))
    return ServiceTokenList(items=[_out(t) for t in rows])


@router.post("", response_model=ServiceTokenCreated, status_code=201,
             openapi_extra=access("platform_admin"))
def create_token(body: ServiceTokenCreate, admin: AdminDep, db: SessionDep
                 ) -> ServiceTokenCreated:
    """Create a token with its ``scopes`` (default: the one its component names:
    ``node-provider``, ``ingress`` or ``reconciler``); ``token`` is shown in this response
    only."""
    tok, secret = identity.create_service_token(db, admin, name=body.name,
                                                component=body.component,
                                                scopes=list(body.scopes or []) or None)
    return ServiceTokenCreated(**_out(tok).model_dump(), token=secret)


@router.post("/{id}/revoke", response_model=ServiceTokenOut,
             openapi_extra=access("platform_admin"))
def revoke_token(id: uuid.UUID, admin: AdminDep, db: SessionDep  # noqa: A002
                 ) -> ServiceTokenOut:
    """Revoke a service token (idempotent)."""
    return _out(identity.revoke_service_token(db, admin, id))
