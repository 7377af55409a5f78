"""An org's admins (not only its owners) list and revoke every API key of the org, members see
only their own, and nobody outside the org sees or revokes them (404 by id, 403 by org)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient

from core.keys import sha256_hex
from core.models import Role
from tests.conftest import Factory, TestUser

VERIFY = "/api/internal/keys/verify"


def new_key(client: TestClient, user: TestUser, org: uuid.UUID, name: str) -> tuple[str, str]:
    r = client.post("/api/api-keys", json={"name": name, "org_id": str(org)},
                    headers=user.headers)
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["key"]


def names(r: Any) -> list[str]:
    assert r.status_code == 200, r.text
    return sorted(k["name"] for k in r.json()["items"])


def test_org_admin_lists_and_revokes_every_key_of_the_org_only(
        client: TestClient, factory: Factory, service_headers: dict[str, str]) -> None:
    org, other = factory.org(), factory.org()
    admin = factory.user(org, Role.ADMIN)
    alice = factory.user(org, Role.MEMBER)
    bob = factory.user(org, Role.MEMBER)
    foreign_admin = factory.user(other, Role.ADMIN)
    alice_id, alice_key = new_key(client, alice, org, "alice-key")
    new_key(client, bob, org, "bob-key")
    new_key(client, foreign_admin, other, "other-org-key")

    assert names(client.get(f"/api/api-keys?org_id={org}", headers=admin.headers)) \
        == ["alice-key", "bob-key"]
    assert names(client.get("/api/api-keys", headers=admin.headers)) == ["alice-key", "bob-key"]
    assert names(client.get(f"/api/api-keys?org_id={org}", headers=alice.headers)) \
        == ["alice-key"]
    # A member cannot revoke another member's key; outsiders do not even see it.
    r = client.post(f"/api/api-keys/{alice_id}/revoke", headers=bob.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    for r in (client.get(f"/api/api-keys/{alice_id}", headers=foreign_admin.headers),
              client.post(f"/api/api-keys/{alice_id}/revoke", headers=foreign_admin.headers)):
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    r = client.get(f"/api/api-keys?org_id={org}", headers=foreign_admin.headers)
    assert r.status_code == 403 and "error" in r.json()
    assert names(client.get("/api/api-keys", headers=foreign_admin.headers)) == ["other-org-key"]
    assert client.post(VERIFY, json={"key_hash": sha256_hex(alice_key)},
                       headers=service_headers).status_code == 200

    # The org's admin revokes it: the endpoint refuses it from then on.
    r = client.post(f"/api/api-keys/{alice_id}/revoke", headers=admin.headers)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None, r.text
    r = client.post(VERIFY, json={"key_hash": sha256_hex(alice_key)}, headers=service_headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "revoked_api_key"
