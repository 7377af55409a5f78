"""/api/users: admin CRUD, self-service email, no mass assignment, last-admin protection."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.models import ActionLog, Role, User
from tests.conftest import Factory


def _new_user(**over: object) -> dict[str, object]:
    n = uuid.uuid4().hex[:8]
    body: dict[str, object] = {"username": f"u{n}", "email": f"u{n}@Example.org",
                               "password": "a-good-password"}
    body.update(over)
    return body


def test_admin_creates_user_who_can_log_in(client: TestClient, admin_headers: dict[str, str],
                                           db: sessionmaker[Session]) -> None:
    body = _new_user()
    r = client.post("/api/users", json=body, headers=admin_headers)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["email"] == str(body["email"]).lower()
    assert out["is_platform_admin"] is False and out["is_active"] is True
    assert "password" not in r.text and "hash" not in r.text
    login = client.post("/api/auth/login",
                        json={"username": body["username"], "password": body["password"]})
    assert login.status_code == 200
    with db() as s:
        log = s.scalars(select(ActionLog).where(ActionLog.type == "user.create")).one()
        assert log.details["target_user_id"] == out["id"]
        assert "a-good-password" not in str(log.details)
    # Duplicates (also case-insensitive) are 409.
    dup = _new_user(username=str(body["username"]).upper())
    assert client.post("/api/users", json=dup, headers=admin_headers).status_code == 409
    dup = _new_user(email=body["email"])
    assert client.post("/api/users", json=dup, headers=admin_headers).status_code == 409


@pytest.mark.parametrize("over", [
    {"username": "has@sign"}, {"username": ""}, {"email": "not-an-email"},
    {"password": "short"}, {"role": "owner"}, {"org_id": str(uuid.uuid4())},
    {"is_platform_admin": "yes please"}, {"is_active": False},
])
def test_create_user_validation(client: TestClient, admin_headers: dict[str, str],
                                over: dict[str, object]) -> None:
    r = client.post("/api/users", json=_new_user(**over), headers=admin_headers)
    assert r.status_code == 422, r.text


def test_non_admin_cannot_create_users(client: TestClient, factory: Factory) -> None:
    org = factory.org()
    owner = factory.user(org, Role.OWNER)
    r = client.post("/api/users", json=_new_user(is_platform_admin=True), headers=owner.headers)
    assert r.status_code == 403


def test_list_and_get_visibility(client: TestClient, factory: Factory,
                                 admin_headers: dict[str, str]) -> None:
    org = factory.org()
    a = factory.user(org, Role.OWNER)
    b = factory.user(org, Role.MEMBER)
    mine = client.get("/api/users", headers=a.headers).json()["items"]
    assert [u["id"] for u in mine] == [str(a.id)]
    every = client.get("/api/users", headers=admin_headers).json()["items"]
    assert {str(a.id), str(b.id)} <= {u["id"] for u in every}
    assert client.get(f"/api/users/{a.id}", headers=a.headers).status_code == 200
    # Another user, even in the same org, is not visible through /api/users.
    assert client.get(f"/api/users/{b.id}", headers=a.headers).status_code == 404
    assert client.get(f"/api/users/{b.id}", headers=admin_headers).status_code == 200
    assert client.get(f"/api/users/{uuid.uuid4()}", headers=admin_headers).status_code == 404
    assert client.get("/api/users/not-a-uuid", headers=admin_headers).status_code == 422


def test_self_may_change_email_but_nothing_else(client: TestClient, factory: Factory) -> None:
    u = factory.user()
    r = client.patch(f"/api/users/{u.id}", json={"email": "New@Example.com"}, headers=u.headers)
    assert r.status_code == 200 and r.json()["email"] == "new@example.com"
    for body in ({"is_platform_admin": True}, {"is_active": True},
                 {"password": "reset-by-self-1"}):
        r = client.patch(f"/api/users/{u.id}", json=body, headers=u.headers)
        assert r.status_code == 403, body
    for body in ({"username": "renamed"}, {"role": "owner"}, {"email": None}):
        assert client.patch(f"/api/users/{u.id}", json=body,
                            headers=u.headers).status_code == 422, body
    me = client.get("/api/auth/me", headers=u.headers).json()
    assert me["is_platform_admin"] is False


def test_cannot_patch_someone_else(client: TestClient, factory: Factory) -> None:
    a, b = factory.user(), factory.user()
    r = client.patch(f"/api/users/{b.id}", json={"email": "stolen@example.com"},
                     headers=a.headers)
    assert r.status_code == 404


def test_admin_reset_and_deactivate_revoke_sessions(client: TestClient, factory: Factory,
                                                    admin_headers: dict[str, str]) -> None:
    u = factory.user()
    r = client.patch(f"/api/users/{u.id}", json={"password": "admin-set-pass-1"},
                     headers=admin_headers)
    assert r.status_code == 200
    assert client.get("/api/auth/me", headers=u.headers).status_code == 401
    login = client.post("/api/auth/login",
                        json={"username": u.username, "password": "admin-set-pass-1"})
    assert login.status_code == 200
    h = {"Authorization": f"Bearer {login.json()['access_token']}"}
    r = client.patch(f"/api/users/{u.id}", json={"is_active": False}, headers=admin_headers)
    assert r.status_code == 200 and r.json()["is_active"] is False
    assert client.get("/api/auth/me", headers=h).status_code == 401


def test_admin_grants_platform_admin(client: TestClient, factory: Factory,
                                     admin_headers: dict[str, str]) -> None:
    u = factory.user()
    r = client.patch(f"/api/users/{u.id}", json={"is_platform_admin": True},
                     headers=admin_headers)
    assert r.status_code == 200 and r.json()["is_platform_admin"] is True
    assert client.get("/api/service-tokens", headers=u.headers).status_code == 200


def test_last_platform_admin_is_protected(client: TestClient, admin_headers: dict[str, str],
                                          db: sessionmaker[Session]) -> None:
    with db() as s:
        admin_id = s.scalar(select(User.id).where(User.username == "admin"))
    for body in ({"is_platform_admin": False}, {"is_active": False}):
        r = client.patch(f"/api/users/{admin_id}", json=body, headers=admin_headers)
        assert r.status_code == 409, body
    assert client.delete(f"/api/users/{admin_id}", headers=admin_headers).status_code == 409


def test_delete_user(client: TestClient, factory: Factory, admin_headers: dict[str, str],
                     db: sessionmaker[Session]) -> None:
    org = factory.org()
    owner = factory.user(org, Role.OWNER)
    member = factory.user(org, Role.MEMBER)
    assert client.delete(f"/api/users/{member.id}", headers=owner.headers).status_code == 403
    assert client.delete(f"/api/users/{member.id}", headers=admin_headers).status_code == 204
    assert client.get(f"/api/users/{member.id}", headers=admin_headers).status_code == 404
    # The only owner of an org cannot be deleted (the org would have no owner).
    assert client.delete(f"/api/users/{owner.id}", headers=admin_headers).status_code == 409
    with db() as s:
        assert s.get(User, member.id) is None
        log = s.scalars(select(ActionLog).where(ActionLog.type == "user.delete")).one()
        assert log.details["target_user_id"] == str(member.id)
