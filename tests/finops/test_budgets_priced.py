"""Budgets of chargeback-priced deployments (a per-token ``price`` override) and the budget
guard's inputs (``scale_up_blocks``, ``current_scale_caps``), on Postgres and SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy.orm import Session, sessionmaker

from core.models import ActionLog, Budget, BudgetScope, BudgetState
from finops.budgets import (
    CAP_ENDED,
    CAP_STARTED,
    current_scale_caps,
    evaluate_budgets,
    month_spends,
    scale_up_blocks,
)
from finops.keys import month_spend_eur
from tests.finops.helpers import Seed

NOW = datetime(2025, 3, 11, 0, 0, tzinfo=UTC)
PRICED = {"price": {"input_eur_per_1m": "1", "output_eur_per_1m": "3"}}


def test_priced_deployment_budget_counts_tokens_x_price(db: sessionmaker[Session]) -> None:
    with db() as s, s.begin():
        seed = Seed(s)
        p = seed.provider("prov", 60, 60)
        seed.itype(p, "gpu", [(datetime(2020, 1, 1, tzinfo=UTC), "1.00")])
        priced = seed.deployment("priced", PRICED)
        plain = seed.deployment("plain")
        # Both run on a GPU for the 10 days of March so far: 240 EUR of GPU cost each.
        for dep in (priced, plain):
            seed.interval(seed.instance(p, "gpu", deployment_id=dep),
                          datetime(2025, 3, 1, tzinfo=UTC), None)
        a, b = seed.org("org-a"), seed.org("org-b")
        ka, kb = seed.api_key(a), seed.api_key(b)
        # priced: A 1M in + 1M out = 4 EUR; B 2M in = 2 EUR. plain: A 300, B 100 tokens.
        seed.usage(NOW - timedelta(days=1), (1_000_000, 1_000_000), deployment="priced",
                   api_key_id=ka, org_id=a)
        seed.usage(NOW - timedelta(days=1), (2_000_000, 0), deployment="priced",
                   api_key_id=kb, org_id=b)
        seed.usage(NOW - timedelta(days=1), (300, 0), deployment="plain", api_key_id=ka,
                   org_id=a)
        seed.usage(NOW - timedelta(days=1), (100, 0), deployment="plain", api_key_id=kb,
                   org_id=b)
        # Last month's tokens do not count.
        seed.usage(datetime(2025, 2, 27, tzinfo=UTC), (10**9, 0), deployment="priced",
                   api_key_id=ka, org_id=a)
        budgets = [Budget(scope=BudgetScope.DEPLOYMENT, target_id=priced,
                          monthly_eur=Decimal("5")),
                   Budget(scope=BudgetScope.DEPLOYMENT, target_id=plain,
                          monthly_eur=Decimal("1000")),
                   Budget(scope=BudgetScope.ORG, target_id=a, org_id=a,
                          monthly_eur=Decimal("1000")),
                   Budget(scope=BudgetScope.ORG, target_id=b, org_id=b,
                          monthly_eur=Decimal("1000"))]
        s.add_all(budgets)
        s.flush()
        ids = [x.id for x in budgets]
    with db() as s, s.begin():
        spends = month_spends(s, list(s.query(Budget)), NOW)
        # priced deployment: 6 EUR billed (tokens x price), not its 240 EUR of GPU time.
        assert spends[ids[0]] == Decimal("6.00")
        assert spends[ids[1]] == Decimal("240.00")
        # Orgs: priced tokens x price + their token share of the plain deployment's GPU cost.
        assert spends[ids[2]] == Decimal("4.00") + Decimal("180.00")
        assert spends[ids[3]] == Decimal("2.00") + Decimal("60.00")
        # ... which is what their keys are charged.
        assert month_spend_eur(s, ka, NOW).quantize(Decimal("0.01")) == spends[ids[2]]
        assert month_spend_eur(s, kb, NOW).quantize(Decimal("0.01")) == spends[ids[3]]
        states = {e.budget_id: e.state for e in evaluate_budgets(s, NOW)}
        assert states[ids[0]] == BudgetState.EXCEEDED  # 6 >= 5
        assert states[ids[1]] == BudgetState.OK


def test_scale_up_blocks_and_caps(db: sessionmaker[Session]) -> None:
    with db() as s, s.begin():
        seed = Seed(s)
        a, b = seed.org("org-a"), seed.org("org-b")
        own = seed.deployment("own")
        for_a = seed.deployment("for-a", {"allowed_orgs": ["org-a", "org-b"]})
        for_a_by_id = seed.deployment("for-a-id", {"allowed_orgs": [str(a)]})
        for_b = seed.deployment("for-b", {"allowed_orgs": ["org-b"]})
        open_all = seed.deployment("open", {"allowed_orgs": None})
        s.add_all([
            Budget(scope=BudgetScope.DEPLOYMENT, target_id=own, monthly_eur=Decimal(1),
                   state=BudgetState.EXCEEDED),
            Budget(scope=BudgetScope.ORG, target_id=a, org_id=a, monthly_eur=Decimal(1),
                   state=BudgetState.EXCEEDED),
            Budget(scope=BudgetScope.ORG, target_id=b, org_id=b, monthly_eur=Decimal(1),
                   state=BudgetState.WARNING)])
        s.flush()
        blocks = scale_up_blocks(s)
        assert blocks == {own: "deployment budget exceeded",
                          for_a: "org budget exceeded: org-a",
                          for_a_by_id: "org budget exceeded: org-a"}
        assert for_b not in blocks and open_all not in blocks
        # Caps in force: the latest guard log per deployment, when it is a start.
        t = datetime(2025, 3, 2, tzinfo=UTC)
        s.add(ActionLog(type=CAP_STARTED, component="x", status="info", created_at=t,
                        details={"deployment_id": str(own), "replicas": 3, "reason": "r1"}))
        s.add(ActionLog(type=CAP_STARTED, component="x", status="info", created_at=t,
                        details={"deployment_id": str(for_a), "replicas": 1, "reason": "r2"}))
        s.add(ActionLog(type=CAP_ENDED, component="x", status="info", created_at=t,
                        details={"deployment_id": str(for_a)}))
        s.add(ActionLog(type=CAP_STARTED, component="x", status="info", created_at=t,
                        details={"deployment_id": "not-a-uuid"}))
        s.flush()
        caps = current_scale_caps(s)
        assert set(caps) == {own}
        assert (caps[own].replicas, caps[own].reason) == (3, "r1")
        assert caps[own].since.replace(tzinfo=UTC) == t
