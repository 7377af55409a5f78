"""`inventiv users …`: list, create, show, disable and enable users."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.config import make_client
from cli.output import JsonOpt, handles_errors, info, print_fields, print_json, print_table
from control_api.schemas.identity import UserOut

app = typer.Typer(help="Users (creating and disabling them needs a platform admin).",
                  no_args_is_help=True)

UserRef = Annotated[str, typer.Argument(help="User id, username or email.")]


def _show(user: UserOut, json_out: bool) -> None:
    if json_out:
        print_json(user)
        return
    print_fields(f"User {user.username}", [
        ("id", user.id), ("username", user.username), ("email", user.email),
        ("platform admin", user.is_platform_admin), ("active", user.is_active),
        ("created", user.created_at),
    ])


@app.command("list")
@handles_errors
def list_users(json_out: JsonOpt = False) -> None:
    """List users (a platform admin sees everyone, others only themselves)."""
    with make_client() as client:
        users = client.list_users()
    if json_out:
        print_json({"items": users})
        return
    print_table("Users", ["id", "username", "email", "platform admin", "active", "created"],
                [(u.id, u.username, u.email, u.is_platform_admin, u.is_active, u.created_at)
                 for u in users], empty="no user")


@app.command("create")
@handles_errors
def create(
    username: Annotated[str, typer.Argument(help="Login name.")],
    email: Annotated[str, typer.Option("--email", help="Email address.")],
    password: Annotated[str, typer.Option("--password", prompt=True, hide_input=True,
                                          confirmation_prompt=True,
                                          help="Initial password (prompted when omitted).")],
    platform_admin: Annotated[bool, typer.Option("--platform-admin",
                                                 help="Grant the platform-admin flag.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Create a user (add them to an organisation with `inventiv orgs add-member`)."""
    with make_client() as client:
        user = client.create_user(username, email, password, is_platform_admin=platform_admin)
    if json_out:
        print_json(user)
        return
    info(f"Created user {user.username} ({user.id})")


@app.command("show")
@handles_errors
def show(user: UserRef, json_out: JsonOpt = False) -> None:
    """Show one user."""
    with make_client() as client:
        found = client.find_user(user)
    _show(found, json_out)


@app.command("disable")
@handles_errors
def disable(user: UserRef, json_out: JsonOpt = False) -> None:
    """Disable a user: they can no longer log in nor use their sessions."""
    with make_client() as client:
        updated = client.update_user(client.find_user(user).id, is_active=False)
    if json_out:
        print_json(updated)
        return
    info(f"Disabled user {updated.username}")


@app.command("enable")
@handles_errors
def enable(user: UserRef, json_out: JsonOpt = False) -> None:
    """Re-enable a disabled user."""
    with make_client() as client:
        updated = client.update_user(client.find_user(user).id, is_active=True)
    if json_out:
        print_json(updated)
        return
    info(f"Enabled user {updated.username}")
