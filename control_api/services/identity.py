"""Identity logic: logins and sessions, users, orgs and memberships, API keys, service tokens.

Route handlers stay thin and call these functions. Security events are written to the action log
(never a password or a secret). Functions that must keep a record although the request fails
(failed logins) commit before raising, because the request's session rolls back on error.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, delete, false, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from control_api.deps import Principal
from control_api.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthorized,
    Unprocessable,
)
from control_api.security import JwtCodec, Passwords
from control_api.throttle import LoginThrottle
from core.db import utcnow
from core.keys import SERVICE_SCOPES, generate_api_key, generate_service_token
from core.models import (
    ActionLog,
    ApiKey,
    Membership,
    Org,
    OrgInvitation,
    Role,
    ServiceToken,
    User,
    UserSession,
)

COMPONENT = "control_api"


def log_action(db: Session, type_: str, *, status: str = "success",
               user_id: uuid.UUID | None = None, org_id: uuid.UUID | None = None,
               error_code: str | None = None, error_message: str | None = None,
               details: dict[str, Any] | None = None) -> None:
    """Append a security/audit event. ``details`` must never hold a secret."""
    db.add(ActionLog(type=type_, component=COMPONENT, status=status, user_id=user_id,
                     org_id=org_id, error_code=error_code, error_message=error_message,
                     details=details))


# ---------------------------------------------------------------- login and sessions


@dataclass(frozen=True)
class LoginResult:
    token: str
    expires_at: datetime
    user: User
    session_id: uuid.UUID


def find_user_for_login(db: Session, identifier: str) -> User | None:
    """A user by email (when the identifier has an "@") or by username, case-insensitively."""
    ident = identifier.strip().lower()
    if "@" in ident:
        return db.scalar(select(User).where(func.lower(User.email) == ident))
    return db.scalar(select(User).where(func.lower(User.username) == ident))


def login(db: Session, *, passwords: Passwords, jwt_codec: JwtCodec, throttle: LoginThrottle,
          ttl_seconds: int, identifier: str, password: str, ip: str,
          user_agent: str | None) -> LoginResult:
    """Check throttling and credentials, open a session, and return its JWT.

    Unknown accounts still cost one argon2 verification (``Passwords.verify`` uses a dummy
    hash), so response time does not tell whether an account exists.
    """
    user = find_user_for_login(db, identifier)
    # One throttle key per account however it is named (username or email).
    account = (user.username.lower() if user else identifier.strip().lower())[:254]
    audit = {"username": identifier.strip()[:254], "ip": ip}
    try:
        throttle.check(db, account, ip)
    except TooManyRequests:
        # Throttled: the password is not even checked, so guessing makes no progress.
        log_action(db, "auth.login", status="failure", user_id=user.id if user else None,
                   error_code="throttled", details=audit)
        db.commit()
        raise
    ok = passwords.verify(user.password_hash if user else None, password)
    if not ok or user is None or not user.is_active:
        throttle.record_failure(db, account, ip)
        reason = "bad_credentials" if not ok or user is None else "inactive"
        log_action(db, "auth.login", status="failure", user_id=user.id if user else None,
                   error_code=reason, details=audit)
        db.commit()  # keep the failure although the request fails
        raise Unauthorized("invalid username or password")
    if passwords.needs_rehash(user.password_hash):
        # Parameters changed since this hash was made: upgrade it while we hold the password.
        user.password_hash = passwords.hash(password)
    throttle.clear_account(db, account, ip)
    now = utcnow()
    sess = UserSession(user_id=user.id, created_at=now,
                       expires_at=now + timedelta(seconds=ttl_seconds), ip=ip[:64],
                       user_agent=(user_agent or "")[:300] or None)
    db.add(sess)
    db.flush()
    token, exp = jwt_codec.encode(user.id, sess.id, timedelta(seconds=ttl_seconds), now=now)
    log_action(db, "auth.login", user_id=user.id, details=audit)
    return LoginResult(token=token, expires_at=exp, user=user, session_id=sess.id)


def logout(db: Session, principal: Principal) -> None:
    """Revoke the caller's current session."""
    db.execute(update(UserSession).where(UserSession.id == principal.session_id,
                                         UserSession.revoked_at.is_(None))
               .values(revoked_at=utcnow()))
    log_action(db, "auth.logout", user_id=principal.user_id)


