"""An org's admins see and withdraw its pending invitations: ``GET /api/orgs/{id}/invitations``
and ``DELETE /api/orgs/{id}/invitations/{invitation_id}`` (admin+ of that org, or platform
admin; 404 for other orgs; an invitation as owner is withdrawn by an owner, as it is issued)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from fastapi.testclient import TestClient

from core.models import Role
from tests.conftest import Factory, TestUser


def invite(client: TestClient, org: uuid.UUID, by: TestUser, username: str,
           role: str = "member") -> None:
    r = client.post(f"/api/orgs/{org}/members", json={"username": username, "role": role},
                    headers=by.headers)
    assert r.status_code == 202, r.text


def listed(client: TestClient, org: uuid.UUID, headers: dict[str, str]) -> Any:
    return client.get(f"/api/orgs/{org}/invitations", headers=headers)


def cancel(client: TestClient, org: uuid.UUID, inv: Any, headers: dict[str, str]) -> Any:
    return client.delete(f"/api/orgs/{org}/invitations/{inv}", headers=headers)


def my_invitations(client: TestClient, user: TestUser) -> list[dict[str, Any]]:
    r = client.get("/api/auth/invitations", headers=user.headers)
    assert r.status_code == 200, r.text
    return r.json()["items"]  # type: ignore[no-any-return]


@dataclass
class InvitingOrg:
    """An org with an owner and an admin, and the new users they invited, in order."""

    id: uuid.UUID
    owner: TestUser
    admin: TestUser
    invitees: list[TestUser]


def inviting_org(client: TestClient, factory: Factory,
                 *invitations: tuple[str, str]) -> InvitingOrg:
    """One new user invited per ``(inviter, role)``, ``inviter`` being "owner" or "admin"."""
    org = factory.org()
    owner = factory.user(org, Role.OWNER)
    admin = factory.user(org, Role.ADMIN)
    invitees = []
    for inviter, role in invitations:
        invitee = factory.user()
        invite(client, org, owner if inviter == "owner" else admin, invitee.username, role)
        invitees.append(invitee)
    return InvitingOrg(org, owner, admin, invitees)


def error_code(r: Any) -> str:
    return r.json()["error"]["code"]  # type: ignore[no-any-return]


def test_org_admin_lists_and_withdraws_pending_invitations(
        client: TestClient, factory: Factory, admin_headers: dict[str, str]) -> None:
    o = inviting_org(client, factory, ("owner", "member"), ("admin", "viewer"))
    org, owner, admin, (alice, bob) = o.id, o.owner, o.admin, o.invitees
    r = listed(client, org, admin.headers)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [(i["username"], i["role"], i["invited_by"], i["org_id"]) for i in items] == [
        (bob.username, "viewer", admin.username, str(org)),
        (alice.username, "member", owner.username, str(org))]
    # The invitee's email is not shown before they join.
    assert all("email" not in i for i in items) and "@example.com" not in r.text
    alice_inv = next(i["id"] for i in items if i["username"] == alice.username)
    assert [i["id"] for i in my_invitations(client, alice)] == [alice_inv]

    r = cancel(client, org, alice_inv, admin.headers)
    assert r.status_code == 204, r.text
    assert my_invitations(client, alice) == []
    accept = client.post(f"/api/auth/invitations/{alice_inv}/accept", headers=alice.headers)
    assert accept.status_code == 404
    assert [i["username"] for i in listed(client, org, owner.headers).json()["items"]] \
        == [bob.username]
    # Withdrawn once: gone (a second withdrawal is a structured 404).
    again = cancel(client, org, alice_inv, admin.headers)
    assert (again.status_code, error_code(again)) == (404, "invitation_not_found")
    # Accepted invitations leave the list too.
    bob_inv = my_invitations(client, bob)[0]["id"]
    assert client.post(f"/api/auth/invitations/{bob_inv}/accept",
                       headers=bob.headers).status_code == 200
    assert listed(client, org, admin.headers).json()["items"] == []
    # The withdrawal is in the action log, attributed.
    logs = client.get("/api/action-logs", headers=admin_headers,
                      params={"type": "member.invite_cancel", "limit": 50})
    assert logs.status_code == 200, logs.text
    entries = [e for e in logs.json()["items"] if e["type"] == "member.invite_cancel"]
    assert [(e["user_id"], e["org_id"], e["metadata"]["invitation_id"]) for e in entries] \
        == [(str(admin.id), str(org), alice_inv)]
    # The org's viewers read that log: it does not name the invitee.
    assert str(alice.id) not in logs.text and alice.username not in logs.text


def test_below_admin_and_other_orgs_are_refused_with_structured_errors(
        client: TestClient, factory: Factory) -> None:
    org, other = factory.org(), factory.org()
    owner = factory.user(org, Role.OWNER)
    viewer = factory.user(org, Role.VIEWER)
    member = factory.user(org, Role.MEMBER)
    foreign_owner = factory.user(other, Role.OWNER)
    nobody = factory.user()
    invitee = factory.user()
    invite(client, org, owner, invitee.username)
    inv = my_invitations(client, invitee)[0]["id"]
    for caller in (viewer, member):
        for r in (listed(client, org, caller.headers), cancel(client, org, inv, caller.headers)):
            assert (r.status_code, error_code(r)) == (403, "forbidden"), r.text
    for caller in (foreign_owner, nobody):
        for r in (listed(client, org, caller.headers), cancel(client, org, inv, caller.headers)):
            assert (r.status_code, error_code(r)) == (404, "not_found"), r.text
    # An admin of the other org cannot reach org's invitation through their own org either.
    r = cancel(client, other, inv, foreign_owner.headers)
    assert (r.status_code, error_code(r)) == (404, "invitation_not_found")
    assert listed(client, other, foreign_owner.headers).json()["items"] == []
    # No session: 401; a malformed id: 422, structured.
    r = client.get(f"/api/orgs/{org}/invitations")
    assert r.status_code == 401 and "error" in r.json()
    r = cancel(client, org, "not-a-uuid", owner.headers)
    assert r.status_code == 422 and "code" in r.json()["error"], r.text
    r = client.get(f"/api/orgs/{uuid.uuid4()}/invitations", headers=owner.headers)
    assert (r.status_code, error_code(r)) == (404, "not_found")
    # Nothing above withdrew it.
    assert [i["id"] for i in my_invitations(client, invitee)] == [inv]


def test_owner_invitations_are_withdrawn_by_owners_and_platform_admins_see_all(
        client: TestClient, factory: Factory, admin_headers: dict[str, str]) -> None:
    o = inviting_org(client, factory, ("owner", "owner"), ("owner", "member"))
    org, owner, admin, (future_owner, other) = o.id, o.owner, o.admin, o.invitees
    items = {i["username"]: i["id"] for i in listed(client, org, admin.headers).json()["items"]}
    r = cancel(client, org, items[future_owner.username], admin.headers)
    assert (r.status_code, error_code(r)) == (403, "forbidden")
    assert cancel(client, org, items[future_owner.username], owner.headers).status_code == 204
    # A platform admin (no membership) lists and withdraws any org's invitations.
    r = listed(client, org, admin_headers)
    assert [i["username"] for i in r.json()["items"]] == [other.username]
    assert cancel(client, org, items[other.username], admin_headers).status_code == 204
    assert listed(client, org, owner.headers).json()["items"] == []
    assert my_invitations(client, future_owner) == my_invitations(client, other) == []


def test_the_org_action_log_does_not_tell_whether_an_invited_username_exists(
        client: TestClient, factory: Factory) -> None:
    org = factory.org()
    owner = factory.user(org, Role.OWNER)
    viewer = factory.user(org, Role.VIEWER)
    real = factory.user()
    invite(client, org, owner, real.username)
    invite(client, org, owner, f"no-such-{uuid.uuid4().hex[:8]}")
    r = client.get("/api/action-logs", headers=viewer.headers,
                   params={"type": "member.invite", "limit": 50})
    assert r.status_code == 200, r.text
    entries = [e for e in r.json()["items"] if e["type"] == "member.invite"]
    assert len(entries) == 2
    # Both read alike: the request as made, nothing resolved.
    shapes = [(e["status"], sorted(e["metadata"]), e["metadata"]["target_user_id"])
              for e in entries]
    assert shapes[0] == shapes[1] == ("success", ["role", "target_user_id", "username"], None)
    assert str(real.id) not in r.text
