"""Routes under /api/orgs: organisations, their members and their pending invitations."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response

from control_api.deps import AdminDep, PrincipalDep, SessionDep, access
from control_api.schemas.identity import (
    MemberAdd,
    MemberInvited,
    MemberList,
    MemberOut,
    MemberUpdate,
    OrgCreate,
    OrgList,
    OrgOut,
    OrgUpdate,
)
from control_api.schemas.org_invitations import OrgInvitationList, OrgInvitationOut
from control_api.services import identity
from core.models import Membership, Org, Role, User

router = APIRouter(prefix="/api/orgs", tags=["orgs"])


def _org(org: Org) -> OrgOut:
    return OrgOut.model_validate(org, from_attributes=True)


def _member(m: Membership, user: User) -> MemberOut:
    return MemberOut(user_id=user.id, username=user.username, email=user.email, role=m.role,
                     created_at=m.created_at)


@router.get("", response_model=OrgList, openapi_extra=access("user"))
def list_orgs(principal: PrincipalDep, db: SessionDep) -> OrgList:
    """The caller's organisations (all of them for a platform admin)."""
    return OrgList(items=[_org(o) for o in identity.list_orgs(db, principal)])


@router.post("", response_model=OrgOut, status_code=201, openapi_extra=access("platform_admin"))
def create_org(body: OrgCreate, admin: AdminDep, db: SessionDep) -> OrgOut:
    """Create an organisation; ``owner_username`` (if given) becomes its owner."""
    return _org(identity.create_org(db, admin, name=body.name, display_name=body.display_name,
                                    owner_username=body.owner_username))


@router.get("/{id}", response_model=OrgOut, openapi_extra=access("org:viewer"))
def get_org(id: uuid.UUID, principal: PrincipalDep, db: SessionDep) -> OrgOut:  # noqa: A002
    """An organisation (viewer+; 404 outside your orgs)."""
    return _org(identity.visible_org(db, principal, id))


@router.patch("/{id}", response_model=OrgOut, openapi_extra=access("org:admin"))
def update_org(id: uuid.UUID, body: OrgUpdate, principal: PrincipalDep,  # noqa: A002
               db: SessionDep) -> OrgOut:
    """Update the display name (admin+)."""
    org = identity.visible_org(db, principal, id)
    principal.require_role(org.id, Role.ADMIN)
    return _org(identity.update_org(db, principal, org, body.model_dump(exclude_unset=True)))


@router.delete("/{id}", status_code=204, openapi_extra=access("platform_admin"))
def delete_org(id: uuid.UUID, admin: AdminDep, db: SessionDep) -> Response:  # noqa: A002
    """Delete an organisation with its memberships and API keys (platform admin)."""
    identity.delete_org(db, admin, identity.visible_org(db, admin, id))
    return Response(status_code=204)


@router.get("/{id}/members", response_model=MemberList, openapi_extra=access("org:viewer"))
def list_members(id: uuid.UUID, principal: PrincipalDep, db: SessionDep) -> MemberList:  # noqa: A002
    """Members of an organisation (viewer+)."""
    org = identity.visible_org(db, principal, id)
    return MemberList(items=[_member(m, u) for m, u in identity.list_members(db, org.id)])


@router.post("/{id}/members", response_model=MemberOut | MemberInvited, status_code=201,
             openapi_extra=access("org:admin"),
             responses={202: {"model": MemberInvited,
                              "description": "invited (org admins): the user joins once they "
                                             "accept; the same answer for unknown users"}})
def add_member(id: uuid.UUID, body: MemberAdd, principal: PrincipalDep,  # noqa: A002
               db: SessionDep, response: Response) -> MemberOut | MemberInvited:
    """Org admins invite (202, the user accepts with ``POST /api/auth/invitations/{id}/accept``;
    the answer does not tell whether the user exists); platform admins add directly (201).
    Only an owner may grant ``owner``."""
    org = identity.visible_org(db, principal, id)
    if principal.is_platform_admin:
        return _member(*identity.add_member(db, principal, org, user_id=body.user_id,
                                            username=body.username, role=body.role))
    identity.invite_member(db, principal, org, user_id=body.user_id, username=body.username,
                           role=body.role)
    response.status_code = 202
    return MemberInvited()


@router.patch("/{id}/members/{user_id}", response_model=MemberOut,
              openapi_extra=access("org:admin"))
def update_member(id: uuid.UUID, user_id: uuid.UUID, body: MemberUpdate,  # noqa: A002
                  principal: PrincipalDep, db: SessionDep) -> MemberOut:
    """Change a member's role; ``owner`` changes need an owner; one owner always remains."""
    org = identity.visible_org(db, principal, id)
    return _member(*identity.change_member_role(db, principal, org, user_id, body.role))


@router.delete("/{id}/members/{user_id}", status_code=204, openapi_extra=access("org:admin"))
def remove_member(id: uuid.UUID, user_id: uuid.UUID, principal: PrincipalDep,  # noqa: A002
                  db: SessionDep) -> Response:
    """Remove a member (admin+; owner to remove an owner; the last owner stays)."""
    org = identity.visible_org(db, principal, id)
    identity.remove_member(db, principal, org, user_id)
    return Response(status_code=204)


@router.get("/{id}/invitations", response_model=OrgInvitationList,
            openapi_extra=access("org:admin"))
def list_org_invitations(id: uuid.UUID, principal: PrincipalDep,  # noqa: A002
                         db: SessionDep) -> OrgInvitationList:
    """The organisation's pending invitations, newest first (admin+; 404 outside your orgs).
    Invitees are named by username; their email shows only once they join."""
    org = identity.visible_org(db, principal, id)
    return OrgInvitationList(items=[
        OrgInvitationOut(id=p.invitation.id, org_id=p.invitation.org_id, username=p.username,
                         role=p.invitation.role, invited_by=p.invited_by,
                         created_at=p.invitation.created_at)
        for p in identity.org_invitations(db, principal, org)])


@router.delete("/{id}/invitations/{invitation_id}", status_code=204,
               openapi_extra=access("org:admin"))
def cancel_org_invitation(id: uuid.UUID, invitation_id: uuid.UUID,  # noqa: A002
                          principal: PrincipalDep, db: SessionDep) -> Response:
    """Withdraw a pending invitation (admin+; owner for an invitation as owner). 404
    ``invitation_not_found`` unless it is a pending invitation of this organisation (accepted,
    declined or withdrawn ones are gone)."""
    org = identity.visible_org(db, principal, id)
    identity.cancel_invitation(db, principal, org, invitation_id)
    return Response(status_code=204)
