"""/api/service-tokens: platform-admin CRUD; a created token authenticates internal calls."""

from __future__ import annotations

import uuid

import pytest
from fastapi import Depends
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session, sessionmaker

from control_api.deps import ServicePrincipal, get_service
from core.keys import sha256_hex
from core.models import ActionLog, Role, ServiceToken
from tests.conftest import Factory


def _whoami_route(client: TestClient) -> str:
    """A probe route guarded by the real service dependency (internal routes are not ours)."""
    path = f"/__probe_service_{uuid.uuid4().hex[:6]}"

    def probe(svc: ServicePrincipal = Depends(get_service)) -> dict[str, str]:  # noqa: B008
        return {"name": svc.name, "component": svc.component}

    client.app.add_api_route(path, probe, methods=["GET"])  # type: ignore[attr-defined]
    return path


def test_create_list_revoke(client: TestClient, admin_headers: dict[str, str],
                            db: sessionmaker[Session]) -> None:
    r = client.post("/api/service-tokens", json={"name": "ingress-1", "component": "ingress"},
                    headers=admin_headers)
    assert r.status_code == 201, r.text
    body = r.json()
    token = body["token"]
    assert token.startswith("ist-") and body["prefix"] == token[: len(body["prefix"])]
    probe = _whoami_route(client)
    ok = client.get(probe, headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.json() == {"name": "ingress-1", "component": "ingress"}
    listed = client.get("/api/service-tokens", headers=admin_headers)
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert [t["name"] for t in items] == ["ingress-1"] and "token" not in items[0]
    assert token not in listed.text
    assert items[0]["last_used_at"] is not None
    assert client.post("/api/service-tokens", json={"name": "ingress-1", "component": "x"},
                       headers=admin_headers).status_code == 409
    rev = client.post(f"/api/service-tokens/{body['id']}/revoke", headers=admin_headers)
    assert rev.status_code == 200 and rev.json()["revoked_at"] is not None
    assert client.get(probe, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert client.post(f"/api/service-tokens/{uuid.uuid4()}/revoke",
                       headers=admin_headers).status_code == 404
    with db() as s:
        row = s.get(ServiceToken, uuid.UUID(body["id"]))
        assert row is not None and row.token_hash == sha256_hex(token)
        cols = [c.key for c in inspect(ServiceToken).columns]
        assert all(token not in str(getattr(row, c)) for c in cols)
        types = [lg.type for lg in s.scalars(select(ActionLog).where(
            ActionLog.type.like("service_token.%")).order_by(ActionLog.id))]
        assert types == ["service_token.create", "service_token.revoke"]


def test_user_tokens_are_not_service_tokens(client: TestClient, admin_headers: dict[str, str]
                                            ) -> None:
    probe = _whoami_route(client)
    assert client.get(probe, headers=admin_headers).status_code == 401


@pytest.mark.parametrize("body", [
    {"name": "x"}, {"name": "", "component": "ingress"},
    {"name": "x", "component": "Bad Component"},
    {"name": "x", "component": "ingress", "token_hash": "0" * 64},
])
def test_validation(client: TestClient, admin_headers: dict[str, str],
                    body: dict[str, object]) -> None:
    assert client.post("/api/service-tokens", json=body,
                       headers=admin_headers).status_code == 422


def test_platform_admin_only(client: TestClient, factory: Factory) -> None:
    org = factory.org()
    owner = factory.user(org, Role.OWNER)
    assert client.get("/api/service-tokens", headers=owner.headers).status_code == 403
    assert client.post("/api/service-tokens", json={"name": "n", "component": "c"},
                       headers=owner.headers).status_code == 403
    assert client.get("/api/service-tokens").status_code == 401
