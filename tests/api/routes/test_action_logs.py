"""/api/action-logs: filters, time range, cursor pagination, counts per status, visibility."""

from __future__ import annotations

import base64
import json
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from control_api.pagination import encode_cursor
from core.models import ActionLog, Role

T0 = datetime(2025, 6, 1, tzinfo=UTC)


@dataclass
class Row:
    id: int
    type: str
    status: str
    component: str
    org_id: uuid.UUID | None
    user_id: uuid.UUID | None
    instance_id: uuid.UUID | None
    created_at: datetime


def add_log(factory: Any, *, type: str = "instance.transition", status: str = "success",
            component: str = "node_provider", org_id: uuid.UUID | None = None,
            user_id: uuid.UUID | None = None, instance_id: uuid.UUID | None = None,
            created_at: datetime = T0) -> Row:
    with factory._session() as s, s.begin():
        log = ActionLog(type=type, status=status, component=component, org_id=org_id,
                        user_id=user_id, instance_id=instance_id, created_at=created_at,
                        details={"n": 1})
        s.add(log)
        s.flush()
        return Row(log.id, type, status, component, org_id, user_id, instance_id, created_at)


@pytest.fixture
def world(factory: Any) -> dict[str, Any]:
    """Two orgs with a member each, an admin, and 24 logs spread over them (with time ties)."""
    with factory._session() as s, s.begin():
        s.execute(delete(ActionLog))  # the bootstrap's own log would skew the counts
    org_a, org_b = factory.org(), factory.org()
    alice = factory.user(org_a, Role.MEMBER)
    bob = factory.user(org_b, Role.VIEWER)
    admin = factory.user(platform_admin=True)
    inst = uuid.uuid4()
    rows: list[Row] = []
    statuses = ["success", "failure", "info"]
    for i in range(24):
        rows.append(add_log(
            factory,
            type="instance.transition" if i % 2 == 0 else "api_key.create",
            status=statuses[i % 3],
            component="node_provider" if i % 4 < 2 else "control_api",
            org_id=(org_a, org_b, None)[i % 3],
            user_id=(alice.id if i % 5 == 0 else bob.id if i % 7 == 0 else None),
            instance_id=inst if i % 6 == 0 else None,
            # Several logs share an instant: the id breaks the tie in the order.
            created_at=T0 + timedelta(minutes=i // 3),
        ))
    return {"rows": rows, "org_a": org_a, "org_b": org_b, "alice": alice, "bob": bob,
            "admin": admin, "instance": inst}


def _order(rows: list[Row]) -> list[int]:
    return [r.id for r in sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)]


def walk(client: TestClient, headers: dict[str, str], limit: int,
         **params: Any) -> tuple[list[int], list[dict[str, int]], int]:
    """Every page of a search: the ids in order, the counts of each page, the page count."""
    ids: list[int] = []
    counts: list[dict[str, int]] = []
    cursor = None
    pages = 0
    while True:
        q = {**params, "limit": limit}
        if cursor:
            q["cursor"] = cursor
        r = client.get("/api/action-logs", params=q, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        pages += 1
        assert len(body["items"]) <= limit
        ids += [i["id"] for i in body["items"]]
        counts.append(body["counts"])
        cursor = body["next_cursor"]
        if cursor is None:
            return ids, counts, pages


def test_requires_authentication(client: TestClient) -> None:
    r = client.get("/api/action-logs")
    assert r.status_code == 401


def test_admin_pages_through_all_logs_with_stable_counts(client: TestClient,
                                                         world: dict[str, Any]) -> None:
    rows = world["rows"]
    ids, counts, pages = walk(client, world["admin"].headers, limit=5)
    assert pages == 5
    assert ids == _order(rows)
    expected = dict(Counter(r.status for r in rows))
    assert expected == {"success": 8, "failure": 8, "info": 8}
    assert all(c == expected for c in counts)
    item = client.get("/api/action-logs", params={"limit": 1},
                      headers=world["admin"].headers).json()["items"][0]
    assert set(item) == {"id", "type", "component", "status", "error_code", "error_message",
                         "instance_id", "user_id", "org_id", "duration_ms", "parent_id",
                         "metadata", "created_at"}
    assert item["metadata"] == {"n": 1}


def test_pages_are_stable_under_inserts(client: TestClient, factory: Any,
                                        world: dict[str, Any]) -> None:
    headers = world["admin"].headers
    first = client.get("/api/action-logs", params={"limit": 10}, headers=headers).json()
    # A log written while the client pages (newer than everything) must not shift later pages.
    add_log(factory, status="failure", created_at=T0 + timedelta(days=1))
    rest: list[int] = []
    cursor = first["next_cursor"]
    while cursor:
        body = client.get("/api/action-logs", params={"limit": 10, "cursor": cursor},
                          headers=headers).json()
        rest += [i["id"] for i in body["items"]]
        cursor = body["next_cursor"]
        last_counts = body["counts"]
    assert [i["id"] for i in first["items"]] + rest == _order(world["rows"])
    # Counts describe the current matches, the new log included.
    assert last_counts["failure"] == 9


def test_combined_filters_and_counts(client: TestClient, world: dict[str, Any]) -> None:
    rows: list[Row] = world["rows"]
    headers = world["admin"].headers
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"type": "instance.transition"}, lambda r: r.type == "instance.transition"),
        ({"status": "failure"}, lambda r: r.status == "failure"),
        ({"component": "control_api"}, lambda r: r.component == "control_api"),
        ({"org_id": str(world["org_a"])}, lambda r: r.org_id == world["org_a"]),
        ({"user_id": str(world["alice"].id)}, lambda r: r.user_id == world["alice"].id),
        ({"instance_id": str(world["instance"])}, lambda r: r.instance_id == world["instance"]),
        ({"type": "api_key.create", "status": "info", "component": "node_provider"},
         lambda r: (r.type, r.status, r.component) == ("api_key.create", "info",
                                                        "node_provider")),
        ({"org_id": str(world["org_b"]), "since": (T0 + timedelta(minutes=2)).isoformat(),
          "until": (T0 + timedelta(minutes=6)).isoformat()},
         lambda r: r.org_id == world["org_b"]
         and T0 + timedelta(minutes=2) <= r.created_at < T0 + timedelta(minutes=6)),
        ({"status": "success", "since": "2025-06-01T02:03:00+02:00"},  # 00:03Z, inclusive
         lambda r: r.status == "success" and r.created_at >= T0 + timedelta(minutes=3)),
        ({"until": (T0 + timedelta(minutes=1)).isoformat()},  # exclusive
         lambda r: r.created_at < T0 + timedelta(minutes=1)),
        ({"type": "nothing.like.this"}, lambda r: False),
    ]
    for params, pred in cases:
        matching = [r for r in rows if pred(r)]
        ids, counts, _ = walk(client, headers, limit=2, **params)
        assert ids == _order(matching), params
        expected = dict(Counter(r.status for r in matching))
        assert all(c == expected for c in counts), params
    # since == until is an empty (valid) range.
    same = T0.isoformat()
    body = client.get("/api/action-logs", params={"since": same, "until": same},
                      headers=headers).json()
    assert body["items"] == [] and body["counts"] == {}


