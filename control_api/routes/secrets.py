"""Routes under /api/secrets: stored secrets (platform admin). Values are write-only: ``PUT``
takes one, no route here returns one (the replicas fetch theirs through
``/api/internal/deployments/{name}/secrets``)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response

from control_api.deps import AdminDep, SessionDep, SettingsDep, access
from control_api.schemas.secrets import SecretList, SecretOut, SecretSet
from control_api.services import secrets as service
from core.models_secrets import StoredSecret

router = APIRouter(prefix="/api/secrets", tags=["secrets"])


def _out(row: StoredSecret, names: dict[uuid.UUID, str], used_by: list[str]) -> SecretOut:
    return SecretOut(name=row.name, description=row.description, created_at=row.created_at,
                     updated_at=row.updated_at,
                     created_by=names.get(row.created_by) if row.created_by else None,
                     updated_by=names.get(row.updated_by) if row.updated_by else None,
                     used_by=used_by)


@router.get("", response_model=SecretList, openapi_extra=access("platform_admin"))
def list_secrets(admin: AdminDep, db: SessionDep) -> SecretList:
    """Every stored secret's metadata, by name (never a value)."""
    rows = service.list_secrets(db)
    names = service.usernames(db, rows)
    users = service.secret_users(db)
    return SecretList(items=[_out(r, names, users.get(r.name, [])) for r in rows])


@router.get("/{name}", response_model=SecretOut, openapi_extra=access("platform_admin"))
def get_secret(name: str, admin: AdminDep, db: SessionDep) -> SecretOut:
    """One secret's metadata and the deployments referencing it (never its value)."""
    row = service.get_secret(db, name)
    return _out(row, service.usernames(db, [row]), service.deployments_using(db, name))


@router.put("/{name}", response_model=SecretOut, openapi_extra=access("platform_admin"))
def put_secret(name: str, body: SecretSet, admin: AdminDep, db: SessionDep,
               settings: SettingsDep, response: Response) -> SecretOut:
    """Set or replace a secret's value (201 when created). Replicas already running keep the
    value they fetched until they restart."""
    row, created = service.set_secret(db, service.box_for(settings), admin, name=name,
                                      value=body.value.get_secret_value(),
                                      description=body.description)
    if created:
        response.status_code = 201
    return _out(row, service.usernames(db, [row]), service.deployments_using(db, name))


@router.delete("/{name}", status_code=204, openapi_extra=access("platform_admin"))
def delete_secret(name: str, admin: AdminDep, db: SessionDep) -> Response:
    """Delete a secret; 409 ``secret_in_use`` (naming them) while stored deployments
    reference it."""
    service.delete_secret(db, admin, name)
    return Response(status_code=204)
