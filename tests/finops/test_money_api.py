"""Attribution through the API (unit costs, chargeback), per-request records and export,
/metrics access, and reads that never write — on Postgres and SQLite."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from control_api.app import create_app
from control_api.background import finops_refresh
from control_api.services.deployments import observed_replicas
from control_api.settings import Settings
from core.models import (
    ActionLog,
    BillingInterval,
    Budget,
    BudgetScope,
    CostSpan,
    Instance,
    Role,
    UsageHourly,
    UsageRecord,
)
from core.models_finops import ReplicaPlacement
from core.serve_names import serve_deployment_name
from finops.attribution_db import ObservedReplica, record_placements
from tests.conftest import Factory
from tests.finops.helpers import Seed

NOW = datetime(2025, 3, 11, 12, 0, tzinfo=UTC)
T = NOW - timedelta(hours=10)


@pytest.fixture
def walk(client: TestClient, factory: Factory) -> dict[str, uuid.UUID]:
    """The laptop walk-through in rows: a head, two local "GPU" nodes autoscaled for Serve
    (no deployment on their interval), one replica each after a boot; two orgs' usage."""
    client.app.state.finops_clock = lambda: NOW  # type: ignore[attr-defined]
    org_a, org_b = factory.org("acme"), factory.org("globex")
    with client.app.state.sessionmaker() as s, s.begin():  # type: ignore[attr-defined]
        seed = Seed(s)
        p = seed.provider("loc", 1, 0)
        seed.itype(p, "L4", [(datetime(2020, 1, 1, tzinfo=UTC), "0.75")])
        seed.itype(p, "local-head", [(datetime(2020, 1, 1, tzinfo=UTC), "0.10")])
        chat, embed = seed.deployment("tiny-chat"), seed.deployment("minilm-embed")
        head = seed.instance(p, "local-head")
        s.get(Instance, head).node_type = "head"  # type: ignore[union-attr]
        w1, w2 = seed.instance(p, "L4"), seed.instance(p, "L4")
        for inst in (head, w1, w2):
            seed.interval(inst, T, None)
        # Boot (5 min idle), then the replica; w2's replica left 1 h ago (idle since).
        s.add_all([
            ReplicaPlacement(replica_id="r1", deployment_id=chat, deployment="tiny-chat",
                             ray_node_id="n1", instance_id=w1, share_ppm=1_000_000,
                             started_at=T + timedelta(minutes=5)),
            ReplicaPlacement(replica_id="r2", deployment_id=embed, deployment="minilm-embed",
                             ray_node_id="n2", instance_id=w2, share_ppm=1_000_000,
                             started_at=T + timedelta(minutes=6),
                             ended_at=NOW - timedelta(hours=1))])
        ka, kb = seed.api_key(org_a), seed.api_key(org_b)
        seed.usage(NOW - timedelta(hours=3), (300, 300), deployment="tiny-chat",
                   api_key_id=ka, org_id=org_a)
        seed.usage(NOW - timedelta(hours=2), (200, 200), deployment="tiny-chat",
                   api_key_id=kb, org_id=org_b)
        seed.usage(NOW - timedelta(hours=2), (1000, 0), deployment="minilm-embed",
                   api_key_id=kb, org_id=org_b)
        s.flush()
        finops_refresh(s, NOW)  # the background job's part
    return {"org_a": org_a, "org_b": org_b, "chat": chat, "embed": embed, "ka": ka, "kb": kb}


def test_worker_cost_is_attributed_and_unit_cost_includes_idle(
        client: TestClient, admin_headers: dict[str, str], factory: Factory,
        walk: dict[str, uuid.UUID]) -> None:
    r = client.get("/api/finops/unit-costs?window=day", headers=admin_headers)
    assert r.status_code == 200, r.text
    items = {i["deployment"]: i for i in r.json()["items"]}
    # Each worker: 10 h x 0.75 = 7.5 EUR, all of it (idle boot and idle tail) to its deployment.
    assert Decimal(items["tiny-chat"]["cost_eur"]) == Decimal("7.5")
    assert Decimal(items["minilm-embed"]["cost_eur"]) == Decimal("7.5")
    assert Decimal(items["(platform overhead)"]["cost_eur"]) == Decimal("1.0")
    # 7.5 EUR / 1000 tokens = 7500 EUR per million, idle included.
    assert Decimal(items["tiny-chat"]["eur_per_million_tokens"]) == Decimal("7500")
    assert Decimal(items["tiny-chat"]["idle_cost_eur"]) > 0
    # Overhead split by token share: 1 EUR over 1000 : 1000 tokens.
    r = client.get("/api/finops/unit-costs?window=day&split_overhead=true",
                   headers=admin_headers)
    split = {i["deployment"]: Decimal(i["cost_eur"]) for i in r.json()["items"]}
    assert split == {"tiny-chat": Decimal("8"), "minilm-embed": Decimal("8")}

    r = client.get("/api/finops/chargeback?window=day", headers=admin_headers)
    body = r.json()
    lines = {(i["deployment"], i["org"]): Decimal(i["cost_eur"]) for i in body["items"]}
    assert lines == {("tiny-chat", "acme"): Decimal("4.50"),
                     ("tiny-chat", "globex"): Decimal("3.00"),
                     ("minilm-embed", "globex"): Decimal("7.50"),
                     ("(platform overhead)", None): Decimal("1.00")}
    assert Decimal(body["total_eur"]) == Decimal("16.00")

    # Finding 6: a member of acme sees acme's tokens only, its share of the cost, no overhead.
    member = factory.user(walk["org_a"], Role.MEMBER)
    r = client.get("/api/finops/unit-costs?window=day", headers=member.headers)
    mine = {i["deployment"]: i for i in r.json()["items"]}
    assert set(mine) == {"tiny-chat"}
    assert (mine["tiny-chat"]["prompt_tokens"], mine["tiny-chat"]["requests"]) == (300, 1)
    assert Decimal(mine["tiny-chat"]["cost_eur"]) == Decimal("4.5")
    assert Decimal(mine["tiny-chat"]["eur_per_million_tokens"]) == Decimal("7500")


