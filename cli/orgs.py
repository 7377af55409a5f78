"""`inventiv orgs …`: organisations and their members."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from cli.config import make_client
from cli.output import (
    JsonOpt,
    fmt,
    handles_errors,
    info,
    print_fields,
    print_json,
    print_table,
)
from control_api.client.api import is_uuid
from control_api.client.errors import ControlApiError
from control_api.schemas.identity import MemberInvited

app = typer.Typer(help="Organisations and memberships.", no_args_is_help=True)


class RoleName(StrEnum):
    owner = "owner"
    admin = "admin"
    member = "member"
    viewer = "viewer"


OrgRef = Annotated[str, typer.Argument(help="Organisation id or name.")]


@app.command("list")
@handles_errors
def list_orgs(json_out: JsonOpt = False) -> None:
    """List your organisations (all of them for a platform admin)."""
    with make_client() as client:
        orgs = client.list_orgs()
    if json_out:
        print_json({"items": orgs})
        return
    print_table("Organisations", ["id", "name", "display name", "created"],
                [(o.id, o.name, o.display_name, o.created_at) for o in orgs],
                empty="no organisation")


@app.command("create")
@handles_errors
def create(
    name: Annotated[str, typer.Argument(help="Short unique name.")],
    display_name: Annotated[str | None, typer.Option("--display-name")] = None,
    owner: Annotated[str | None, typer.Option(
        "--owner", help="Username to add as the organisation's owner.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an organisation (platform admin)."""
    with make_client() as client:
        org = client.create_org(name, display_name=display_name, owner_username=owner)
    if json_out:
        print_json(org)
        return
    info(f"Created organisation {org.name} ({org.id})")


@app.command("show")
@handles_errors
def show(org: OrgRef, json_out: JsonOpt = False) -> None:
    """Show one organisation."""
    with make_client() as client:
        found = client.find_org(org)
    if json_out:
        print_json(found)
        return
    print_fields(f"Organisation {found.name}", [
        ("id", found.id), ("name", found.name), ("display name", found.display_name),
        ("created", found.created_at)])


@app.command("members")
@handles_errors
def members(org: OrgRef, json_out: JsonOpt = False) -> None:
    """List the members of an organisation and their roles."""
    with make_client() as client:
        found = client.find_org(org)
        items = client.list_members(found.id)
    if json_out:
        print_json({"items": items})
        return
    print_table(f"Members of {found.name}", ["user id", "username", "email", "role"],
                [(m.user_id, m.username, m.email, m.role) for m in items], empty="no member")


@app.command("add-member")
@handles_errors
def add_member(
    org: OrgRef,
    user: Annotated[str, typer.Argument(help="Username or user id.")],
    role: Annotated[RoleName, typer.Option("--role", help="Role in the organisation.")]
    = RoleName.member,
    json_out: JsonOpt = False,
) -> None:
    """Add a user to an organisation with a role (platform admins), or invite them (org
    admins: they join once they accept with `inventiv orgs accept`)."""
    with make_client() as client:
        found = client.find_org(org)
        if is_uuid(user):
            member = client.add_member(found.id, role.value, user_id=user)
        else:
            member = client.add_member(found.id, role.value, username=user)
    if json_out:
        print_json(member)
        return
    if isinstance(member, MemberInvited):
        info(f"Invited {user} to {found.name} as {role.value} (if that user exists; they join "
             "once they accept)")
        return
    info(f"Added {member.username or member.user_id} to {found.name} as {fmt(member.role)}")


@app.command("invitations")
@handles_errors
def invitations(json_out: JsonOpt = False) -> None:
    """Your pending invitations into organisations."""
    with make_client() as client:
        items = client.list_invitations()
    if json_out:
        print_json(items)
        return
    print_table("Invitations", ["id", "org", "role", "invited"],
                [(i.id, i.org_name, fmt(i.role), i.created_at) for i in items])


@app.command("pending")
@handles_errors
def pending(org: OrgRef, json_out: JsonOpt = False) -> None:
    """The organisation's pending invitations (its admins and owners)."""
    with make_client() as client:
        found = client.find_org(org)
        result = client.request("GET", f"/api/orgs/{found.id}/invitations")
    if json_out:
        print_json(result)
        return
    print_table(f"Pending invitations into {found.name}",
                ["id", "user", "role", "invited by", "invited"],
                [(i["id"], i["username"], i["role"], i.get("invited_by"), i["created_at"])
                 for i in result["items"]], empty="no pending invitation")


@app.command("cancel-invitation")
@handles_errors
def cancel_invitation(
    org: OrgRef,
    invitation: Annotated[str, typer.Argument(help="Invitation id, or the invitee's username.")],
) -> None:
    """Withdraw a pending invitation (admin+; an owner for an invitation as owner)."""
    with make_client() as client:
        found = client.find_org(org)
        target = invitation
        if not is_uuid(invitation):
            items = client.request("GET", f"/api/orgs/{found.id}/invitations")["items"]
            match = [i for i in items if i["username"].lower() == invitation.lower()]
            if not match:
                raise ControlApiError(404, "invitation_not_found",
                                      f"no pending invitation of {invitation!r}")
            target = match[0]["id"]
        client.request("DELETE", f"/api/orgs/{found.id}/invitations/{target}")
    info(f"Withdrew the invitation {invitation} into {found.name}")


@app.command("accept")
@handles_errors
def accept(invitation: Annotated[str, typer.Argument(help="Invitation id, or org name.")],
           json_out: JsonOpt = False) -> None:
    """Accept an invitation (by its id or its organisation's name)."""
    with make_client() as client:
        target = invitation
        if not is_uuid(invitation):
            match = [i for i in client.list_invitations() if i.org_name == invitation]
            if not match:
                raise ControlApiError(404, "not_found", f"no invitation into {invitation!r}")
            target = str(match[0].id)
        joined = client.accept_invitation(target)
    if json_out:
        print_json(joined)
        return
    info(f"Joined {joined.org_name} as {fmt(joined.role)}")


@app.command("set-role")
@handles_errors
def set_role(
    org: OrgRef,
    user: Annotated[str, typer.Argument(help="Username or user id.")],
    role: Annotated[RoleName, typer.Option("--role", help="New role.")],
    json_out: JsonOpt = False,
) -> None:
    """Change a member's role."""
    with make_client() as client:
        found = client.find_org(org)
        member = client.set_member_role(found.id, client.find_member(found.id, user).user_id,
                                        role.value)
    if json_out:
        print_json(member)
        return
    info(f"{member.username or member.user_id} is now {fmt(member.role)} of {found.name}")


@app.command("remove-member")
@handles_errors
def remove_member(
    org: OrgRef,
    user: Annotated[str, typer.Argument(help="Username or user id.")],
) -> None:
    """Remove a user from an organisation (an organisation keeps at least one owner)."""
    with make_client() as client:
        found = client.find_org(org)
        member = client.find_member(found.id, user)
        client.remove_member(found.id, member.user_id)
    info(f"Removed {member.username or member.user_id} from {found.name}")
