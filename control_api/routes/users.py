"""Routes under /api/users."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response
from sqlalchemy import select

from control_api.deps import AdminDep, PasswordsDep, PrincipalDep, SessionDep, access
from control_api.schemas.identity import UserCreate, UserList, UserOut, UserUpdate
from control_api.services import identity
from core.models import User

router = APIRouter(prefix="/api/users", tags=["users"])


def _out(user: User) -> UserOut:
    return UserOut.model_validate(user, from_attributes=True)


@router.get("", response_model=UserList, openapi_extra=access("user"))
def list_users(principal: PrincipalDep, db: SessionDep) -> UserList:
    """Platform admins see every user; others only themselves."""
    if principal.is_platform_admin:
        users = list(db.scalars(select(User).order_by(User.username)))
    else:
        users = [principal.user]
    return UserList(items=[_out(u) for u in users])


@router.post("", response_model=UserOut, status_code=201, openapi_extra=access("platform_admin"))
def create_user(body: UserCreate, admin: AdminDep, db: SessionDep,
                passwords: PasswordsDep) -> UserOut:
    """Create a user (platform admin)."""
    return _out(identity.create_user(db, passwords, admin, username=body.username,
                                     email=body.email, password=body.password,
                                     is_platform_admin=body.is_platform_admin))


@router.get("/{id}", response_model=UserOut, openapi_extra=access("user"))
def get_user(id: uuid.UUID, principal: PrincipalDep, db: SessionDep) -> UserOut:  # noqa: A002
    """A user: yourself, or anyone for a platform admin (404 otherwise)."""
    return _out(identity.visible_user(db, principal, id))


@router.patch("/{id}", response_model=UserOut, openapi_extra=access("user"))
def update_user(id: uuid.UUID, body: UserUpdate, principal: PrincipalDep,  # noqa: A002
                db: SessionDep, passwords: PasswordsDep) -> UserOut:
    """Self may change their email; is_active, password and is_platform_admin: platform admin."""
    user = identity.visible_user(db, principal, id)
    return _out(identity.update_user(db, passwords, principal, user,
                                     body.model_dump(exclude_unset=True)))


@router.delete("/{id}", status_code=204, openapi_extra=access("platform_admin"))
def delete_user(id: uuid.UUID, admin: AdminDep, db: SessionDep) -> Response:  # noqa: A002
    """Delete a user (platform admin)."""
    identity.delete_user(db, admin, identity.visible_user(db, admin, id))
    return Response(status_code=204)
