"""/api/catalog: seeded types and prices, filters, price versions in force, adding prices."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from core.models import ActionLog, InstanceTypePrice, Role

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def admin(factory: Any) -> dict[str, str]:
    return factory.user(platform_admin=True).headers  # type: ignore[no-any-return]


@pytest.fixture
def member(factory: Any) -> dict[str, str]:
    return factory.user(factory.org(), Role.MEMBER).headers  # type: ignore[no-any-return]


def _types(client: TestClient, headers: dict[str, str], **params: str) -> dict[str, dict[str, Any]]:
    r = client.get("/api/catalog/instance-types", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return {t["name"]: t for t in r.json()["items"]}


def _type_id(client: TestClient, headers: dict[str, str], name: str) -> str:
    return str(_types(client, headers)[name]["id"])


def test_catalog_requires_authentication(client: TestClient) -> None:
    for path in ("/api/catalog/providers", "/api/catalog/zones", "/api/catalog/instance-types",
                 f"/api/catalog/instance-types/{uuid.uuid4()}"):
        r = client.get(path)
        assert r.status_code == 401, path
        assert r.json()["error"]["code"] == "unauthorized"


def test_providers_and_zones(client: TestClient, member: dict[str, str]) -> None:
    r = client.get("/api/catalog/providers", headers=member)
    assert r.status_code == 200
    providers = {p["code"]: p for p in r.json()["items"]}
    assert set(providers) == {"scaleway", "local"}
    assert providers["scaleway"]["billing_granularity_seconds"] == 60

    zones = client.get("/api/catalog/zones", headers=member).json()["items"]
    assert {(z["code"], z["region"], z["provider"]) for z in zones} == {
        ("fr-par-1", "fr-par", "scaleway"), ("fr-par-2", "fr-par", "scaleway"),
        ("pl-waw-2", "pl-waw", "scaleway"), ("local-1", "local", "local"),
    }
    local = client.get("/api/catalog/zones", params={"provider": "local"}, headers=member)
    assert [z["code"] for z in local.json()["items"]] == ["local-1"]
    unknown = client.get("/api/catalog/zones", params={"provider": "nope"}, headers=member)
    assert unknown.status_code == 200 and unknown.json()["items"] == []
    too_long = client.get("/api/catalog/zones", params={"provider": "x" * 65}, headers=member)
    assert too_long.status_code == 422


def test_instance_types_show_seeded_prices_as_strings(client: TestClient,
                                                      member: dict[str, str]) -> None:
    types = _types(client, member)
    l4 = types["L4-1-24G"]
    assert l4["hourly_eur"] == "0.75"  # a JSON string, trimmed the same way on every backend
    assert l4["provider"] == "scaleway"
    assert (l4["gpu_count"], l4["gpu_model"], l4["gpu_vram_gb"]) == (1, "L4", 24)
    assert l4["price_effective_from"] == "2020-01-01T00:00:00Z"
    assert {z["zone"] for z in l4["zones"]} == {"fr-par-2", "pl-waw-2"}
    assert all(z["availability"] == "available" for z in l4["zones"])
    assert types["L4-8-24G"]["hourly_eur"] == "6.00"
    assert types["H100-SXM-8-80G"]["hourly_eur"] == "23.028"
    assert types["RENDER-S"]["hourly_eur"] == "1.2426"
    assert types["local-L40S"]["ray_resources"]["accelerator_type:L40S"] == 1
    assert len(types) == 17


def test_instance_type_filters(client: TestClient, member: dict[str, str]) -> None:
    assert set(_types(client, member, provider="local")) == {"local-L4", "local-L40S", "local-H100"}
    assert set(_types(client, member, zone="fr-par-1")) == {"RENDER-S"}
    waw = set(_types(client, member, zone="pl-waw-2"))
    assert waw == {"L4-1-24G", "L4-2-24G", "L4-4-24G", "L4-8-24G", "L40S-1-48G", "L40S-2-48G",
                   "L40S-4-48G", "L40S-8-48G", "H100-1-80G", "H100-2-80G"}
    # gpu_model is matched whole and case-insensitively (H100-SXM is another model).
    assert set(_types(client, member, gpu_model="h100")) == {"H100-1-80G", "H100-2-80G",
                                                              "local-H100"}
    combined = _types(client, member, provider="scaleway", zone="fr-par-2", gpu_model="L40S")
    assert set(combined) == {"L40S-1-48G", "L40S-2-48G", "L40S-4-48G", "L40S-8-48G"}
    assert _types(client, member, provider="aws") == {}
    assert _types(client, member, zone="mars-1") == {}
    for bad in ({"provider": ""}, {"zone": "z" * 65}, {"gpu_model": "g" * 100}):
        r = client.get("/api/catalog/instance-types", params=bad, headers=member)
        assert r.status_code == 422, bad
        assert r.json()["error"]["code"] == "validation_error"


def test_get_instance_type(client: TestClient, member: dict[str, str]) -> None:
    tid = _type_id(client, member, "H100-1-80G")
    r = client.get(f"/api/catalog/instance-types/{tid}", headers=member)
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == "H100-1-80G" and body["hourly_eur"] == "2.73"
    assert [p["hourly_eur"] for p in body["prices"]] == ["2.73"]
    assert client.get(f"/api/catalog/instance-types/{uuid.uuid4()}",
                      headers=member).status_code == 404
    assert client.get("/api/catalog/instance-types/not-a-uuid", headers=member).status_code == 422


def test_price_in_force_follows_the_clock(client: TestClient, admin: dict[str, str]) -> None:
    now = {"t": T0}
    client.app.state.clock = lambda: now["t"]  # type: ignore[attr-defined]
    tid = _type_id(client, admin, "L4-1-24G")
    url = f"/api/catalog/instance-types/{tid}/prices"

    past = client.post(url, json={"hourly_eur": "0.80",
                                  "effective_from": (T0 - timedelta(days=1)).isoformat()},
                       headers=admin)
    assert past.status_code == 201, past.text
    assert past.json()["hourly_eur"] == "0.80"
    current = _types(client, admin)["L4-1-24G"]
    assert current["hourly_eur"] == "0.80"
    assert current["price_effective_from"] == "2025-05-31T12:00:00Z"

    # A future price (given in another offset) changes nothing until its instant comes.
    future_at = "2025-06-02T14:00:00+02:00"
    fut = client.post(url, json={"hourly_eur": "0.9", "effective_from": future_at},
                      headers=admin)
    assert fut.status_code == 201, fut.text
    assert fut.json()["effective_from"] == "2025-06-02T12:00:00Z"
    assert _types(client, admin)["L4-1-24G"]["hourly_eur"] == "0.80"

    now["t"] = T0 + timedelta(days=1) - timedelta(microseconds=1)
    assert _types(client, admin)["L4-1-24G"]["hourly_eur"] == "0.80"
    now["t"] = T0 + timedelta(days=1)
    in_force = _types(client, admin)["L4-1-24G"]
    assert in_force["hourly_eur"] == "0.90"
    assert in_force["price_effective_from"] == "2025-06-02T12:00:00Z"

    detail = client.get(f"/api/catalog/instance-types/{tid}", headers=admin).json()
    assert [(p["hourly_eur"], p["effective_from"]) for p in detail["prices"]] == [
        ("0.75", "2020-01-01T00:00:00Z"), ("0.80", "2025-05-31T12:00:00Z"),
        ("0.90", "2025-06-02T12:00:00Z"),
    ]
    # Other types are untouched.
    assert _types(client, admin)["L4-2-24G"]["hourly_eur"] == "1.50"


def test_type_with_only_future_prices_has_no_price_in_force(
    client: TestClient, admin: dict[str, str]
) -> None:
    client.app.state.clock = lambda: datetime(2019, 1, 1, tzinfo=UTC)  # type: ignore[attr-defined]
    t = _types(client, admin)["RENDER-S"]
    assert t["hourly_eur"] is None and t["price_effective_from"] is None


def test_add_price_is_logged_with_exact_amount(client: TestClient, admin: dict[str, str],
                                               factory: Any) -> None:
    client.app.state.clock = lambda: T0  # type: ignore[attr-defined]
    tid = _type_id(client, admin, "H100-SXM-2-80G")
    r = client.post(f"/api/catalog/instance-types/{tid}/prices",
                    json={"hourly_eur": "6.123456", "effective_from": "2025-01-01T00:00:00Z"},
                    headers=admin)
    assert r.status_code == 201, r.text
    with factory._session() as s:
        price = s.scalar(select(InstanceTypePrice).where(
            InstanceTypePrice.id == uuid.UUID(r.json()["id"])))
        assert price is not None and price.hourly_eur == Decimal("6.123456")
        log = s.scalar(select(ActionLog).where(ActionLog.type == "catalog.price_added"))
        assert log is not None and log.status == "success" and log.user_id is not None
        assert log.created_at == T0
        assert log.details is not None
        assert log.details["instance_type"] == "H100-SXM-2-80G"
        assert log.details["hourly_eur"] == "6.123456"
        assert log.details["previous_hourly_eur"] in ("6.018", "6.018000")


@pytest.mark.parametrize("body", [
    {"hourly_eur": "0", "effective_from": "2025-01-01T00:00:00Z"},
    {"hourly_eur": "-1.00", "effective_from": "2025-01-01T00:00:00Z"},
    {"hourly_eur": "0.1234567", "effective_from": "2025-01-01T00:00:00Z"},
    {"hourly_eur": "1e30", "effective_from": "2025-01-01T00:00:00Z"},
    {"hourly_eur": "NaN", "effective_from": "2025-01-01T00:00:00Z"},
    {"hourly_eur": "abc", "effective_from": "2025-01-01T00:00:00Z"},
    {"hourly_eur": "1.00", "effective_from": "2025-01-01T00:00:00"},  # naive
    {"hourly_eur": "1.00", "effective_from": "9999-12-31T23:00:00-05:00"},  # overflows UTC
    {"hourly_eur": "1.00"},
    {"hourly_eur": "1.00", "effective_from": "2025-01-01T00:00:00Z", "instance_type_id": "x"},
])
def test_add_price_rejects_bad_input(client: TestClient, admin: dict[str, str],
                                     body: dict[str, Any]) -> None:
    tid = _type_id(client, admin, "L4-1-24G")
    r = client.post(f"/api/catalog/instance-types/{tid}/prices", json=body, headers=admin)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"


def test_add_price_conflicts_and_access(client: TestClient, admin: dict[str, str],
                                        factory: Any) -> None:
    tid = _type_id(client, admin, "L40S-1-48G")
    url = f"/api/catalog/instance-types/{tid}/prices"
    body = {"hourly_eur": "1.50", "effective_from": "2025-03-01T00:00:00Z"}
    assert client.post(url, json=body, headers=admin).status_code == 201
    # The same instant in another offset is the same instant.
    again = client.post(url, json={"hourly_eur": "1.60",
                                   "effective_from": "2025-03-01T01:00:00+01:00"}, headers=admin)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "price_exists"
    # The seed's own instant is taken too.
    seed = client.post(url, json={"hourly_eur": "1.60", "effective_from": "2020-01-01T00:00:00Z"},
                       headers=admin)
    assert seed.status_code == 409

    assert client.post(f"/api/catalog/instance-types/{uuid.uuid4()}/prices", json=body,
                       headers=admin).status_code == 404
    assert client.post("/api/catalog/instance-types/123/prices", json=body,
                       headers=admin).status_code == 422
    org = factory.org()
    owner = factory.user(org, Role.OWNER)
    r = client.post(url, json={**body, "effective_from": "2025-04-01T00:00:00Z"},
                    headers=owner.headers)
    assert r.status_code == 403
    assert client.post(url, json=body).status_code == 401
    # Nothing but the first price was added.
    prices = client.get(f"/api/catalog/instance-types/{tid}", headers=admin).json()["prices"]
    assert [p["hourly_eur"] for p in prices] == ["1.40", "1.50"]