def revoke_sessions(db: Session, user_id: uuid.UUID, *, keep: uuid.UUID | None = None) -> int:
    """Revoke every live session of ``user_id`` except ``keep``; returns how many."""
    stmt = update(UserSession).where(UserSession.user_id == user_id,
                                     UserSession.revoked_at.is_(None))
    if keep is not None:
        stmt = stmt.where(UserSession.id != keep)
    return db.execute(stmt.values(revoked_at=utcnow())).rowcount or 0  # type: ignore[attr-defined]


def change_password(db: Session, passwords: Passwords, principal: Principal, *, current: str,
                    new: str) -> None:
    """Change the caller's own password; their other sessions are revoked."""
    user = principal.user
    if not passwords.verify(user.password_hash, current):
        log_action(db, "auth.password_change", status="failure", user_id=user.id,
                   error_code="bad_current_password")
        db.commit()
        # 400, not 401: the token is fine, and a CLI must not take this for an expired login.
        raise BadRequest("current password is incorrect", code="invalid_password")
    user.password_hash = passwords.hash(new)
    user.password_changed_at = utcnow()
    revoked = revoke_sessions(db, user.id, keep=principal.session_id)
    log_action(db, "auth.password_change", user_id=user.id,
               details={"revoked_sessions": revoked})


def memberships_of(db: Session, user_id: uuid.UUID) -> list[tuple[Membership, Org]]:
    """The user's memberships with their orgs, by org name."""
    return list(db.execute(
        select(Membership, Org).join(Org, Org.id == Membership.org_id)
        .where(Membership.user_id == user_id).order_by(Org.name)).tuples())


# ---------------------------------------------------------------- users


def _platform_admins_left(db: Session, excluding: uuid.UUID) -> int:
    return db.scalar(select(func.count()).select_from(User).where(
        User.is_platform_admin.is_(True), User.is_active.is_(True), User.id != excluding)) or 0


def _check_unique_user(db: Session, *, username: str | None, email: str | None,
                       excluding: uuid.UUID | None = None) -> None:
    conds = []
    if username is not None:
        conds.append(func.lower(User.username) == username.lower())
    if email is not None:
        conds.append(func.lower(User.email) == email.lower())
    if not conds:
        return
    stmt = select(User.id).where(or_(*conds))
    if excluding is not None:
        stmt = stmt.where(User.id != excluding)
    if db.scalar(stmt.limit(1)) is not None:
        raise Conflict("a user with this username or email already exists")


def create_user(db: Session, passwords: Passwords, actor: Principal, *, username: str,
                email: str, password: str, is_platform_admin: bool) -> User:
    """Create a user (platform admins only; enforced by the route)."""
    _check_unique_user(db, username=username, email=email)
    user = User(username=username, email=email, password_hash=passwords.hash(password),
                is_platform_admin=is_platform_admin, is_active=True)
    db.add(user)
    try:
        db.flush()
    except IntegrityError:
        raise Conflict("a user with this username or email already exists") from None
    log_action(db, "user.create", user_id=actor.user_id,
               details={"target_user_id": str(user.id), "username": username,
                        "is_platform_admin": is_platform_admin})
    return user


def visible_user(db: Session, principal: Principal, user_id: uuid.UUID) -> User:
    """The user if the caller is them or a platform admin; 404 otherwise (no existence leak)."""
    user = db.get(User, user_id)
    if user is None or not (principal.is_platform_admin or user.id == principal.user_id):
        raise NotFound("user not found")
    return user


