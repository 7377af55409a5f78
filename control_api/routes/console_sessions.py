"""Routes under /api/sessions: the caller's own sign-in sessions (list, revoke).

The console's profile page lists where the user is signed in and signs one out; a session is
the row the JWT names (``sid``), so revoking it ends that token at once, as logout does.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter, Response
from pydantic import BaseModel
from sqlalchemy import select, update

from control_api.deps import PrincipalDep, SessionDep, access
from control_api.errors import NotFound
from control_api.services.identity import log_action
from core.db import utcnow
from core.models import UserSession

router = APIRouter(prefix="/api/sessions", tags=["auth"])


class SessionOut(BaseModel):
    id: uuid.UUID
    created_at: datetime
    expires_at: datetime
    ip: str | None
    user_agent: str | None
    current: bool


class SessionList(BaseModel):
    items: list[SessionOut]


@router.get("", response_model=SessionList, openapi_extra=access("user"))
def list_sessions(principal: PrincipalDep, db: SessionDep) -> SessionList:
    """Your live sessions (not revoked, not expired), newest first; ``current``: this one."""
    now = utcnow()
    rows = db.scalars(select(UserSession).where(
        UserSession.user_id == principal.user_id, UserSession.revoked_at.is_(None),
        UserSession.expires_at > now).order_by(UserSession.created_at.desc()).limit(200))
    return SessionList(items=[
        SessionOut(id=s.id, created_at=s.created_at, expires_at=s.expires_at, ip=s.ip,
                   user_agent=s.user_agent, current=s.id == principal.session_id)
        for s in rows])


@router.delete("/{id}", status_code=204, openapi_extra=access("user"))
def revoke_session(id: uuid.UUID, principal: PrincipalDep, db: SessionDep) -> Response:  # noqa: A002
    """Sign one of your sessions out (404: not yours, or already ended). Revoking the current
    one is a logout."""
    done = db.execute(update(UserSession).where(
        UserSession.id == id, UserSession.user_id == principal.user_id,
        UserSession.revoked_at.is_(None)).values(revoked_at=utcnow()))
    if not done.rowcount:  # type: ignore[attr-defined]
        raise NotFound("session not found")
    log_action(db, "auth.session_revoke", user_id=principal.user_id,
               details={"session_id": str(id), "current": id == principal.session_id})
    return Response(status_code=204)
