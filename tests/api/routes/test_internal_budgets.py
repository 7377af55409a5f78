"""POST /api/internal/budgets/applicable: the budgets on a request's org, key and deployment,
with what is left of each (a key budget's spend computed now, org/deployment budgets from the
background evaluation unless it is missing or stale), and bad input."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.db import utcnow
from core.keys import generate_api_key
from core.models import ApiKey, Budget, BudgetScope, Deployment, Org, User

PATH = "/api/internal/budgets/applicable"
PRICED = {"price": {"input_eur_per_1m": "1000", "output_eur_per_1m": "1000"}}


def _setup(db: sessionmaker[Session]) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    secret = generate_api_key()
    with db() as s, s.begin():
        org = s.scalar(select(Org).where(Org.name == "default"))
        user = s.scalar(select(User).where(User.username == "admin"))
        assert org is not None and user is not None
        key = ApiKey(org_id=org.id, user_id=user.id, name="k", prefix=secret.prefix,
                     key_hash=secret.hash)
        dep = Deployment(name="chat", spec=PRICED)
        s.add_all([key, dep])
        s.flush()
        return org.id, key.id, dep.id


def _budget(db: sessionmaker[Session], scope: BudgetScope, target: uuid.UUID, org: uuid.UUID,
            monthly: str, **fields: Any) -> uuid.UUID:
    with db() as s, s.begin():
        b = Budget(scope=scope, target_id=target, org_id=org, monthly_eur=Decimal(monthly),
                   **fields)
        s.add(b)
        s.flush()
        return b.id


def _usage(client: TestClient, headers: dict[str, str], org: uuid.UUID, key: uuid.UUID) -> None:
    rec = {"request_id": f"u-{uuid.uuid4().hex}", "model": "m", "deployment": "chat",
           "api_key_id": str(key), "org_id": str(org), "prompt_tokens": 100,
           "completion_tokens": 50, "status": "completed", "at": utcnow().isoformat()}
    r = client.post("/api/internal/usage", json={"records": [rec]}, headers=headers)
    assert r.status_code == 200 and r.json()["inserted"] == 1, r.text


def _ask(client: TestClient, headers: dict[str, str], org: uuid.UUID, key: uuid.UUID,
         deployment: str = "chat") -> dict[str, dict[str, Any]]:
    r = client.post(PATH, json={"org_id": str(org), "api_key_id": str(key),
                                "deployment": deployment}, headers=headers)
    assert r.status_code == 200, r.text
    return {b["scope"]: b for b in r.json()["budgets"]}


def test_the_org_key_and_deployment_budgets_with_what_is_left(
        client: TestClient, service_headers: dict[str, str], db: sessionmaker[Session]) -> None:
    org, key, dep = _setup(db)
    _usage(client, service_headers, org, key)  # 150 tokens at 0.001 EUR: 0.15 EUR
    evaluated = utcnow() - timedelta(seconds=30)
    _budget(db, BudgetScope.ORG, org, org, "10", spent_eur=Decimal("2.5"),
            evaluated_at=evaluated)
    _budget(db, BudgetScope.API_KEY, key, org, "1", spent_eur=Decimal("0.99"),
            evaluated_at=evaluated)  # a key budget's spend is computed now, not read
    _budget(db, BudgetScope.DEPLOYMENT, dep, org, "5")  # never evaluated: computed now
    other_org = uuid.uuid4()
    _budget(db, BudgetScope.ORG, other_org, org, "1")  # applies to someone else
    views = _ask(client, service_headers, org, key)
    assert set(views) == {"org", "api_key", "deployment"}
    o, k, d = views["org"], views["api_key"], views["deployment"]
    assert (Decimal(o["limit_eur"]), Decimal(o["spent_eur"]), Decimal(o["left_eur"])) == (
        Decimal(10), Decimal("2.5"), Decimal("7.5"))
    assert o["as_of"].startswith(evaluated.isoformat()[:19])
    assert Decimal(k["spent_eur"]) == Decimal("0.15") and Decimal(k["left_eur"]) == Decimal(
        "0.85")
    assert Decimal(d["spent_eur"]) == Decimal("0.15") and d["target_id"] == str(dep)
    assert o["period_end"] > o["as_of"]
    # An unknown (or deleted) deployment: only the org's and the key's budgets.
    assert set(_ask(client, service_headers, org, key, "nope")) == {"org", "api_key"}


def test_a_stale_evaluation_is_recomputed_and_a_spent_budget_has_nothing_left(
        client: TestClient, service_headers: dict[str, str], db: sessionmaker[Session]) -> None:
    org, key, _ = _setup(db)
    _usage(client, service_headers, org, key)
    _budget(db, BudgetScope.ORG, org, org, "0.1", spent_eur=Decimal("0"),
            evaluated_at=utcnow() - timedelta(hours=1))  # the background job stopped
    o = _ask(client, service_headers, org, key)["org"]
    assert Decimal(o["spent_eur"]) == Decimal("0.15")
    assert Decimal(o["left_eur"]) == 0


def test_nothing_applies_is_an_empty_list(client: TestClient,
                                          service_headers: dict[str, str]) -> None:
    r = client.post(PATH, json={"org_id": str(uuid.uuid4()), "api_key_id": str(uuid.uuid4()),
                                "deployment": "chat"}, headers=service_headers)
    assert r.status_code == 200 and r.json() == {"budgets": []}


def test_bad_input_and_no_token(client: TestClient, service_headers: dict[str, str],
                                admin_headers: dict[str, str]) -> None:
    good = {"org_id": str(uuid.uuid4()), "api_key_id": str(uuid.uuid4()), "deployment": "x"}
    for body, where in [({**good, "org_id": "nope"}, "org_id"),
                        ({k: v for k, v in good.items() if k != "deployment"}, "deployment"),
                        ({**good, "deployment": ""}, "deployment"),
                        ({**good, "extra": 1}, "extra")]:
        r = client.post(PATH, json=body, headers=service_headers)
        assert r.status_code == 422, r.text
        assert any(where in ".".join(map(str, d["loc"])) for d in r.json()["error"]["details"])
    assert client.post(PATH, json=good).status_code == 401
    assert client.post(PATH, json=good, headers=admin_headers).status_code == 401