def update_user(db: Session, passwords: Passwords, actor: Principal, user: User,
                changes: dict[str, Any]) -> User:
    """Apply a PATCH. Self may change ``email``; anything else needs a platform admin."""
    admin_only = {"is_active", "password", "is_platform_admin"} & changes.keys()
    if admin_only and not actor.is_platform_admin:
        raise Forbidden(f"only a platform admin may change {', '.join(sorted(admin_only))}")
    losing_admin = (changes.get("is_platform_admin") is False
                    or changes.get("is_active") is False) and user.is_platform_admin
    if losing_admin and _platform_admins_left(db, user.id) == 0:
        raise Conflict("the last active platform admin cannot be demoted or deactivated")
    if "email" in changes:
        if changes["email"] is None:
            raise Unprocessable("email: may not be null")
        _check_unique_user(db, username=None, email=changes["email"], excluding=user.id)
        user.email = changes["email"]
    for flag in ("is_active", "is_platform_admin"):
        if flag in changes:
            if changes[flag] is None:
                raise Unprocessable(f"{flag}: may not be null")
            setattr(user, flag, changes[flag])
    if changes.get("password") is not None:
        user.password_hash = passwords.hash(changes["password"])
        user.password_changed_at = utcnow()
        revoke_sessions(db, user.id)  # an admin reset logs the user out everywhere
    elif "password" in changes:
        raise Unprocessable("password: may not be null")
    if changes.get("is_active") is False:
        revoke_sessions(db, user.id)
    try:
        db.flush()
    except IntegrityError:
        raise Conflict("a user with this email already exists") from None
    log_action(db, "user.update", user_id=actor.user_id,
               details={"target_user_id": str(user.id), "fields": sorted(changes)})
    return user


def delete_user(db: Session, actor: Principal, user: User) -> None:
    """Delete a user; refused for the last platform admin and for an org's only owner.

    Their API keys are revoked with them (the rows stay, owner null, for the org's records),
    so a deleted user's key can never verify again."""
    if user.is_platform_admin and _platform_admins_left(db, user.id) == 0:
        raise Conflict("the last active platform admin cannot be deleted")
    for m in db.scalars(select(Membership).where(Membership.user_id == user.id,
                                                 Membership.role == Role.OWNER)):
        if _owners(db, m.org_id) <= 1:
            raise Conflict("user is the only owner of an organisation; transfer ownership first")
    revoked = db.execute(update(ApiKey).where(ApiKey.user_id == user.id,
                                              ApiKey.revoked_at.is_(None))
                         .values(revoked_at=utcnow())).rowcount or 0  # type: ignore[attr-defined]
    log_action(db, "user.delete", user_id=actor.user_id,
               details={"target_user_id": str(user.id), "username": user.username,
                        "revoked_api_keys": revoked})
    db.delete(user)
    db.flush()


# ---------------------------------------------------------------- orgs and memberships


def _owners(db: Session, org_id: uuid.UUID) -> int:
    return db.scalar(select(func.count()).select_from(Membership).where(
        Membership.org_id == org_id, Membership.role == Role.OWNER)) or 0


def visible_org(db: Session, principal: Principal, org_id: uuid.UUID) -> Org:
    """The org if the caller is a member or platform admin; 404 otherwise."""
    org = db.get(Org, org_id)
    if org is None:
        raise NotFound("organisation not found")
    principal.require_org_visible(org.id, "organisation")
    return org


def list_orgs(db: Session, principal: Principal) -> list[Org]:
    """The caller's orgs; every org for a platform admin."""
    stmt = select(Org).order_by(Org.name)
    if not principal.is_platform_admin:
        stmt = stmt.where(Org.id.in_(list(principal.roles)))
    return list(db.scalars(stmt))


def create_org(db: Session, actor: Principal, *, name: str, display_name: str | None,
               owner_username: str | None) -> Org:
    """Create an org; ``owner_username`` (if given) becomes its first owner."""
    if db.scalar(select(Org.id).where(Org.name == name)) is not None:
        raise Conflict("an organisation with this name already exists")
    owner = None
    if owner_username is not None:
        owner = db.scalar(select(User).where(func.lower(User.username) == owner_username.lower()))
        if owner is None:
            raise Unprocessable("owner_username: no such user", code="unknown_user")
    org = Org(name=name, display_name=display_name)
    db.add(org)
    try:
        db.flush()
    except IntegrityError:
        raise Conflict("an organisation with this name already exists") from None
    if owner is not None:
        db.add(Membership(user_id=owner.id, org_id=org.id, role=Role.OWNER))
    log_action(db, "org.create", user_id=actor.user_id, org_id=org.id,
               details={"name": name, "owner": owner.username if owner else None})
    db.flush()
    return org


