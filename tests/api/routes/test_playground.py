"""The playground's server-held keys, through the API on the real database (both backends):
a revoked key is not reused, and the caller's old (expired or revoked) playground keys leave
the org's key list when they next chat, while a user's own key named ``playground``, another
member's keys and a key a budget names stay.

The OpenAI endpoint is a closed local port: the key is minted before the upstream call, which
then answers 502 (``upstream_error``). The streamed chat itself is tested end to end in
tests/console/test_console_playground.py.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from control_api.routes import playground
from core.db import utcnow
from core.models import ActionLog, Budget, BudgetScope, Deployment, Role
from tests.api.routes.test_deployments import closed_port
from tests.conftest import Factory, TestUser

MODEL = "play-tiny"


@pytest.fixture
def org(client: TestClient, factory: Factory) -> uuid.UUID:
    app: Any = client.app
    app.state.playground_ingress_url = f"http://127.0.0.1:{closed_port()}"
    with app.state.sessionmaker() as s, s.begin():
        s.add(Deployment(name="play", status="running",
                         spec={"name": "play", "model": {"name": MODEL, "task": "chat"}}))
    return factory.org()


def chat(client: TestClient, user: TestUser, org_id: uuid.UUID) -> None:
    r = client.post("/api/playground/chat", headers=user.headers, json={
        "org_id": str(org_id), "model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error", r.text


def keys(client: TestClient, user: TestUser, org_id: uuid.UUID) -> list[dict[str, Any]]:
    r = client.get("/api/api-keys", headers=user.headers, params={"org_id": str(org_id)})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def named(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [k for k in items if k["name"] == playground.KEY_NAME]


def later(monkeypatch: pytest.MonkeyPatch, delta: timedelta) -> datetime:
    """The playground's clock ``delta`` ahead (sessions and tokens keep the real one)."""
    now = utcnow() + delta
    monkeypatch.setattr(playground, "utcnow", lambda: now)
    return now


def test_a_key_is_reused_until_revoked(client: TestClient, factory: Factory,
                                       org: uuid.UUID) -> None:
    member = factory.user(org, Role.MEMBER)
    chat(client, member, org)
    chat(client, member, org)
    [key] = named(keys(client, member, org))
    r = client.post(f"/api/api-keys/{key['id']}/revoke", headers=member.headers)
    assert r.status_code == 200, r.text
    chat(client, member, org)  # a revoked key is not used again: a new one
    play = named(keys(client, member, org))
    assert len(play) == 2 and [k["revoked_at"] is None for k in play] == [False, True], play


def test_old_playground_keys_are_deleted_on_the_next_chat(
        client: TestClient, factory: Factory, org: uuid.UUID,
        monkeypatch: pytest.MonkeyPatch) -> None:
    member = factory.user(org, Role.MEMBER)
    other = factory.user(org, Role.MEMBER)
    chat(client, member, org)
    chat(client, other, org)
    [revoked] = named(keys(client, member, org))
    assert client.post(f"/api/api-keys/{revoked['id']}/revoke",
                       headers=member.headers).status_code == 200
    chat(client, member, org)
    [budgeted] = [k for k in named(keys(client, member, org)) if k["revoked_at"] is None]
    app: Any = client.app
    with app.state.sessionmaker() as s, s.begin():
        s.add(Budget(scope=BudgetScope.API_KEY, target_id=uuid.UUID(budgeted["id"]),
                     org_id=org, monthly_eur=Decimal(1)))
    # The user's own key called "playground", expiring soon: not the playground's.
    own = client.post("/api/api-keys", headers=member.headers, json={
        "org_id": str(org), "name": playground.KEY_NAME,
        "expires_at": (utcnow() + timedelta(minutes=10)).isoformat()})
    assert own.status_code == 201, own.text
    # Half an hour on: the cached key nears its end, a new one; the revoked one is younger
    # than KEY_CLEANUP_AFTER, so it stays (late usage batches still find it).
    later(monkeypatch, playground.KEY_TTL)
    chat(client, member, org)
    third = [k for k in named(keys(client, member, org))
             if k["id"] not in (revoked["id"], budgeted["id"], own.json()["id"])]
    assert len(third) == 1
    # Two hours on: the revoked key and the third (expired an hour ago) go; the budgeted one,
    # the user's own and the new fourth stay.
    later(monkeypatch, playground.KEY_TTL * 2 + playground.KEY_CLEANUP_AFTER)
    chat(client, member, org)
    left = {k["id"] for k in named(keys(client, member, org))}
    assert not left & {revoked["id"], third[0]["id"]}, left
    assert {budgeted["id"], own.json()["id"]} <= left and len(left) == 3, left
    # Another member's old key is theirs: listed to them still.
    assert len(named(keys(client, other, org))) == 1
    with app.state.sessionmaker() as s:
        [log] = s.scalars(select(ActionLog).where(ActionLog.type == "api_key.delete")).all()
    assert log.user_id == member.id and len(log.details["api_key_ids"]) == 2
