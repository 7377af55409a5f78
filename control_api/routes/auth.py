"""Routes under /api/auth: login (public), logout, me, password change."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from control_api.deps import (
    CSRF_COOKIE,
    JwtDep,
    PasswordsDep,
    PrincipalDep,
    SessionDep,
    SettingsDep,
    access,
)
from control_api.schemas.identity import (
    InvitationList,
    InvitationOut,
    LoginRequest,
    LoginResponse,
    MembershipOut,
    MeResponse,
    PasswordChange,
    UserBrief,
)
from control_api.services import identity
from control_api.settings import Settings
from control_api.throttle import Clock, LoginThrottle, client_ip, get_clock

router = APIRouter(prefix="/api/auth", tags=["auth"])

ClockDep = Annotated[Clock, Depends(get_clock)]


def _set_session_cookie(response: Response, settings: Settings, token: str,
                        expires_at: datetime) -> None:
    # __Host- rules when secure: Secure, Path=/, no Domain. HttpOnly and SameSite=Lax always.
    response.set_cookie(
        settings.cookie_name, token, max_age=settings.jwt_ttl_seconds, expires=expires_at,
        path="/", domain=None, secure=settings.cookie_secure, httponly=True, samesite="lax",
    )
    # Double-submit CSRF token: readable by our own pages (not HttpOnly), which echo it in
    # X-CSRF-Token on cookie-authenticated requests without a JSON body.
    response.set_cookie(
        CSRF_COOKIE, secrets.token_urlsafe(24), max_age=settings.jwt_ttl_seconds,
        expires=expires_at, path="/", domain=None, secure=settings.cookie_secure,
        httponly=False, samesite="strict",
    )


@router.post("/login", response_model=LoginResponse, openapi_extra=access("public"),
             responses={401: {"description": "bad credentials"},
                        429: {"description": "throttled; see Retry-After"}})
def login(body: LoginRequest, request: Request, response: Response, db: SessionDep,
          settings: SettingsDep, passwords: PasswordsDep, jwt_codec: JwtDep,
          clock: ClockDep) -> LoginResponse:
    """Log in with a username or email; returns a bearer token and sets the session cookie."""
    result = identity.login(
        db, passwords=passwords, jwt_codec=jwt_codec,
        throttle=LoginThrottle.from_settings(settings, clock),
        ttl_seconds=settings.jwt_ttl_seconds, identifier=body.username, password=body.password,
        ip=client_ip(request), user_agent=request.headers.get("user-agent"),
    )
    _set_session_cookie(response, settings, result.token, result.expires_at)
    return LoginResponse(access_token=result.token, expires_at=result.expires_at,
                         user=UserBrief.model_validate(result.user, from_attributes=True))


@router.post("/logout", status_code=204, openapi_extra=access("user"))
def logout(principal: PrincipalDep, db: SessionDep, settings: SettingsDep) -> Response:
    """Revoke the current session and clear the cookie."""
    identity.logout(db, principal)
    response = Response(status_code=204)
    response.delete_cookie(settings.cookie_name, path="/", domain=None,
                           secure=settings.cookie_secure, httponly=True, samesite="lax")
    response.delete_cookie(CSRF_COOKIE, path="/", domain=None, secure=settings.cookie_secure,
                           httponly=False, samesite="strict")
    return response


@router.get("/me", response_model=MeResponse, openapi_extra=access("user"))
def me(principal: PrincipalDep, db: SessionDep) -> MeResponse:
    """The caller and their memberships."""
    user = principal.user
    return MeResponse(
        id=user.id, username=user.username, email=user.email,
        is_platform_admin=user.is_platform_admin,
        memberships=[MembershipOut(org_id=org.id, org_name=org.name, role=m.role)
                     for m, org in identity.memberships_of(db, user.id)],
    )


@router.post("/password", status_code=204, openapi_extra=access("user"))
def change_password(body: PasswordChange, principal: PrincipalDep, db: SessionDep,
                    passwords: PasswordsDep) -> Response:
    """Change the caller's password; their other sessions are revoked."""
    identity.change_password(db, passwords, principal, current=body.current_password,
                             new=body.new_password)
    return Response(status_code=204)


@router.get("/invitations", response_model=InvitationList, openapi_extra=access("user"))
def list_invitations(principal: PrincipalDep, db: SessionDep) -> InvitationList:
    """Your pending invitations into organisations."""
    return InvitationList(items=[
        InvitationOut(id=inv.id, org_id=org.id, org_name=org.name, role=inv.role,
                      created_at=inv.created_at)
        for inv, org in identity.invitations_of(db, principal.user_id)])


@router.post("/invitations/{id}/accept", response_model=MembershipOut,
             openapi_extra=access("user"))
def accept_invitation(id: uuid.UUID, principal: PrincipalDep,  # noqa: A002
                      db: SessionDep) -> MembershipOut:
    """Accept an invitation: you join its organisation with its role (404: not yours)."""
    m, org = identity.accept_invitation(db, principal, id)
    return MembershipOut(org_id=org.id, org_name=org.name, role=m.role)


@router.post("/invitations/{id}/decline", status_code=204, openapi_extra=access("user"))
def decline_invitation(id: uuid.UUID, principal: PrincipalDep,  # noqa: A002
                       db: SessionDep) -> Response:
    """Decline an invitation (404: not yours)."""
    identity.decline_invitation(db, principal, id)
    return Response(status_code=204)