def update_org(db: Session, actor: Principal, org: Org, changes: dict[str, Any]) -> Org:
    """Apply a PATCH (display name); the route checks admin+."""
    if "display_name" in changes:
        org.display_name = changes["display_name"]
    log_action(db, "org.update", user_id=actor.user_id, org_id=org.id,
               details={"fields": sorted(changes)})
    db.flush()
    return org


def delete_org(db: Session, actor: Principal, org: Org) -> None:
    """Delete an org with its memberships and API keys (cascade)."""
    log_action(db, "org.delete", user_id=actor.user_id, org_id=org.id,
               details={"name": org.name})
    db.delete(org)
    db.flush()


def list_members(db: Session, org_id: uuid.UUID) -> list[tuple[Membership, User]]:
    """Members of an org with their users, by username."""
    return list(db.execute(
        select(Membership, User).join(User, User.id == Membership.user_id)
        .where(Membership.org_id == org_id).order_by(User.username)).tuples())


def _require_owner_change_allowed(actor: Principal, org_id: uuid.UUID, *roles: Role) -> None:
    # Granting or taking away ``owner`` is for owners (and platform admins) only.
    if Role.OWNER in roles:
        actor.require_role(org_id, Role.OWNER)


def _user_by_ref(db: Session, user_id: uuid.UUID | None, username: str | None) -> User | None:
    if user_id is not None:
        return db.get(User, user_id)
    if username is not None:
        return db.scalar(select(User).where(func.lower(User.username) == username.lower()))
    raise Unprocessable("give exactly one of username or user_id")


def add_member(db: Session, actor: Principal, org: Org, *, user_id: uuid.UUID | None,
               username: str | None, role: Role) -> tuple[Membership, User]:
    """Add a user directly (platform admins only: they see every user anyway)."""
    actor.require_platform_admin()
    user = _user_by_ref(db, user_id, username)
    if user is None:
        raise NotFound("user not found")
    if db.scalar(select(Membership.id).where(Membership.org_id == org.id,
                                             Membership.user_id == user.id)) is not None:
        raise Conflict("user is already a member of this organisation")
    m = Membership(user_id=user.id, org_id=org.id, role=role)
    db.add(m)
    try:
        db.flush()
    except IntegrityError:
        raise Conflict("user is already a member of this organisation") from None
    db.execute(delete(OrgInvitation).where(OrgInvitation.org_id == org.id,
                                           OrgInvitation.user_id == user.id))
    log_action(db, "member.add", user_id=actor.user_id, org_id=org.id,
               details={"target_user_id": str(user.id), "role": role.value})
    return m, user


def invite_member(db: Session, actor: Principal, org: Org, *, user_id: uuid.UUID | None,
                  username: str | None, role: Role) -> None:
    """Invite a user (admin+; owner to invite as owner). The membership exists only once they
    accept. The answer is the same whether or not the user exists or is already a member, so
    it cannot be used to enumerate usernames; the invitee's email is shown only after they
    join."""
    actor.require_role(org.id, Role.ADMIN)
    _require_owner_change_allowed(actor, org.id, role)
    user = _user_by_ref(db, user_id, username)
    # The org's members read its action log: it records the request as made, never whether
    # the user exists (``member.add`` records the join once they accept).
    details: dict[str, Any] = {"role": role.value, "username": username,
                               "target_user_id": str(user_id) if user_id else None}
    invitable = user is not None and user.is_active and db.scalar(select(Membership.id).where(
        Membership.org_id == org.id, Membership.user_id == user.id)) is None
    if invitable or username is not None:
        # By username, a row is kept whatever the username names (nobody, a disabled user, a
        # member): the org's pending list then shows every request alike. Only an invitable
        # user's row carries their id; the others bind by username (see invitations_of).
        uid = user.id if invitable and user is not None else None
        name = (username or (user.username if user is not None else None))
        key = (OrgInvitation.user_id == uid if uid is not None
               else func.lower(OrgInvitation.invited_username) == (name or "").lower())
        inv = db.scalar(select(OrgInvitation).where(OrgInvitation.org_id == org.id, key))
        if inv is None:
            db.add(OrgInvitation(org_id=org.id, user_id=uid, invited_username=name, role=role,
                                 invited_by=actor.user_id))
        else:
            inv.role, inv.invited_by, inv.created_at = role, actor.user_id, utcnow()
        db.flush()
    log_action(db, "member.invite", user_id=actor.user_id, org_id=org.id, details=details)