def test_reads_never_write(client: TestClient, admin_headers: dict[str, str],
                           walk: dict[str, uuid.UUID]) -> None:
    sm: sessionmaker[Session] = client.app.state.sessionmaker  # type: ignore[attr-defined]
    with sm() as s, s.begin():
        seed = Seed(s)
        inst = seed.instance("loc", "L4")
        seed.interval(inst, NOW - timedelta(minutes=30), None)  # pending for the ledger
        seed.usage(NOW - timedelta(minutes=1), (1, 1), deployment="tiny-chat")
        s.add(Budget(scope=BudgetScope.DEPLOYMENT, target_id=walk["chat"], monthly_eur=1))

    def snapshot() -> tuple[int, ...]:
        with sm() as s:
            return (s.scalar(select(func.count()).select_from(CostSpan)) or 0,
                    s.scalar(select(func.count()).select_from(UsageHourly)) or 0,
                    s.scalar(select(func.count()).select_from(ActionLog)) or 0,
                    s.scalar(select(func.count()).where(BillingInterval.ledger_spans)) or 0,
                    s.scalar(select(func.count()).where(UsageRecord.rolled_up)) or 0,
                    s.scalar(select(func.count()).where(Budget.evaluated_at.is_not(None))) or 0)

    before = snapshot()
    for path in ("/api/finops/summary", "/api/finops/costs?group_by=deployment",
                 "/api/finops/series?window=day", "/api/finops/forecast",
                 "/api/finops/unit-costs", "/api/finops/chargeback", "/api/finops/usage",
                 "/api/finops/budgets", "/api/finops/usage/records",
                 "/api/finops/usage/export", "/metrics"):
        assert client.get(path, headers=admin_headers).status_code == 200, path
    assert snapshot() == before
    with sm() as s, s.begin():
        finops_refresh(s, NOW)
    assert snapshot() != before


def test_usage_records_are_org_scoped_paginated_and_exported(
        client: TestClient, admin_headers: dict[str, str], factory: Factory,
        walk: dict[str, uuid.UUID]) -> None:
    r = client.get("/api/finops/usage/records?limit=2", headers=admin_headers)
    assert r.status_code == 200, r.text
    first = r.json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    r = client.get(f"/api/finops/usage/records?limit=2&cursor={first['next_cursor']}",
                   headers=admin_headers)
    second = r.json()
    assert len(second["items"]) == 1 and second["next_cursor"] is None
    ids = [i["request_id"] for i in first["items"] + second["items"]]
    assert len(set(ids)) == 3
    one = next(i for i in first["items"] + second["items"]
               if i["org_id"] == str(walk["org_a"]))
    assert (one["deployment"], one["prompt_tokens"], one["completion_tokens"],
            one["status"]) == ("tiny-chat", 300, 300, "ok")
    # 600 of the 1000 tokens tiny-chat served that day, of its 7.5 EUR attributed cost.
    assert Decimal(one["cost_eur"]) == Decimal("4.5")
    r = client.get(f"/api/finops/usage/records?request_id={one['request_id']}",
                   headers=admin_headers)
    assert [i["request_id"] for i in r.json()["items"]] == [one["request_id"]]
    assert client.get("/api/finops/usage/records?request_id=nope",
                      headers=admin_headers).json() == {"items": [], "next_cursor": None}
    r = client.get(f"/api/finops/usage/records?key_id={walk['kb']}", headers=admin_headers)
    assert {i["api_key_id"] for i in r.json()["items"]} == {str(walk["kb"])}
    since = (NOW - timedelta(hours=2, minutes=30)).isoformat().replace("+00:00", "Z")
    r = client.get("/api/finops/usage/records", params={"since": since},
                   headers=admin_headers)
    assert len(r.json()["items"]) == 2
    assert client.get("/api/finops/usage/records?cursor=garbage",
                      headers=admin_headers).status_code == 422
    assert client.get("/api/finops/usage/records?key_id=not-a-uuid",
                      headers=admin_headers).status_code == 422

    member = factory.user(walk["org_a"], Role.MEMBER)
    r = client.get("/api/finops/usage/records", headers=member.headers)
    assert {i["org_id"] for i in r.json()["items"]} == {str(walk["org_a"])}
    r = client.get(f"/api/finops/usage/records?key_id={walk['kb']}", headers=member.headers)
    assert r.json()["items"] == []
    r = client.get("/api/finops/usage/export?format=ndjson", headers=member.headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(x) for x in r.text.splitlines() if x]
    assert [x["org_id"] for x in lines] == [str(walk["org_a"])]
    r = client.get("/api/finops/usage/export", headers=admin_headers)
    assert len([x for x in r.text.splitlines() if x]) == 3
    r = client.get("/api/finops/usage/export?format=csv", headers=admin_headers)
    assert r.status_code == 422 and r.json()["error"]["code"]
    assert TestClient(client.app).get("/api/finops/usage/records").status_code == 401


