"""Password-reset links: a platform admin makes one for a user; the user opens it and sets a
new password without knowing the old one (the system this project re-creates had them).

The link carries a signed token, not a stored one: HMAC-SHA256 (a key derived from the JWT
secret for this purpose only) over the user id, the expiry and the user's current password
hash. So it is single-use without a table: setting a password changes the hash and every earlier
link dies with it; it expires after ``RESET_TTL``; and it names nothing a reader could use
elsewhere. The token travels in the URL's fragment (``/reset#<token>``), which browsers never
send to a server (no access log, no ``Referer`` holds it). Using it revokes every session of the
user, as an admin's password change does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, StringConstraints
from sqlalchemy.orm import Session

from control_api.deps import AdminDep, PasswordsDep, SessionDep, access
from control_api.errors import BadRequest
from control_api.schemas.identity import Password
from control_api.services import identity
from core.db import utcnow
from core.models import User

RESET_TTL = timedelta(hours=24)

admin_router = APIRouter(prefix="/api/users", tags=["users"])
public_router = APIRouter(prefix="/api/auth", tags=["auth"])


class ResetLink(BaseModel):
    url: str
    expires_at: datetime


class PasswordReset(BaseModel):
    token: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    new_password: Password


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(jwt_secret: str) -> bytes:
    return hmac.new(jwt_secret.encode(), b"inventiv password reset v1", hashlib.sha256).digest()


def make_token(jwt_secret: str, user: User, expires_at: datetime) -> str:
    body = _b64(json.dumps({"u": str(user.id), "e": int(expires_at.timestamp())}).encode())
    sig = hmac.new(_key(jwt_secret), f"{body}.{user.password_hash}".encode(),
                   hashlib.sha256).digest()
    return f"{body}.{_b64(sig)}"


class InvalidResetToken(BadRequest):
    code = "invalid_reset_token"


def check_token(jwt_secret: str, db: Session, token: str, now: datetime) -> User:
    """The user a valid, unexpired, unused token names; one error for every failure (no hint
    whether the user exists or the link was used)."""
    bad = InvalidResetToken("this reset link is invalid, used or expired")
    try:
        body, sig = token.split(".")
        claims = json.loads(_unb64(body))
        user_id, exp = uuid.UUID(str(claims["u"])), int(claims["e"])
        given = _unb64(sig)
    except (ValueError, KeyError, TypeError):
        raise bad from None
    if exp < int(now.timestamp()):
        raise bad
    user = db.get(User, user_id)
    if user is None or not user.is_active:
        raise bad
    want = hmac.new(_key(jwt_secret), f"{body}.{user.password_hash}".encode(),
                    hashlib.sha256).digest()
    if not hmac.compare_digest(want, given):
        raise bad
    return user


@admin_router.post("/{id}/reset-link", response_model=ResetLink, status_code=201,
                   openapi_extra=access("platform_admin"))
def create_reset_link(id: uuid.UUID, request: Request, admin: AdminDep,  # noqa: A002
                      db: SessionDep) -> ResetLink:
    """A one-time password-reset link for a user (platform admin), valid 24 h; hand it over
    yourself (no mail is sent). The path is relative to the console's origin."""
    user = identity.visible_user(db, admin, id)
    expires_at = utcnow() + RESET_TTL
    token = make_token(request.app.state.settings.resolved_jwt_secret(), user, expires_at)
    identity.log_action(db, "user.reset_link", user_id=admin.user_id,
                        details={"target_user_id": str(user.id)})
    return ResetLink(url=f"/reset#{token}", expires_at=expires_at)


@public_router.post("/password-reset", status_code=204, openapi_extra=access("public"),
                    responses={400: {"description": "invalid, used or expired link"}})
def reset_password(body: PasswordReset, request: Request, db: SessionDep,
                   passwords: PasswordsDep) -> Response:
    """Set a new password with a reset link's token; every session of the user ends."""
    user = check_token(request.app.state.settings.resolved_jwt_secret(), db, body.token,
                       utcnow())
    user.password_hash = passwords.hash(body.new_password)
    user.password_changed_at = utcnow()
    revoked = identity.revoke_sessions(db, user.id)
    identity.log_action(db, "auth.password_reset", user_id=user.id,
                        details={"revoked_sessions": revoked})
    return Response(status_code=204)