def test_non_admins_see_their_orgs_and_their_own_actions(client: TestClient, factory: Any,
                                                         world: dict[str, Any]) -> None:
    rows: list[Row] = world["rows"]
    for who, org in (("alice", world["org_a"]), ("bob", world["org_b"])):
        user = world[who]
        visible = [r for r in rows if r.org_id == org or r.user_id == user.id]
        # The rule shows something beyond the org filter (own actions in other orgs).
        assert any(r.org_id != org for r in visible)
        ids, counts, _ = walk(client, user.headers, limit=4)
        assert ids == _order(visible), who
        assert counts[0] == dict(Counter(r.status for r in visible))
    # Naming another org's id does not widen what alice may see.
    other = client.get("/api/action-logs", params={"org_id": str(world["org_b"])},
                       headers=world["alice"].headers).json()
    assert {i["org_id"] for i in other["items"]} <= {str(world["org_b"])}
    assert all(i["user_id"] == str(world["alice"].id) for i in other["items"])
    outsider = client.get("/api/action-logs", headers=factory.user().headers).json()
    assert outsider == {"items": [], "next_cursor": None, "counts": {}}


def _b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "not base64 at all!",
    "%%%",
    _b64({"created_at": "2025-01-01T00:00:00Z", "id": 1}),
    _b64(["2025-01-01T00:00:00Z"]),
    _b64(["2025-01-01T00:00:00", 1]),  # naive
    _b64(["yesterday", 1]),
    _b64(["2025-01-01T00:00:00Z", "1"]),
    _b64(["2025-01-01T00:00:00Z", True]),
    _b64(["2025-01-01T00:00:00Z", 2**70]),
    _b64(["0001-01-01T00:00:00+01:00", 1]),
    encode_cursor(T0, uuid.uuid4()),  # an instances cursor
    base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(),
])
def test_garbage_cursor_is_422(client: TestClient, world: dict[str, Any], cursor: str) -> None:
    r = client.get("/api/action-logs", params={"cursor": cursor}, headers=world["admin"].headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_cursor"


@pytest.mark.parametrize("params,fragment", [
    ({"since": "2025-06-02T00:00:00Z", "until": "2025-06-01T00:00:00Z"}, "since must not be after"),
    ({"since": "2025-06-01T00:00:00"}, "timezone"),
    ({"until": "last week"}, "until"),
    ({"since": "9999-12-31T23:59:00-05:00"}, "range"),
    ({"limit": 0}, "limit"),
    ({"limit": 501}, "limit"),
    ({"instance_id": "abc"}, "instance_id"),
    ({"status": "s" * 17}, "status"),
    ({"cursor": "x" * 300}, "cursor"),
    ({"typo": "1"}, "typo"),
])
def test_bad_parameters_are_422(client: TestClient, world: dict[str, Any],
                                params: dict[str, Any], fragment: str) -> None:
    r = client.get("/api/action-logs", params=params, headers=world["admin"].headers)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_error"
    assert fragment in err["message"], err["message"]


def test_limit_bounds_accept_1_and_500(client: TestClient, world: dict[str, Any]) -> None:
    headers = world["admin"].headers
    one = client.get("/api/action-logs", params={"limit": 1}, headers=headers).json()
    assert len(one["items"]) == 1 and one["next_cursor"]
    big = client.get("/api/action-logs", params={"limit": 500}, headers=headers).json()
    assert len(big["items"]) == 24 and big["next_cursor"] is None
    default = client.get("/api/action-logs", headers=headers).json()
    assert len(default["items"]) == 24