def _addressed_to(db: Session, user_id: uuid.UUID) -> Any:
    """Invitations addressed to the user: by id, or by their username (invitations made
    before the username named them, or while they were disabled or a member)."""
    user = db.get(User, user_id)
    by_name = (and_(OrgInvitation.user_id.is_(None),
                    func.lower(OrgInvitation.invited_username) == user.username.lower())
               if user is not None and user.is_active else false())
    return or_(OrgInvitation.user_id == user_id, by_name)


def invitations_of(db: Session, user_id: uuid.UUID) -> list[tuple[OrgInvitation, Org]]:
    """The user's pending invitations with their orgs, by org name (none into an org they
    already belong to)."""
    member_of = select(Membership.org_id).where(Membership.user_id == user_id)
    return list(db.execute(
        select(OrgInvitation, Org).join(Org, Org.id == OrgInvitation.org_id)
        .where(_addressed_to(db, user_id), OrgInvitation.org_id.not_in(member_of))
        .order_by(Org.name)).tuples())


def _my_invitation(db: Session, principal: Principal, invitation_id: uuid.UUID) -> OrgInvitation:
    inv = db.scalar(select(OrgInvitation).where(OrgInvitation.id == invitation_id,
                                                _addressed_to(db, principal.user_id)))
    if inv is None:
        raise NotFound("invitation not found")
    return inv


def accept_invitation(db: Session, principal: Principal,
                      invitation_id: uuid.UUID) -> tuple[Membership, Org]:
    """The invited user joins the org with the invitation's role."""
    inv = _my_invitation(db, principal, invitation_id)
    org = db.get(Org, inv.org_id)
    assert org is not None  # the invitation cascades with its org
    m = db.scalar(select(Membership).where(Membership.org_id == inv.org_id,
                                           Membership.user_id == principal.user_id))
    if m is None:
        m = Membership(user_id=principal.user_id, org_id=inv.org_id, role=inv.role)
        db.add(m)
    db.delete(inv)
    db.flush()
    log_action(db, "member.add", user_id=principal.user_id, org_id=org.id,
               details={"target_user_id": str(principal.user_id), "role": m.role.value,
                        "via": "invitation"})
    return m, org


def decline_invitation(db: Session, principal: Principal, invitation_id: uuid.UUID) -> None:
    inv = _my_invitation(db, principal, invitation_id)
    org_id = inv.org_id
    db.delete(inv)
    db.flush()
    log_action(db, "member.decline", user_id=principal.user_id, org_id=org_id)


@dataclass(frozen=True)
class PendingInvitation:
    """An org's pending invitation as its admins see it: who is invited (username, never the
    email: that is shown only once they join), with which role, by whom, since when."""

    invitation: OrgInvitation
    username: str
    invited_by: str | None


def org_invitations(db: Session, actor: Principal, org: Org) -> list[PendingInvitation]:
    """The org's pending invitations, newest first (admin+ of the org, or platform admin)."""
    actor.require_role(org.id, Role.ADMIN)
    inviter = aliased(User)
    rows = db.execute(
        select(OrgInvitation, User.username, inviter.username)
        .outerjoin(User, User.id == OrgInvitation.user_id)
        .outerjoin(inviter, inviter.id == OrgInvitation.invited_by)
        .where(OrgInvitation.org_id == org.id)
        .order_by(OrgInvitation.created_at.desc(), OrgInvitation.id)).tuples()
    return [PendingInvitation(inv, username or inv.invited_username or "", by)
            for inv, username, by in rows]


