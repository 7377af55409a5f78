"""Monthly EUR budgets: spend, state (ok / warning / exceeded) and state changes.

Spend is month-to-date (UTC calendar month) of:
- ``org``: the org's chargeback share of the infrastructure cost (see :mod:`finops.chargeback`);
- ``deployment``: the GPU cost of the deployment's instances;
- ``api_key``: the key's chargeback spend (:func:`finops.keys.month_spend_eur`).

State: ``exceeded`` once spend >= budget, ``warning`` once spend >= warning_ratio x budget (80 %
by default), else ``ok`` — thresholds inclusive. A change of state writes an action log
(``budget.state_changed``) and is reflected by the ``inventiv_budget_*`` gauges; ``exceeded``
deployment budgets are what the autoscaler reads to cap scale-up (:func:`exceeded_deployments`).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_api.models import ActionLog, Budget, BudgetScope, BudgetState
from finops.chargeback import chargeback
from finops.costs import window_costs_units
from finops.keys import month_spend_eur
from finops.ledger import CENT, EUR_QUANTUM, to_us, units_to_eur
from finops.spans import sync_spans
from finops.windows import TimeRange, month_start


def budget_state(spent: Decimal, monthly: Decimal, warning_ratio: Decimal) -> BudgetState:
    """The state of a budget for a spend (thresholds inclusive)."""
    if spent >= monthly:
        return BudgetState.EXCEEDED
    if spent >= monthly * warning_ratio:
        return BudgetState.WARNING
    return BudgetState.OK


def budget_ratio(spent: Decimal, monthly: Decimal) -> Decimal:
    """spent / budget (4 decimals); a zero budget with spend counts as fully used."""
    if monthly <= 0:
        return Decimal("1.0000") if spent > 0 else Decimal("0.0000")
    return (spent / monthly).quantize(Decimal("0.0001"))


@dataclass
class Evaluation:
    budget_id: uuid.UUID
    spent_eur: Decimal
    state: BudgetState
    previous: BudgetState
    changed: bool


def month_spends(session: Session, budgets: list[Budget], now: datetime
                 ) -> dict[uuid.UUID, Decimal]:
    """Month-to-date spend of each budget (computed once per scope for all budgets)."""
    rng = TimeRange(month_start(now), now)
    now_us = to_us(now)
    out: dict[uuid.UUID, Decimal] = {}
    if not budgets:
        return out
    scopes = {b.scope for b in budgets}
    if scopes & {BudgetScope.ORG, BudgetScope.DEPLOYMENT}:
        sync_spans(session)
    by_org: dict[uuid.UUID | None, Decimal] = {}
    by_dep: dict[object, int] = {}
    if BudgetScope.ORG in scopes:
        by_org = chargeback(session, rng, now_us).by_org
    if BudgetScope.DEPLOYMENT in scopes:
        by_dep = window_costs_units(session, [(to_us(rng.start), to_us(rng.end))], now_us,
                                    "deployment")[0]
    for b in budgets:
        if b.scope == BudgetScope.ORG:
            out[b.id] = by_org.get(b.target_id, Decimal(0)).quantize(CENT)
        elif b.scope == BudgetScope.DEPLOYMENT:
            out[b.id] = units_to_eur(by_dep.get(b.target_id, 0), CENT)
        else:
            out[b.id] = month_spend_eur(session, b.target_id, now).quantize(CENT)
    return out


def evaluate_budgets(session: Session, now: datetime,
                     budget_ids: Collection[uuid.UUID] | None = None) -> list[Evaluation]:
    """Recompute spend and state of budgets; log every change of state."""
    q = select(Budget)
    if budget_ids is not None:
        q = q.where(Budget.id.in_(list(budget_ids)))
    budgets = list(session.scalars(q))
    spends = month_spends(session, budgets, now)
    out = []
    for b in budgets:
        spent = spends.get(b.id, Decimal(0))
        new = budget_state(spent, b.monthly_eur, b.warning_ratio)
        prev = BudgetState(b.state)
        b.spent_eur = spent.quantize(EUR_QUANTUM)
        b.evaluated_at = now
        changed = new != prev
        if changed:
            b.state = new
            b.state_changed_at = now
            session.add(ActionLog(
                type="budget.state_changed", component="finops",
                status="failure" if new == BudgetState.EXCEEDED else "info",
                org_id=b.org_id, created_at=now,
                details={"budget_id": str(b.id), "scope": BudgetScope(b.scope).value,
                         "target_id": str(b.target_id), "from": prev.value, "to": new.value,
                         "spent_eur": str(spent), "monthly_eur": str(b.monthly_eur)}))
        out.append(Evaluation(b.id, spent, new, prev, changed))
    session.flush()
    return out


def exceeded_deployments(session: Session) -> set[uuid.UUID]:
    """Deployments whose budget is exceeded (as of the last evaluation): no scale-up."""
    return set(session.scalars(select(Budget.target_id).where(
        Budget.scope == BudgetScope.DEPLOYMENT, Budget.state == BudgetState.EXCEEDED)))
