"""`inventiv orgs pending|cancel-invitation`: an org's admins see and withdraw its invitations."""

from __future__ import annotations

from collections.abc import Callable

from tests.cli.conftest import Cli


def test_pending_and_cancel_invitation(admin_cli: Cli, make_cli: Callable[[], Cli]) -> None:
    admin_cli.ok("orgs", "create", "pend")
    for name in ("owen", "ivy"):
        admin_cli.ok("users", "create", name, "--email", f"{name}@example.com",
                     "--password", f"{name}-password-123")
    admin_cli.ok("orgs", "add-member", "pend", "owen", "--role", "owner")
    owen = make_cli()
    owen.login("owen", "owen-password-123")
    owen.ok("orgs", "add-member", "pend", "ivy", "--role", "member")
    table = owen.ok("orgs", "pending", "pend")
    assert "ivy" in table.stdout and "owen" in table.stdout, table.stdout
    assert "ivy@example.com" not in table.stdout
    items = owen.json("orgs", "pending", "pend")["items"]
    assert [(i["username"], i["role"], i["invited_by"]) for i in items] \
        == [("ivy", "member", "owen")]
    owen.ok("orgs", "cancel-invitation", "pend", "ivy")
    assert owen.json("orgs", "pending", "pend")["items"] == []
    again = owen("orgs", "cancel-invitation", "pend", "ivy")
    assert again.exit_code == 1 and again.stderr.startswith("error: invitation_not_found: ")
