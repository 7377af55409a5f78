"""The periodic jobs thread: runs jobs, survives a failing one, stops cleanly."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy.orm import Session, sessionmaker

from control_api.background import PeriodicJobs, finops_refresh
from core.models import Budget, BudgetScope, BudgetState, Org

NOW = datetime(2026, 11, 15, 12, tzinfo=UTC)


def test_a_failing_job_does_not_stop_the_others(db: sessionmaker[Session]) -> None:
    ran = threading.Event()

    def boom(session: Session, now: datetime) -> object:
        raise RuntimeError("boom")

    def ok(session: Session, now: datetime) -> object:
        ran.set()
        return "ok"

    jobs = PeriodicJobs(db, {"boom": boom, "ok": ok}, interval_s=0.01, clock=lambda: NOW)
    jobs.start()
    try:
        assert ran.wait(5)
    finally:
        jobs.stop()
    assert jobs.last_results["boom"] == {"error": "RuntimeError"}
    assert jobs.last_results["ok"] == "ok"


def test_finops_refresh_evaluates_budgets(db: sessionmaker[Session]) -> None:
    with db() as s, s.begin():
        org = Org(name="acme")
        s.add(org)
        s.flush()
        # A zero budget is exceeded as soon as it is evaluated (spend 0 >= 0).
        s.add(Budget(scope=BudgetScope.ORG, target_id=org.id, org_id=org.id,
                     monthly_eur=Decimal("0")))
    result = PeriodicJobs(db, {"finops": finops_refresh}, 60, clock=lambda: NOW).run_once()
    assert result["finops"]["budgets"] == 1  # type: ignore[index]
    with db() as s:
        budget = s.query(Budget).one()
        assert budget.evaluated_at is not None
        # Thresholds are inclusive: spend 0 against a 0 EUR budget is exceeded.
        assert budget.state == BudgetState.EXCEEDED
        assert budget.spent_eur == Decimal("0")
