"""/api/orgs and members: visibility, role rules for owner, at least one owner."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.models import ActionLog, ApiKey, Membership, Role
from tests.conftest import Factory


def _members(client: TestClient, org: uuid.UUID, headers: dict[str, str]) -> dict[str, str]:
    r = client.get(f"/api/orgs/{org}/members", headers=headers)
    assert r.status_code == 200, r.text
    return {m["user_id"]: m["role"] for m in r.json()["items"]}


def test_admin_creates_org_with_owner(client: TestClient, admin_headers: dict[str, str],
                                      factory: Factory, db: sessionmaker[Session]) -> None:
    u = factory.user()
    r = client.post("/api/orgs", json={"name": "research", "display_name": "Research",
                                       "owner_username": u.username}, headers=admin_headers)
    assert r.status_code == 201, r.text
    org = r.json()
    assert org["name"] == "research" and org["display_name"] == "Research"
    assert _members(client, org["id"], admin_headers) == {str(u.id): "owner"}
    listed = client.get("/api/orgs", headers=u.headers).json()["items"]
    assert [o["name"] for o in listed] == ["research"]
    assert client.post("/api/orgs", json={"name": "research"},
                       headers=admin_headers).status_code == 409
    # The creator is not added unless they ask.
    r = client.post("/api/orgs", json={"name": "lonely"}, headers=admin_headers)
    assert r.status_code == 201 and _members(client, r.json()["id"], admin_headers) == {}
    with db() as s:
        log = s.scalars(select(ActionLog).where(ActionLog.type == "org.create",
                                                ActionLog.org_id == uuid.UUID(org["id"]))).one()
        assert log.status == "success"


@pytest.mark.parametrize("body", [
    {"name": "Bad Name"}, {"name": ""}, {"name": "ok", "owner_role": "owner"},
    {"name": "ok", "id": str(uuid.uuid4())}, {"name": "ok", "owner_username": "ghost"},
])
def test_create_org_validation(client: TestClient, admin_headers: dict[str, str],
                               body: dict[str, object]) -> None:
    assert client.post("/api/orgs", json=body, headers=admin_headers).status_code == 422


def test_non_admin_cannot_create_or_delete_orgs(client: TestClient, factory: Factory) -> None:
    org = factory.org()
    owner = factory.user(org, Role.OWNER)
    assert client.post("/api/orgs", json={"name": "mine"}, headers=owner.headers).status_code == 403
    assert client.delete(f"/api/orgs/{org}", headers=owner.headers).status_code == 403


def test_org_visibility_and_update(client: TestClient, factory: Factory) -> None:
    a, b = factory.org(), factory.org()
    viewer = factory.user(a, Role.VIEWER)
    admin = factory.user(a, Role.ADMIN)
    outsider = factory.user(b, Role.OWNER)
    assert client.get(f"/api/orgs/{a}", headers=viewer.headers).status_code == 200
    assert client.get(f"/api/orgs/{a}", headers=outsider.headers).status_code == 404
    assert client.get(f"/api/orgs/{uuid.uuid4()}", headers=viewer.headers).status_code == 404
    assert client.patch(f"/api/orgs/{a}", json={"display_name": "X"},
                        headers=viewer.headers).status_code == 403
    assert client.patch(f"/api/orgs/{a}", json={"display_name": "X"},
                        headers=outsider.headers).status_code == 404
    r = client.patch(f"/api/orgs/{a}", json={"display_name": "Team A"}, headers=admin.headers)
    assert r.status_code == 200 and r.json()["display_name"] == "Team A"
    assert client.patch(f"/api/orgs/{a}", json={"name": "renamed"},
                        headers=admin.headers).status_code == 422


def test_member_management_and_owner_rules(client: TestClient, factory: Factory,
                                           db: sessionmaker[Session]) -> None:
    org = factory.org()
    owner = factory.user(org, Role.OWNER)
    admin = factory.user(org, Role.ADMIN)
    member = factory.user(org, Role.MEMBER)
    newbie = factory.user()
    url = f"/api/orgs/{org}/members"
    # Member cannot add anyone nor escalate themselves.
    assert client.post(url, json={"user_id": str(newbie.id), "role": "viewer"},
                       headers=member.headers).status_code == 403
    assert client.patch(f"{url}/{member.id}", json={"role": "owner"},
                        headers=member.headers).status_code == 403
    assert client.patch(f"{url}/{member.id}", json={"role": "admin"},
                        headers=member.headers).status_code == 403
    # Admin invites by username (the user accepts), but may not grant or take away owner (not
    # even to themselves). Inviting again answers the same (no enumeration).
    r = client.post(url, json={"username": newbie.username, "role": "member"},
                    headers=admin.headers)
    assert r.status_code == 202 and r.json()["status"] == "invited"
    assert client.post(url, json={"username": newbie.username, "role": "owner"},
                       headers=admin.headers).status_code == 403
    invitation = client.get("/api/auth/invitations", headers=newbie.headers).json()["items"][0]
    accepted = client.post(f"/api/auth/invitations/{invitation['id']}/accept",
                           headers=newbie.headers)
    assert accepted.status_code == 200 and accepted.json()["role"] == "member"
    assert client.post(url, json={"username": newbie.username, "role": "member"},
                       headers=admin.headers).status_code == 202
    assert client.patch(f"{url}/{admin.id}", json={"role": "owner"},
                        headers=admin.headers).status_code == 403
    assert client.patch(f"{url}/{owner.id}", json={"role": "member"},
                        headers=admin.headers).status_code == 403
    assert client.delete(f"{url}/{owner.id}", headers=admin.headers).status_code == 403
    assert client.patch(f"{url}/{newbie.id}", json={"role": "viewer"},
                        headers=admin.headers).status_code == 200
    # The owner can promote; an org keeps at least one owner.
    assert client.patch(f"{url}/{owner.id}", json={"role": "admin"},
                        headers=owner.headers).status_code == 409
    assert client.delete(f"{url}/{owner.id}", headers=owner.headers).status_code == 409
    assert client.patch(f"{url}/{admin.id}", json={"role": "owner"},
                        headers=owner.headers).status_code == 200
    assert client.patch(f"{url}/{owner.id}", json={"role": "member"},
                        headers=owner.headers).status_code == 200
    assert _members(client, org, admin.headers) == {
        str(admin.id): "owner", str(owner.id): "member", str(member.id): "member",
        str(newbie.id): "viewer"}
    assert client.delete(f"{url}/{newbie.id}", headers=admin.headers).status_code == 204
    assert client.delete(f"{url}/{newbie.id}", headers=admin.headers).status_code == 404
    with db() as s:
        types = [lg.type for lg in s.scalars(select(ActionLog).where(ActionLog.org_id == org)
                                             .order_by(ActionLog.id))]
        assert types == ["member.invite", "member.add", "member.invite", "member.update",
                         "member.update", "member.update", "member.remove"]


@pytest.mark.parametrize("body", [
    {"role": "member"}, {"user_id": str(uuid.uuid4()), "username": "x", "role": "member"},
    {"username": "someone", "role": "god"}, {"username": "someone"},
    {"username": "someone", "role": "member", "org_id": str(uuid.uuid4())},
])
def test_member_body_validation(client: TestClient, admin_headers: dict[str, str],
                                factory: Factory, body: dict[str, object]) -> None:
    org = factory.org()
    assert client.post(f"/api/orgs/{org}/members", json=body,
                       headers=admin_headers).status_code == 422


def test_unknown_member_is_404(client: TestClient, admin_headers: dict[str, str],
                               factory: Factory) -> None:
    org = factory.org()
    r = client.post(f"/api/orgs/{org}/members", json={"user_id": str(uuid.uuid4()),
                                                      "role": "viewer"}, headers=admin_headers)
    assert r.status_code == 404
    assert client.patch(f"/api/orgs/{org}/members/{uuid.uuid4()}", json={"role": "viewer"},
                        headers=admin_headers).status_code == 404


def test_admin_deletes_org_with_keys(client: TestClient, admin_headers: dict[str, str],
                                     factory: Factory, db: sessionmaker[Session]) -> None:
    org = factory.org()
    m = factory.user(org, Role.MEMBER)
    assert client.post("/api/api-keys", json={"name": "k"}, headers=m.headers).status_code == 201
    assert client.delete(f"/api/orgs/{org}", headers=admin_headers).status_code == 204
    assert client.get(f"/api/orgs/{org}", headers=admin_headers).status_code == 404
    with db() as s:
        assert s.scalars(select(ApiKey).where(ApiKey.org_id == org)).all() == []
        assert s.scalars(select(Membership).where(Membership.org_id == org)).all() == []