def cancel_invitation(db: Session, actor: Principal, org: Org,
                      invitation_id: uuid.UUID) -> None:
    """Withdraw a pending invitation (admin+; owner for an invitation as owner, as to issue
    one). 404 ``invitation_not_found`` unless it is a pending invitation of this org."""
    actor.require_role(org.id, Role.ADMIN)
    inv = db.get(OrgInvitation, invitation_id)
    if inv is None or inv.org_id != org.id:
        raise NotFound("invitation not found", code="invitation_not_found")
    _require_owner_change_allowed(actor, org.id, inv.role)
    role = inv.role
    db.delete(inv)
    db.flush()
    # No invitee id: the org's viewers read this log, and the invitation list is for admins.
    log_action(db, "member.invite_cancel", user_id=actor.user_id, org_id=org.id,
               details={"invitation_id": str(invitation_id), "role": role.value})


def _membership(db: Session, org_id: uuid.UUID, user_id: uuid.UUID) -> tuple[Membership, User]:
    """Add a user (by id or username) with a role: admin+, and owner to grant owner."""
    row = db.execute(select(Membership, User).join(User, User.id == Membership.user_id)
                     .where(Membership.org_id == org_id, Membership.user_id == user_id)).first()
    if row is None:
        raise NotFound("member not found")
    return row[0], row[1]


def change_member_role(db: Session, actor: Principal, org: Org, user_id: uuid.UUID,
                       role: Role) -> tuple[Membership, User]:
    """Change a role: admin+; owner for any change to or from owner; one owner remains."""
    actor.require_role(org.id, Role.ADMIN)
    m, user = _membership(db, org.id, user_id)
    _require_owner_change_allowed(actor, org.id, role, m.role)
    if m.role == Role.OWNER and role != Role.OWNER and _owners(db, org.id) <= 1:
        raise Conflict("an organisation must keep at least one owner")
    old = m.role
    m.role = role
    db.flush()
    log_action(db, "member.update", user_id=actor.user_id, org_id=org.id,
               details={"target_user_id": str(user_id), "from": old.value, "to": role.value})
    return m, user


def remove_member(db: Session, actor: Principal, org: Org, user_id: uuid.UUID) -> None:
    """Remove a member: admin+, owner to remove an owner; the last owner stays."""
    actor.require_role(org.id, Role.ADMIN)
    m, _ = _membership(db, org.id, user_id)
    role = m.role
    _require_owner_change_allowed(actor, org.id, role)
    if role == Role.OWNER and _owners(db, org.id) <= 1:
        raise Conflict("an organisation must keep at least one owner")
    db.delete(m)
    db.flush()
    log_action(db, "member.remove", user_id=actor.user_id, org_id=org.id,
               details={"target_user_id": str(user_id), "role": role.value})


# ---------------------------------------------------------------- API keys


def default_org_for(db: Session, principal: Principal) -> uuid.UUID:
    """The caller's org with their highest role (ties: org name), for keys created without one."""
    rows = memberships_of(db, principal.user_id)
    if not rows:
        raise Unprocessable("org_id: required (you are not a member of any organisation)")
    rows.sort(key=lambda r: (-r[0].role.rank, r[1].name))
    return rows[0][1].id


def create_api_key(db: Session, principal: Principal, *, org_id: uuid.UUID | None, name: str,
                   expires_at: datetime | None, allowed_models: list[str] | None,
                   rpm_limit: int | None, tpm_limit: int | None,
                   monthly_budget_eur: Decimal | None, now: datetime,
                   checksum_secret: bytes = b"") -> tuple[ApiKey, str]:
    """Create a key in an org where the caller is member+; returns the row and the secret."""
    if org_id is None:
        org_id = default_org_for(db, principal)
    elif db.get(Org, org_id) is None and principal.is_platform_admin:
        raise NotFound("organisation not found")
    # Named explicitly: insufficient role or a foreign org is 403 (the caller chose the org).
    principal.require_role(org_id, Role.MEMBER)
    if expires_at is not None and expires_at <= now:
        raise Unprocessable("expires_at: must be in the future")
    secret = generate_api_key(checksum_secret)
    key = ApiKey(org_id=org_id, user_id=principal.user_id, name=name, prefix=secret.prefix,
                 key_hash=secret.hash, expires_at=expires_at, allowed_models=allowed_models,
                 rpm_limit=rpm_limit, tpm_limit=tpm_limit, monthly_budget_eur=monthly_budget_eur,
                 created_at=now)
    db.add(key)
    db.flush()
    log_action(db, "api_key.create", user_id=principal.user_id, org_id=org_id,
               details={"api_key_id": str(key.id), "prefix": key.prefix, "name": name})
    return key, secret.secret