@pytest.fixture
def token_client(db: sessionmaker[Session], settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update={"metrics_token": SecretStr("scrape-me")}))
    with TestClient(app) as c:
        yield c


def test_metrics_needs_the_scrape_token_when_set(token_client: TestClient) -> None:
    r = token_client.get("/metrics")
    assert r.status_code == 401 and r.json()["error"]["code"] == "metrics_token_required"
    assert "scrape-me" not in r.text
    assert token_client.get("/metrics", headers={
        "Authorization": "Bearer wrong"}).status_code == 401
    r = token_client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert r.status_code == 200 and "inventiv_" in r.text


def test_metrics_without_token_only_for_private_peers(client: TestClient) -> None:
    app = client.app
    public = TestClient(app, client=("8.8.8.8", 4000))
    r = public.get("/metrics")
    assert r.status_code == 403 and r.json()["error"]["code"] == "metrics_forbidden"
    assert TestClient(app, client=("10.1.2.3", 4000)).get("/metrics").status_code == 200
    assert TestClient(app, client=("127.0.0.1", 4000)).get("/metrics").status_code == 200


def test_placements_recorded_from_serve_status(db: sessionmaker[Session]) -> None:
    with db() as s, s.begin():
        seed = Seed(s)
        p = seed.provider("loc", 1, 0)
        seed.itype(p, "L4", [(datetime(2020, 1, 1, tzinfo=UTC), "0.75")])
        dep = seed.deployment("tiny-chat", {"model": {"name": "tiny"}})
        w = seed.instance(p, "L4")
        s.get(Instance, w).ray_node_id = "ab" * 28  # type: ignore[union-attr]
    details = {"applications": {"inventiv": {"deployments": {
        serve_deployment_name("tiny"): {"replicas": [
            {"replica_id": "rep-1", "node_id": "ab" * 28, "state": "RUNNING",
             "start_time_s": (NOW - timedelta(minutes=3)).timestamp()},
            {"replica_id": "rep-2", "node_id": "cd" * 28, "state": "STOPPING"}]},
        "not-ours": {"replicas": [{"replica_id": "x", "node_id": "ef" * 28,
                                   "state": "RUNNING"}]}}}}}
    with db() as s, s.begin():
        seen = observed_replicas(s, details, "inventiv")
        by_id = {o.replica_id: o for o in seen}
        assert set(by_id) == {"rep-1", "x"}
        assert (by_id["rep-1"].deployment_id, by_id["rep-1"].instance_id) == (dep, w)
        assert by_id["x"].deployment_id is None and by_id["x"].instance_id is None
        assert record_placements(s, seen, NOW) == {"opened": 2, "closed": 0, "live": 2}
        assert record_placements(s, seen, NOW + timedelta(minutes=1))["opened"] == 0
        rows = {r.replica_id: r for r in s.scalars(select(ReplicaPlacement))}
        assert rows["rep-1"].started_at == NOW - timedelta(minutes=3)
        later = [o for o in seen if o.replica_id != "rep-1"]
        assert record_placements(s, later, NOW + timedelta(minutes=2))["closed"] == 1
        assert rows["rep-1"].ended_at == NOW + timedelta(minutes=2)
        # A replica that comes back later is a new placement.
        back = [ObservedReplica("rep-1", dep, "tiny-chat", "ab" * 28, w, 1_000_000)]
        assert record_placements(s, back, NOW + timedelta(minutes=5))["opened"] == 1


def test_alert_rules_use_metrics_the_control_api_exports(
        client: TestClient, admin_headers: dict[str, str], walk: dict[str, uuid.UUID]) -> None:
    import re
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2] / "configs" / "prometheus"
    config = yaml.safe_load((root / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    r = client.post("/api/finops/budgets", headers=admin_headers, json={
        "scope": "deployment", "target_id": str(walk["chat"]), "monthly_eur": "10"})
    assert r.status_code == 201, r.text
    scraped = set(re.findall(r"^(inventiv_\w+?)(?:\{| )", client.get("/metrics").text, re.M))
    used: set[str] = set()
    for path in sorted((root / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                assert rule["alert"] and rule["expr"] and rule["labels"]["severity"]
                used |= set(re.findall(r"\binventiv_\w+", rule["expr"]))
    assert used and used <= scraped, used - scraped
