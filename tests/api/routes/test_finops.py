"""/api/finops routes over real HTTP (TestClient), on Postgres and SQLite."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient

from control_api.background import finops_refresh
from core.models import ActionLog, Budget, Role
from tests.conftest import Factory
from tests.finops.helpers import Seed

NOW = datetime(2025, 3, 11, 12, 0, tzinfo=UTC)


@pytest.fixture
def world(client: TestClient, factory: Factory) -> dict[str, object]:
    """Scaleway L4 (0.75 EUR/h, per minute) for 'llama'; two orgs share it 3:1 by tokens."""
    client.app.state.finops_clock = lambda: NOW  # type: ignore[attr-defined]
    org_a, org_b = factory.org("acme"), factory.org("globex")
    with client.app.state.sessionmaker() as s, s.begin():  # type: ignore[attr-defined]
        seed = Seed(s)
        dep = seed.deployment("llama")
        inst = seed.instance("scaleway", "L4-1-24G", zone="fr-par-2", deployment_id=dep)
        # Running since 1 March 00:00: 10.5 days x 24 h x 0.75 = 189 EUR to NOW.
        seed.interval(inst, datetime(2025, 3, 1, tzinfo=UTC), None)
        idle = seed.instance("scaleway", "H100-1-80G", zone="fr-par-2")
        # 30 minutes and 10 seconds, billed per minute: 31 min x 2.73 / 60 = 1.4105 EUR.
        seed.interval(idle, NOW - timedelta(hours=2), NOW - timedelta(minutes=89, seconds=50))
        ka, kb = seed.api_key(org_a), seed.api_key(org_b)
        seed.usage(NOW - timedelta(hours=3), (200, 100), deployment="llama", api_key_id=ka,
                   org_id=org_a)
        seed.usage(NOW - timedelta(hours=3), (50, 50), deployment="llama", api_key_id=kb,
                   org_id=org_b)
    # Reads never write: the background job derives spans, rollups and budget states.
    with client.app.state.sessionmaker() as s, s.begin():  # type: ignore[attr-defined]
        finops_refresh(s, NOW)
    return {"org_a": org_a, "org_b": org_b, "dep": dep, "ka": ka, "kb": kb}


def test_summary_costs_series_forecast(client: TestClient, admin_headers: dict[str, str],
                                       world: dict[str, object]) -> None:
    r = client.get("/api/finops/summary", headers=admin_headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["burn_rate_eur_per_hour"] == "0.750000"
    assert body["running_instances"] == 1
    assert Decimal(body["month_to_date_eur"]) == Decimal("189") + Decimal("1.4105")
    assert Decimal(body["windows"]["hour"]) == Decimal("0.75")
    assert Decimal(body["windows"]["minute"]) == Decimal("0.0125")
    # Month end: 31 March 00:00 + 1 day: 20.5 days x 24 x 0.75 more.
    assert Decimal(body["month_end_projection_eur"]) == Decimal("190.4105") + Decimal("369")

    r = client.get("/api/finops/costs?window=day&group_by=instance_type", headers=admin_headers)
    assert r.status_code == 200, r.text
    items = {i["key"]: Decimal(i["cost_eur"]) for i in r.json()["items"]}
    assert items == {"L4-1-24G": Decimal("18"), "H100-1-80G": Decimal("1.4105")}
    r = client.get("/api/finops/costs?window=month&group_by=org", headers=admin_headers)
    by_org = {i["name"]: Decimal(i["cost_eur"]) for i in r.json()["items"]}
    # 189 EUR of llama split 300:100; the idle H100 has no deployment: unallocated.
    assert by_org == {"acme": Decimal("141.75"), "globex": Decimal("47.25"),
                      "unallocated": Decimal("1.41")}
    assert Decimal(r.json()["total_eur"]) == sum(by_org.values())

    r = client.get("/api/finops/series?window=day&bucket=hour", headers=admin_headers)
    assert r.status_code == 200, r.text
    pts = r.json()["items"]
    assert len(pts) == 24
    assert Decimal(pts[-1]["cumulative_eur"]) == Decimal(r.json()["total_eur"]) == Decimal(
        "19.4105")

    r = client.get("/api/finops/forecast", headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["horizons"]["24h"] == "18.000000"


@pytest.mark.parametrize("query", [
    "window=fortnight", "group_by=color", "start=2025-03-02T00:00:00Z&end=2025-03-01T00:00:00Z",
    "start=2015-01-01T00:00:00Z&end=2025-01-01T00:00:00Z", "start=not-a-date",
    "window=day&start=2025-03-01T00:00:00Z",
])
def test_bad_ranges_and_groups_are_422(client: TestClient, admin_headers: dict[str, str],
                                       query: str) -> None:
    r = client.get(f"/api/finops/costs?{query}", headers=admin_headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"


def test_series_rejects_unknown_bucket_and_too_many_points(
        client: TestClient, admin_headers: dict[str, str]) -> None:
    assert client.get("/api/finops/series?bucket=week", headers=admin_headers).status_code == 422
    r = client.get("/api/finops/series?window=365d&bucket=minute", headers=admin_headers)
    assert r.status_code == 422


def test_access_levels(client: TestClient, factory: Factory, world: dict[str, object]) -> None:
    member = factory.user(world["org_a"], Role.MEMBER)  # type: ignore[arg-type]
    assert client.get("/api/finops/summary").status_code == 401
    assert client.get("/api/finops/summary", headers=member.headers).status_code == 403
    r = client.get("/api/finops/chargeback", headers=member.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert {i["org"] for i in body["items"]} == {"acme"}
    assert Decimal(body["total_eur"]) == Decimal("141.75")
    r = client.get("/api/finops/unit-costs", headers=member.headers)
    assert [i["deployment"] for i in r.json()["items"]] == ["llama"]
    item = r.json()["items"][0]
    # 189 EUR / 400 tokens; every hour but one was idle.
    assert Decimal(item["eur_per_million_tokens"]) == Decimal("472500")
    assert Decimal(item["idle_share"]) > Decimal("0.99")
    r = client.get("/api/finops/usage?group_by=org&group_by=deployment",
                   headers=member.headers)
    assert r.status_code == 200, r.text
    assert r.json()["items"] == [{"key": {"org": str(world["org_a"]), "deployment": "llama"},
                                  "requests": 1, "prompt_tokens": 200,
                                  "completion_tokens": 100, "total_tokens": 300}]
    assert client.get("/api/finops/usage?group_by=planet",
                      headers=member.headers).status_code == 422


def test_budgets_crud_states_and_access(client: TestClient, admin_headers: dict[str, str],
                                        factory: Factory, world: dict[str, object]) -> None:
    org_a = world["org_a"]
    admin_a = factory.user(org_a, Role.ADMIN)  # type: ignore[arg-type]
    member_a = factory.user(org_a, Role.MEMBER)  # type: ignore[arg-type]
    outsider = factory.user(world["org_b"], Role.OWNER)  # type: ignore[arg-type]
    body = {"scope": "org", "target_id": str(org_a), "monthly_eur": "150"}
    assert client.post("/api/finops/budgets", json=body,
                       headers=member_a.headers).status_code == 403
    assert client.post("/api/finops/budgets", json=body,
                       headers=outsider.headers).status_code == 404
    assert client.post("/api/finops/budgets", json={**body, "extra": 1},
                       headers=admin_a.headers).status_code == 422
    assert client.post("/api/finops/budgets", json={**body, "monthly_eur": "-1"},
                       headers=admin_a.headers).status_code == 422
    r = client.post("/api/finops/budgets", json=body, headers=admin_a.headers)
    assert r.status_code == 201, r.text
    b = r.json()
    # acme's share this month: 141.75 of 150 -> 94.5 %: warning.
    assert (b["state"], b["spent_eur"], b["ratio"]) == ("warning", "141.750000", "0.9450")
    assert client.post("/api/finops/budgets", json=body,
                       headers=admin_a.headers).status_code == 409
    dep_body = {"scope": "deployment", "target_id": str(world["dep"]), "monthly_eur": "100"}
    assert client.post("/api/finops/budgets", json=dep_body,
                       headers=admin_a.headers).status_code == 403
    r = client.post("/api/finops/budgets", json=dep_body, headers=admin_headers)
    assert r.status_code == 201 and r.json()["state"] == "exceeded"
    unknown = {"scope": "api_key", "target_id": str(uuid.uuid4()), "monthly_eur": "1"}
    assert client.post("/api/finops/budgets", json=unknown,
                       headers=admin_headers).status_code == 404

    listed = client.get("/api/finops/budgets", headers=member_a.headers).json()["items"]
    assert [x["id"] for x in listed] == [b["id"]]
    assert client.get(f"/api/finops/budgets/{b['id']}",
                      headers=outsider.headers).status_code == 404
    assert client.get("/api/finops/budgets/not-a-uuid", headers=admin_headers).status_code == 422
    r = client.patch(f"/api/finops/budgets/{b['id']}", json={"monthly_eur": "141.75"},
                     headers=admin_a.headers)
    assert r.status_code == 200 and r.json()["state"] == "exceeded"
    r = client.patch(f"/api/finops/budgets/{b['id']}", json={"monthly_eur": "1000"},
                     headers=admin_a.headers)
    assert r.json()["state"] == "ok"
    with client.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        logs = [a.details["to"] for a in s.query(ActionLog).filter(
            ActionLog.type == "budget.state_changed", ActionLog.org_id == org_a)
            .order_by(ActionLog.id)]
    assert logs == ["warning", "exceeded", "ok"]
    assert client.delete(f"/api/finops/budgets/{b['id']}",
                         headers=member_a.headers).status_code == 403
    assert client.delete(f"/api/finops/budgets/{b['id']}",
                         headers=admin_a.headers).status_code == 204
    with client.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        assert s.get(Budget, uuid.UUID(b["id"])) is None


def test_metrics_exposes_bounded_cost_series(client: TestClient, admin_headers: dict[str, str],
                                             world: dict[str, object]) -> None:
    client.post("/api/finops/budgets", headers=admin_headers, json={
        "scope": "deployment", "target_id": str(world["dep"]), "monthly_eur": "378"})
    text = client.get("/metrics").text
    assert 'inventiv_burn_rate_eur_per_hour{provider="scaleway"} 0.75' in text
    assert 'inventiv_cost_eur_total{provider="scaleway"} 190.4105' in text
    assert 'inventiv_tokens_total{deployment="llama",kind="prompt"} 250.0' in text
    assert "inventiv_budget_ratio{budget_id=" in text and "} 0.5" in text
