"""/api/instances: keyset pagination, filters, detail with history, terminate."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from control_api.lifecycle import CHAIN, open_billing_interval, transition
from control_api.pagination import encode_cursor
from core.models import (
    ActionLog,
    Deployment,
    Instance,
    InstanceState,
    InstanceStateHistory,
    Role,
)

S = InstanceState
T0 = datetime(2025, 6, 1, tzinfo=UTC)


@pytest.fixture
def admin(factory: Any) -> Any:
    return factory.user(platform_admin=True)


def make_instance(factory: Any, *, state: InstanceState = S.READY,
                  created_at: datetime = T0, provider: str = "scaleway",
                  cluster: str = "prod", zone: str | None = "fr-par-2",
                  deployment_id: uuid.UUID | None = None,
                  billing: bool = False) -> uuid.UUID:
    """An instance walked through the real state machine up to ``state``."""
    with factory._session() as s, s.begin():
        inst = Instance(launch_id=f"launch-{uuid.uuid4().hex}", cluster_name=cluster,
                        provider_code=provider, zone_code=zone,
                        instance_type_name="L4-1-24G" if provider == "scaleway" else "local-L4",
                        deployment_id=deployment_id, state=S.REQUESTED, state_entered_at=created_at,
                        created_at=created_at, updated_at=created_at)
        s.add(inst)
        s.flush()
        at = created_at
        if state == S.FAILED:
            transition(s, inst.id, S.PROVISIONING, at=at, actor="test")
            transition(s, inst.id, S.FAILED, at=at, error_code="out_of_stock",
                       error_message="no L4 left", actor="test")
        elif state != S.REQUESTED:
            path = list(CHAIN[1:CHAIN.index(S.TERMINATED) + 1]) if state == S.ARCHIVED \
                else list(CHAIN[1:CHAIN.index(state) + 1])
            if state == S.ARCHIVED:
                path.append(S.ARCHIVED)
            for nxt in path:
                at += timedelta(seconds=10)
                transition(s, inst.id, nxt, at=at, actor="test")
                if billing and nxt == S.PROVISIONING:
                    open_billing_interval(s, inst, at)
        return inst.id


def _list(client: TestClient, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    r = client.get("/api/instances", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_requires_authentication(client: TestClient) -> None:
    assert client.get("/api/instances").status_code == 401
    assert client.get(f"/api/instances/{uuid.uuid4()}").status_code == 401
    assert client.post(f"/api/instances/{uuid.uuid4()}/terminate").status_code == 401


def test_pagination_walks_every_instance_once_newest_first(client: TestClient, factory: Any,
                                                           admin: Any) -> None:
    ids: dict[uuid.UUID, datetime] = {}
    for i in range(7):
        at = T0 + timedelta(minutes=i)
        ids[make_instance(factory, state=S.REQUESTED, created_at=at)] = at
    # Ties on created_at are ordered by id, so none is skipped nor repeated across pages.
    for _ in range(3):
        ids[make_instance(factory, state=S.REQUESTED, created_at=T0 + timedelta(minutes=3))] = \
            T0 + timedelta(minutes=3)
    expected = sorted(ids, key=lambda k: (ids[k], k.hex), reverse=True)

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        body = _list(client, admin.headers, **params)
        pages += 1
        assert len(body["items"]) <= 3
        seen += [i["id"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        if pages == 1:
            # Inserted while paging: newer than every cursor, so it never shows on later pages.
            make_instance(factory, state=S.REQUESTED, created_at=T0 + timedelta(hours=1))
    assert pages == 4
    assert seen == [str(k) for k in expected]
    assert len(_list(client, admin.headers, limit=500)["items"]) == 11
    # An exactly full last page has no next cursor.
    assert _list(client, admin.headers, limit=11)["next_cursor"] is None


def test_default_and_bounded_limit(client: TestClient, factory: Any, admin: Any) -> None:
    for i in range(52):
        make_instance(factory, state=S.REQUESTED, created_at=T0 + timedelta(seconds=i))
    body = _list(client, admin.headers)
    assert len(body["items"]) == 50 and body["next_cursor"]
    for limit in (0, -1, 501, "many"):
        r = client.get("/api/instances", params={"limit": limit}, headers=admin.headers)
        assert r.status_code == 422, limit


def test_filters(client: TestClient, factory: Any, admin: Any) -> None:
    with factory._session() as s, s.begin():
        dep = Deployment(name="llama", spec={"model": "llama"})
        s.add(dep)
        s.flush()
        dep_id = dep.id
    ready = make_instance(factory, state=S.READY, deployment_id=dep_id)
    booting = make_instance(factory, state=S.BOOTING, zone="pl-waw-2")
    local = make_instance(factory, state=S.READY, provider="local", cluster="laptop",
                          zone="local-1")
    failed = make_instance(factory, state=S.FAILED)

    def ids(**params: Any) -> set[str]:
        return {i["id"] for i in _list(client, admin.headers, **params)["items"]}

    assert ids(state="ready") == {str(ready), str(local)}
    assert ids(state="failed") == {str(failed)}
    assert ids(provider="local") == {str(local)}
    assert ids(cluster="prod") == {str(ready), str(booting), str(failed)}
    assert ids(zone="pl-waw-2") == {str(booting)}
    assert ids(deployment_id=str(dep_id)) == {str(ready)}
    assert ids(state="ready", provider="scaleway", cluster="prod", zone="fr-par-2") == {str(ready)}
    assert ids(provider="aws") == set()
    assert ids(deployment_id=str(uuid.uuid4())) == set()
    for bad in ({"state": "running"}, {"deployment_id": "nope"}, {"provider": "p" * 65},
                {"zone": ""}):
        r = client.get("/api/instances", params=bad, headers=admin.headers)
        assert r.status_code == 422, bad
        assert r.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize("cursor", [
    "garbage!!", "bm90IGpzb24", encode_cursor(T0, 42), "WyJ4IiwiYSJd", "W10",
    encode_cursor(T0, uuid.uuid4()).rstrip("A") + "$", "x" * 300,
])
def test_garbage_cursor_is_422(client: TestClient, admin: Any, cursor: str) -> None:
    r = client.get("/api/instances", params={"cursor": cursor}, headers=admin.headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] in ("invalid_cursor", "validation_error")
    if len(cursor) <= 256:
        assert r.json()["error"]["code"] == "invalid_cursor"


def test_members_see_no_platform_instances(client: TestClient, factory: Any) -> None:
    # Instances of no deployment dedicated to the viewer's org are the platform's: not shown
    # (tests/api/test_access_boundary.py covers the dedicated ones).
    viewer = factory.user(factory.org(), Role.VIEWER)
    iid = make_instance(factory)
    assert _list(client, viewer.headers)["items"] == []
    assert client.get(f"/api/instances/{iid}", headers=viewer.headers).status_code == 404


def test_detail_has_ordered_history_and_billing_intervals(client: TestClient, factory: Any,
                                                         admin: Any) -> None:
    iid = make_instance(factory, state=S.READY, billing=True)
    r = client.get(f"/api/instances/{iid}", headers=admin.headers)
    assert r.status_code == 200
    body = r.json()
    assert body["state"] == "ready" and body["provider"] == "scaleway"
    assert body["instance_type"] == "L4-1-24G" and body["zone"] == "fr-par-2"
    assert [(h["from_state"], h["to_state"]) for h in body["history"]] == [
        ("requested", "provisioning"), ("provisioning", "booting"), ("booting", "joining"),
        ("joining", "ready"),
    ]
    ats = [h["at"] for h in body["history"]]
    assert ats == sorted(ats)
    assert len(body["billing_intervals"]) == 1
    interval = body["billing_intervals"][0]
    assert interval["started_at"] == "2025-06-01T00:00:10Z" and interval["ended_at"] is None
    assert client.get(f"/api/instances/{uuid.uuid4()}", headers=admin.headers).status_code == 404
    assert client.get("/api/instances/123", headers=admin.headers).status_code == 422


@pytest.mark.parametrize("state", [S.REQUESTED, S.BOOTING, S.READY, S.DRAINING, S.FAILED])
def test_terminate_moves_to_terminating(client: TestClient, factory: Any, admin: Any,
                                        state: InstanceState) -> None:
    at = datetime(2025, 7, 1, 8, 30, tzinfo=UTC)
    client.app.state.clock = lambda: at  # type: ignore[attr-defined]
    iid = make_instance(factory, state=state)
    r = client.post(f"/api/instances/{iid}/terminate", json={"reason": "scale down by hand"},
                    headers=admin.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "terminating"
    assert body["state_entered_at"] == "2025-07-01T08:30:00Z"
    last = body["history"][-1]
    assert (last["from_state"], last["to_state"]) == (state.value, "terminating")
    assert last["actor"] == "control_api" and last["reason"] == "scale down by hand"
    with factory._session() as s:
        log = s.scalars(select(ActionLog).where(ActionLog.instance_id == iid)
                        .order_by(ActionLog.id.desc())).first()
        assert log is not None and log.user_id == admin.id
        assert log.details is not None and log.details["to"] == "terminating"
    again = client.post(f"/api/instances/{iid}/terminate", headers=admin.headers)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "invalid_transition"


def test_terminate_without_body_uses_a_default_reason(client: TestClient, factory: Any,
                                                      admin: Any) -> None:
    iid = make_instance(factory, state=S.READY)
    r = client.post(f"/api/instances/{iid}/terminate", headers=admin.headers)
    assert r.status_code == 200
    assert r.json()["history"][-1]["reason"]


@pytest.mark.parametrize("state", [S.TERMINATING, S.TERMINATED, S.ARCHIVED])
def test_terminate_refused_when_gone_or_going(client: TestClient, factory: Any, admin: Any,
                                              state: InstanceState) -> None:
    iid = make_instance(factory, state=state)
    with factory._session() as s:
        before = len(list(s.scalars(select(InstanceStateHistory)
                                    .where(InstanceStateHistory.instance_id == iid))))
    r = client.post(f"/api/instances/{iid}/terminate", json={}, headers=admin.headers)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "invalid_transition"
    with factory._session() as s:
        inst = s.get(Instance, iid)
        assert inst is not None and inst.state == state
        after = len(list(s.scalars(select(InstanceStateHistory)
                                   .where(InstanceStateHistory.instance_id == iid))))
        assert after == before


def test_terminate_access_and_bad_input(client: TestClient, factory: Any, admin: Any) -> None:
    iid = make_instance(factory, state=S.READY)
    org = factory.org()
    owner = factory.user(org, Role.OWNER)
    url = f"/api/instances/{iid}/terminate"
    assert client.post(url, headers=owner.headers).status_code == 403
    for body in ({"reason": "x", "force": True}, {"reason": "r" * 501}, {"reason": 5}, [1]):
        r = client.post(url, json=body, headers=admin.headers)
        assert r.status_code == 422, body
    assert client.post(f"/api/instances/{uuid.uuid4()}/terminate",
                       headers=admin.headers).status_code == 404
    assert client.post("/api/instances/zzz/terminate", headers=admin.headers).status_code == 422
    with factory._session() as s:
        inst = s.get(Instance, iid)
        assert inst is not None and inst.state == S.READY


@pytest.mark.parametrize("state", [S.TERMINATED, S.FAILED])
def test_archive_keeps_the_history_and_is_final(client: TestClient, factory: Any, admin: Any,
                                                state: InstanceState) -> None:
    iid = make_instance(factory, state=state)
    url = f"/api/instances/{iid}/archive"
    owner = factory.user(factory.org(), Role.OWNER)
    assert client.post(url, headers=owner.headers).status_code == 403
    r = client.post(url, headers=admin.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "archived"
    assert (body["history"][-1]["from_state"], body["history"][-1]["to_state"]) \
        == (state.value, "archived")
    again = client.post(url, headers=admin.headers)
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_transition"
    assert client.post(f"/api/instances/{iid}/terminate",
                       headers=admin.headers).status_code == 409


@pytest.mark.parametrize("state", [S.REQUESTED, S.READY, S.TERMINATING])
def test_archive_refuses_a_vm_that_may_still_run(client: TestClient, factory: Any, admin: Any,
                                                 state: InstanceState) -> None:
    iid = make_instance(factory, state=state)
    r = client.post(f"/api/instances/{iid}/archive", headers=admin.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_transition"
    assert client.post(f"/api/instances/{uuid.uuid4()}/archive",
                       headers=admin.headers).status_code == 404