def list_api_keys(db: Session, principal: Principal, org_id: uuid.UUID | None) -> list[ApiKey]:
    """Members see their own keys; admins and owners see all keys of the org."""
    stmt = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if org_id is not None:
        principal.require_role(org_id, Role.VIEWER)
        if principal.is_platform_admin or (principal.roles[org_id].rank >= Role.ADMIN.rank):
            return list(db.scalars(stmt.where(ApiKey.org_id == org_id)))
        return list(db.scalars(stmt.where(ApiKey.org_id == org_id,
                                          ApiKey.user_id == principal.user_id)))
    if principal.is_platform_admin:
        return list(db.scalars(stmt))
    admin_orgs = [o for o, r in principal.roles.items() if r.rank >= Role.ADMIN.rank]
    member_orgs = list(principal.roles)
    return list(db.scalars(stmt.where(or_(
        ApiKey.org_id.in_(admin_orgs),
        (ApiKey.org_id.in_(member_orgs)) & (ApiKey.user_id == principal.user_id)))))


def api_key_for(db: Session, principal: Principal, key_id: uuid.UUID) -> ApiKey:
    """A key the caller may see: 404 outside their orgs; 403 for another's key below admin."""
    key = db.get(ApiKey, key_id)
    if key is None:
        raise NotFound("API key not found")
    principal.require_org_visible(key.org_id, "API key")
    own = key.user_id == principal.user_id and principal.role_in(key.org_id) is not None
    if not own:
        principal.require_role(key.org_id, Role.ADMIN)
    return key


def revoke_api_key(db: Session, principal: Principal, key: ApiKey) -> ApiKey:
    """Revoke (idempotent: a revoked key keeps its first ``revoked_at``)."""
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        db.flush()
        log_action(db, "api_key.revoke", user_id=principal.user_id, org_id=key.org_id,
                   details={"api_key_id": str(key.id), "prefix": key.prefix})
    return key


# ---------------------------------------------------------------- service tokens


def default_scopes(component: str) -> list[str]:
    """The scope a component's name implies (``node_provider`` -> ``node-provider``)."""
    scope = component.replace("_", "-")
    if scope not in SERVICE_SCOPES:
        raise Unprocessable(f"scopes: required (component {component!r} names none of "
                            f"{', '.join(SERVICE_SCOPES)})", code="scopes_required")
    return [scope]


def create_service_token(db: Session, actor: Principal, *, name: str, component: str,
                         scopes: list[str] | None = None) -> tuple[ServiceToken, str]:
    """Create a data-plane token with its scopes (default: the one its component names);
    returns the row and the secret (shown once)."""
    if db.scalar(select(ServiceToken.id).where(ServiceToken.name == name)) is not None:
        raise Conflict("a service token with this name already exists")
    scopes = sorted(set(scopes)) if scopes else default_scopes(component)
    secret = generate_service_token()
    tok = ServiceToken(name=name, component=component, prefix=secret.prefix,
                       token_hash=secret.hash, scopes=scopes)
    db.add(tok)
    try:
        db.flush()
    except IntegrityError:
        raise Conflict("a service token with this name already exists") from None
    log_action(db, "service_token.create", user_id=actor.user_id,
               details={"service_token_id": str(tok.id), "name": name, "component": component,
                        "prefix": tok.prefix, "scopes": scopes})
    return tok, secret.secret


def revoke_service_token(db: Session, actor: Principal, token_id: uuid.UUID) -> ServiceToken:
    """Revoke a service token (idempotent)."""
    tok = db.get(ServiceToken, token_id)
    if tok is None:
        raise NotFound("service token not found")
    if tok.revoked_at is None:
        tok.revoked_at = utcnow()
        db.flush()
        log_action(db, "service_token.revoke", user_id=actor.user_id,
                   details={"service_token_id": str(tok.id), "name": tok.name})
    return tok
