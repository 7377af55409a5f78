"""/api/api-keys: create (secret once), limits validation, visibility per role, revocation."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.db import utcnow
from core.keys import api_key_well_formed, sha256_hex
from core.models import ActionLog, ApiKey, Role
from tests.conftest import Factory


def test_create_returns_key_once_and_stores_limits(client: TestClient, factory: Factory,
                                                   db: sessionmaker[Session]) -> None:
    org = factory.org()
    m = factory.user(org, Role.MEMBER)
    expires = (utcnow() + timedelta(days=30)).replace(microsecond=0)
    r = client.post("/api/api-keys", headers=m.headers, json={
        "name": "ci key", "org_id": str(org), "expires_at": expires.isoformat(),
        "allowed_models": ["qwen-0.5b", "embed", "qwen-0.5b"], "rpm_limit": 60,
        "tpm_limit": 100000, "monthly_budget_eur": "12.345678"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["key"].startswith("ia-") and api_key_well_formed(body["key"])
    assert body["prefix"] == body["key"][:11]
    assert body["org_id"] == str(org) and body["user_id"] == str(m.id)
    assert body["allowed_models"] == ["qwen-0.5b", "embed"]
    assert body["monthly_budget_eur"] == "12.345678"  # Decimal as a JSON string
    assert body["revoked_at"] is None and body["last_used_at"] is None
    got = client.get(f"/api/api-keys/{body['id']}", headers=m.headers)
    assert got.status_code == 200 and "key" not in got.json()
    assert body["key"] not in got.text
    listed = client.get("/api/api-keys", headers=m.headers).json()["items"]
    assert [k["id"] for k in listed] == [body["id"]] and "key" not in listed[0]
    with db() as s:
        row = s.get(ApiKey, uuid.UUID(body["id"]))
        assert row is not None and row.key_hash == sha256_hex(body["key"])
        assert row.monthly_budget_eur == Decimal("12.345678")
        assert row.expires_at == expires
        log = s.scalars(select(ActionLog).where(ActionLog.type == "api_key.create")).one()
        assert log.org_id == org and log.user_id == m.id
        assert body["key"] not in str(log.details)


def test_default_org_is_the_callers_highest_role(client: TestClient, factory: Factory) -> None:
    a, b = factory.org("aaa"), factory.org("bbb")
    u = factory.user(a, Role.MEMBER)
    with client.app.state.sessionmaker() as s, s.begin():  # type: ignore[attr-defined]
        from core.models import Membership
        s.add(Membership(user_id=u.id, org_id=b, role=Role.ADMIN))
    r = client.post("/api/api-keys", json={"name": "k"}, headers=u.headers)
    assert r.status_code == 201 and r.json()["org_id"] == str(b)
    lonely = factory.user()
    r = client.post("/api/api-keys", json={"name": "k"}, headers=lonely.headers)
    assert r.status_code == 422


@pytest.mark.parametrize("over", [
    {"rpm_limit": 0}, {"rpm_limit": -1}, {"tpm_limit": 1.5}, {"rpm_limit": "10"},
    {"rpm_limit": True}, {"rpm_limit": 10**12},
    {"monthly_budget_eur": "-0.01"}, {"monthly_budget_eur": "1.1234567"},
    {"monthly_budget_eur": "NaN"}, {"monthly_budget_eur": "Infinity"},
    {"monthly_budget_eur": "lots"},
    {"expires_at": "2020-01-01T00:00:00Z"}, {"expires_at": "2999-01-01T00:00:00"},
    {"expires_at": "tomorrow"},
    {"allowed_models": []}, {"allowed_models": [""]}, {"allowed_models": ["  "]},
    {"allowed_models": [f"m{i}" for i in range(101)]}, {"allowed_models": "qwen"},
    {"allowed_models": [1]},
    {"name": ""}, {"name": "x" * 101}, {"user_id": str(uuid.uuid4())}, {"key_hash": "0" * 64},
    {"revoked_at": None}, {"org_id": "not-a-uuid"},
])
def test_create_validation(client: TestClient, factory: Factory, over: dict[str, object]) -> None:
    org = factory.org()
    m = factory.user(org, Role.MEMBER)
    body: dict[str, object] = {"name": "k", **over}
    r = client.post("/api/api-keys", json=body, headers=m.headers)
    assert r.status_code == 422, (over, r.text)
    assert r.json()["error"]["code"] == "validation_error"


def test_budget_accepts_numbers_and_zero(client: TestClient, factory: Factory) -> None:
    org = factory.org()
    m = factory.user(org, Role.MEMBER)
    for value, expected in ((0, "0"), (2.5, "2.5"), ("100.10", "100.10")):
        r = client.post("/api/api-keys", json={"name": "k", "monthly_budget_eur": value},
                        headers=m.headers)
        assert r.status_code == 201, r.text
        assert Decimal(r.json()["monthly_budget_eur"]) == Decimal(expected)


def test_roles_for_create(client: TestClient, factory: Factory,
                          admin_headers: dict[str, str]) -> None:
    a, b = factory.org(), factory.org()
    viewer = factory.user(a, Role.VIEWER)
    foreign = factory.user(b, Role.OWNER)
    for caller in (viewer, foreign):
        r = client.post("/api/api-keys", json={"name": "k", "org_id": str(a)},
                        headers=caller.headers)
        assert r.status_code == 403
    assert client.post("/api/api-keys", json={"name": "k", "org_id": str(a)},
                       headers=admin_headers).status_code == 201
    assert client.post("/api/api-keys", json={"name": "k", "org_id": str(uuid.uuid4())},
                       headers=admin_headers).status_code == 404


def test_visibility_and_revocation(client: TestClient, factory: Factory,
                                   db: sessionmaker[Session]) -> None:
    a, b = factory.org(), factory.org()
    m1 = factory.user(a, Role.MEMBER)
    m2 = factory.user(a, Role.MEMBER)
    admin = factory.user(a, Role.ADMIN)
    viewer = factory.user(a, Role.VIEWER)
    foreign = factory.user(b, Role.ADMIN)
    k1 = client.post("/api/api-keys", json={"name": "k1"}, headers=m1.headers).json()
    k2 = client.post("/api/api-keys", json={"name": "k2"}, headers=m2.headers).json()

    def ids(headers: dict[str, str], query: str = "") -> set[str]:
        r = client.get(f"/api/api-keys{query}", headers=headers)
        assert r.status_code == 200, r.text
        return {k["id"] for k in r.json()["items"]}

    assert ids(m1.headers) == {k1["id"]}
    assert ids(admin.headers) == ids(admin.headers, f"?org_id={a}") == {k1["id"], k2["id"]}
    assert ids(viewer.headers, f"?org_id={a}") == set()
    assert ids(foreign.headers) == set()
    assert client.get(f"/api/api-keys?org_id={a}", headers=foreign.headers).status_code == 403
    # A colleague's key: 403 for a member (same org); 404 for another org.
    assert client.get(f"/api/api-keys/{k2['id']}", headers=m1.headers).status_code == 403
    assert client.get(f"/api/api-keys/{k2['id']}", headers=foreign.headers).status_code == 404
    assert client.post(f"/api/api-keys/{k2['id']}/revoke",
                       headers=m1.headers).status_code == 403
    assert client.post(f"/api/api-keys/{k2['id']}/revoke",
                       headers=viewer.headers).status_code == 403
    assert client.post(f"/api/api-keys/{k2['id']}/revoke",
                       headers=foreign.headers).status_code == 404
    # Owner of the key revokes it; admin revokes another's. Idempotent.
    r1 = client.post(f"/api/api-keys/{k1['id']}/revoke", headers=m1.headers)
    assert r1.status_code == 200 and r1.json()["revoked_at"] is not None
    assert "key" not in r1.json()
    again = client.post(f"/api/api-keys/{k1['id']}/revoke", headers=admin.headers)
    assert again.status_code == 200 and again.json()["revoked_at"] == r1.json()["revoked_at"]
    assert client.post(f"/api/api-keys/{k2['id']}/revoke",
                       headers=admin.headers).status_code == 200
    # Revoked keys stay listed.
    listed = client.get(f"/api/api-keys?org_id={a}", headers=admin.headers).json()["items"]
    assert all(k["revoked_at"] for k in listed) and len(listed) == 2
    assert client.get(f"/api/api-keys/{uuid.uuid4()}", headers=admin.headers).status_code == 404
    assert client.get("/api/api-keys/nope", headers=admin.headers).status_code == 422
    with db() as s:
        revs = s.scalars(select(ActionLog).where(ActionLog.type == "api_key.revoke")).all()
        assert len(revs) == 2 and all(lg.org_id == a for lg in revs)
