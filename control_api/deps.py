"""Typed FastAPI dependencies: database session, the calling user, the calling service."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from control_api.errors import Forbidden, NotFound, Unauthorized
from control_api.security import JwtCodec, Passwords, TokenError
from control_api.settings import Settings
from core.db import utcnow
from core.keys import (
    SCOPE_INGRESS,
    SCOPE_NODE_PROVIDER,
    SCOPE_RECONCILER,
    SERVICE_SCOPES,
    sha256_hex,
)
from core.models import Membership, Role, ServiceToken, User, UserSession


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_db(request: Request) -> Iterator[Session]:
    """One session per request: committed when the handler returns, rolled back on error."""
    session: Session = request.app.state.sessionmaker()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_now(request: Request) -> datetime:
    """Now: ``app.state.clock()`` when a test or a simulation set one, else the UTC time."""
    clock: Callable[[], datetime] | None = getattr(request.app.state, "clock", None)
    return clock() if clock is not None else utcnow()


NowDep = Annotated[datetime, Depends(get_now)]
# scope="function": commit before the response is sent, so a 2xx means the write is durable.
SessionDep = Annotated[Session, Depends(get_db, scope="function")]


def get_jwt(request: Request) -> JwtCodec:
    return request.app.state.jwt  # type: ignore[no-any-return]


def get_passwords(request: Request) -> Passwords:
    return request.app.state.passwords  # type: ignore[no-any-return]


JwtDep = Annotated[JwtCodec, Depends(get_jwt)]
PasswordsDep = Annotated[Passwords, Depends(get_passwords)]


@dataclass
class Principal:
    """An authenticated user with their roles per org."""

    user: User
    session_id: uuid.UUID
    roles: dict[uuid.UUID, Role] = field(default_factory=dict)

    @property
    def user_id(self) -> uuid.UUID:
        return self.user.id

    @property
    def is_platform_admin(self) -> bool:
        return bool(self.user.is_platform_admin)

    def role_in(self, org_id: uuid.UUID) -> Role | None:
        return self.roles.get(org_id)

    def can_see_org(self, org_id: uuid.UUID | None) -> bool:
        return self.is_platform_admin or (org_id is not None and org_id in self.roles)

    def require_org_visible(self, org_id: uuid.UUID | None, what: str = "resource") -> None:
        """Objects of an org the caller is not in are reported as not found (no existence leak)."""
        if not self.can_see_org(org_id):
            raise NotFound(f"{what} not found")

    def require_role(self, org_id: uuid.UUID, minimum: Role) -> None:
        """403 unless the caller holds ``minimum`` or higher in ``org_id`` (or platform admin)."""
        if self.is_platform_admin:
            return
        role = self.roles.get(org_id)
        if role is None or role.rank < minimum.rank:
            raise Forbidden(f"requires role {minimum.value} or higher in this organisation")

    def require_platform_admin(self) -> None:
        if not self.is_platform_admin:
            raise Forbidden("requires platform admin")


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return None


# Methods that change nothing: no CSRF check.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "x-csrf-token"
CSRF_COOKIE = "inventiv_csrf"
JSON_TYPES = ("application/json",)


def _same_origin(request: Request) -> bool:
    """The browser says the request comes from this site: ``Origin`` names our host, or (no
    Origin) ``Sec-Fetch-Site`` is ``same-origin``/``none``."""
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    if origin is not None:
        _, _, netloc = origin.partition("://")
        return bool(host) and netloc.rstrip("/").lower() == host.lower()
    return request.headers.get("sec-fetch-site", "").lower() in ("same-origin", "none")


def check_csrf(request: Request) -> None:
    """Cookie-authenticated state-changing requests must come from our own origin and carry a
    JSON body or the CSRF token (``X-CSRF-Token`` equal to the ``inventiv_csrf`` cookie set at
    login): a foreign page can send neither without a CORS preflight the API never grants.
    Bearer-token requests are not affected (a foreign page cannot set that header)."""
    if request.method.upper() in SAFE_METHODS:
        return
    if not _same_origin(request):
        raise Forbidden("cross-site request refused (Origin / Sec-Fetch-Site does not match)",
                        code="csrf_failed")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    token = request.headers.get(CSRF_HEADER)
    cookie = request.cookies.get(CSRF_COOKIE)
    import hmac

    if ctype in JSON_TYPES or (token and cookie and hmac.compare_digest(token, cookie)):
        return
    raise Forbidden("a cookie-authenticated request needs a JSON body or the X-CSRF-Token "
                    "header", code="csrf_failed")


def get_principal(request: Request, db: SessionDep, jwt_codec: JwtDep,
                  settings: SettingsDep) -> Principal:
    bearer = _bearer(request)
    token = bearer or request.cookies.get(settings.cookie_name)
    if token and bearer is None:
        check_csrf(request)
    if not token:
        raise Unauthorized("authentication required",
                           headers={"WWW-Authenticate": "Bearer"})
    try:
        claims = jwt_codec.decode(token)
    except TokenError:
        raise Unauthorized("invalid or expired token",
                           headers={"WWW-Authenticate": "Bearer"}) from None
    sess = db.get(UserSession, claims.session_id)
    now = utcnow()
    if (sess is None or sess.user_id != claims.user_id or sess.revoked_at is not None
            or sess.expires_at <= now):
        raise Unauthorized("session revoked or expired", headers={"WWW-Authenticate": "Bearer"})
    user = db.get(User, claims.user_id)
    if user is None or not user.is_active:
        raise Unauthorized("account disabled", headers={"WWW-Authenticate": "Bearer"})
    roles = {m.org_id: m.role for m in db.scalars(
        select(Membership).where(Membership.user_id == user.id))}
    return Principal(user=user, session_id=sess.id, roles=roles)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_admin(principal: PrincipalDep) -> Principal:
    principal.require_platform_admin()
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]


@dataclass(frozen=True)
class ServicePrincipal:
    """A data-plane component authenticated by a service token, with its scopes."""

    name: str
    component: str
    token_id: uuid.UUID | None
    scopes: frozenset[str] = frozenset(SERVICE_SCOPES)

    def require_scope(self, *allowed: str) -> None:
        """403 ``insufficient_scope`` unless the token holds one of ``allowed``."""
        if not self.scopes & set(allowed):
            raise Forbidden(f"this service token may not call this route (needs scope "
                            f"{' or '.join(allowed)})", code="insufficient_scope")


def get_service(request: Request, db: SessionDep, settings: SettingsDep) -> ServicePrincipal:
    token = _bearer(request)
    if not token:
        raise Unauthorized("service token required", headers={"WWW-Authenticate": "Bearer"})
    if settings.service_token is not None:
        import hmac

        if hmac.compare_digest(token, settings.service_token.get_secret_value()):
            # The bootstrap token runs the laptop's whole data plane: every scope.
            return ServicePrincipal(name="bootstrap", component="bootstrap", token_id=None)
    row = db.scalar(select(ServiceToken).where(ServiceToken.token_hash == sha256_hex(token)))
    if row is None or row.revoked_at is not None:
        raise Unauthorized("invalid service token", headers={"WWW-Authenticate": "Bearer"})
    db.execute(update(ServiceToken).where(ServiceToken.id == row.id)
               .values(last_used_at=utcnow()))
    return ServicePrincipal(name=row.name, component=row.component, token_id=row.id,
                            scopes=frozenset(row.scopes or ()))


ServiceDep = Annotated[ServicePrincipal, Depends(get_service)]


def service_with(*scopes: str) -> Callable[[ServicePrincipal], ServicePrincipal]:
    """A dependency: the calling service, which must hold one of ``scopes``."""
    for scope in scopes:
        if scope not in SERVICE_SCOPES:
            raise ValueError(f"unknown service scope {scope!r}")

    def dep(service: ServiceDep) -> ServicePrincipal:
        service.require_scope(*scopes)
        return service

    return dep


NodeProviderDep = Annotated[ServicePrincipal,
                            Depends(service_with(SCOPE_NODE_PROVIDER, SCOPE_RECONCILER))]
IngressDep = Annotated[ServicePrincipal, Depends(service_with(SCOPE_INGRESS))]


# Access levels every route declares with ``openapi_extra=access(LEVEL)``. The RBAC matrix test
# reads them from the app's routes, so a new route is covered (and must declare one).
ACCESS_LEVELS = (
    "public",          # no authentication
    "user",            # any authenticated user; results filtered to the caller's orgs
    "org:viewer",      # at least this role in the org that owns the object / named in the request
    "org:member",
    "org:admin",
    "org:owner",
    "platform_admin",  # the platform-admin flag
    "service",         # a data-plane service token (internal endpoints)
)


def access(level: str) -> dict[str, str]:
    """``openapi_extra`` marking a route's access level (see ``ACCESS_LEVELS``)."""
    if level not in ACCESS_LEVELS:
        raise ValueError(f"unknown access level {level!r}")
    return {"x-access": level}
