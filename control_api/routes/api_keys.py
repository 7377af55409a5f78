"""Routes under /api/api-keys: OpenAI-endpoint keys (the secret is returned once, by create)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from control_api.deps import PrincipalDep, SessionDep, SettingsDep, access
from control_api.schemas.identity import ApiKeyCreate, ApiKeyCreated, ApiKeyList, ApiKeyOut
from control_api.services import identity
from core.db import utcnow
from core.models import ApiKey

router = APIRouter(prefix="/api/api-keys", tags=["api-keys"])


def _out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut.model_validate(key, from_attributes=True)


@router.get("", response_model=ApiKeyList, openapi_extra=access("org:viewer"))
def list_keys(principal: PrincipalDep, db: SessionDep, org_id: uuid.UUID | None = None
              ) -> ApiKeyList:
    """Your keys; with admin+ in an org, all of its keys (those of removed or deleted members
    included, so they can be revoked). Revoked keys stay listed."""
    return ApiKeyList(items=[_out(k) for k in identity.list_api_keys(db, principal, org_id)])


@router.post("", response_model=ApiKeyCreated, status_code=201,
             openapi_extra=access("org:member"))
def create_key(body: ApiKeyCreate, principal: PrincipalDep, db: SessionDep,
               settings: SettingsDep) -> ApiKeyCreated:
    """Create a key (member+ in the org); ``key`` is shown in this response only."""
    key, secret = identity.create_api_key(
        db, principal, org_id=body.org_id, name=body.name, expires_at=body.expires_at,
        allowed_models=body.allowed_models, rpm_limit=body.rpm_limit, tpm_limit=body.tpm_limit,
        monthly_budget_eur=body.monthly_budget_eur, now=utcnow(),
        checksum_secret=settings.resolved_key_checksum_secret(),
    )
    return ApiKeyCreated(**_out(key).model_dump(), key=secret)


@router.get("/{id}", response_model=ApiKeyOut, openapi_extra=access("org:member"))
def get_key(id: uuid.UUID, principal: PrincipalDep, db: SessionDep) -> ApiKeyOut:  # noqa: A002
    """A key: its owner, or admin+ of its org."""
    return _out(identity.api_key_for(db, principal, id))


@router.post("/{id}/revoke", response_model=ApiKeyOut, openapi_extra=access("org:member"))
def revoke_key(id: uuid.UUID, principal: PrincipalDep, db: SessionDep) -> ApiKeyOut:  # noqa: A002
    """Revoke a key (its owner, or admin+ of its org). Idempotent."""
    return _out(identity.revoke_api_key(db, principal, identity.api_key_for(db, principal, id)))
