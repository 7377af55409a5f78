"""Monthly EUR budgets: spend, state (ok / warning / exceeded) and state changes.

Spend is month-to-date (UTC calendar month) of:
- ``org``: the org's chargeback share of the infrastructure cost (see :mod:`finops.chargeback`);
- ``deployment``: the deployment's attributed GPU cost (:mod:`finops.attribution`);
- ``api_key``: the key's chargeback spend (:func:`finops.keys.month_spend_eur`).

Chargeback-priced deployments (a ``price`` override per 1M tokens in the spec) are what their
users pay per token, exactly as :mod:`finops.keys` charges keys, so:
- a ``deployment`` budget on one counts its token-priced spend: all its prompt and completion
  tokens this month x the override prices (what the orgs are charged for it — the budget caps
  what the deployment may bill, like a key budget caps a key); its GPU cost stays visible in
  the cost breakdowns, it is not what the price-setter budgets;
- an ``org`` budget counts, for such a deployment, the org's tokens x the prices instead of its
  token share of the deployment's GPU cost (so an org's spend is the sum of its keys' spend).

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
from fractions import Fraction
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import ActionLog, Budget, BudgetScope, BudgetState, Deployment, Org
from finops.attribution_db import window_attribution
from finops.chargeback import chargeback
from finops.deployments import token_price_override
from finops.keys import month_spend_eur
from finops.ledger import CENT, EUR_QUANTUM, to_us, units_to_eur
from finops.spans import sync_spans
from finops.usage import usage_totals
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
    by_dep: dict[uuid.UUID | None, int] = {}
    priced = priced_deployments(session)
    priced_by_dep: dict[uuid.UUID, Fraction] = {}
    priced_by_org: dict[uuid.UUID | None, Fraction] = {}
    if priced and scopes & {BudgetScope.ORG, BudgetScope.DEPLOYMENT}:
        priced_by_dep, priced_by_org = token_priced_spend(session, priced, rng)
    if BudgetScope.ORG in scopes:
        cb = chargeback(session, rng, now_us)
        by_org = dict(cb.by_org)
        for line in cb.lines:
            # Token-priced deployments: the org pays its tokens x price, not a GPU share.
            if line.deployment_id in priced:
                by_org[line.org_id] = by_org.get(line.org_id, Decimal(0)) - line.cost_eur
        for org, eur in priced_by_org.items():
            by_org[org] = by_org.get(org, Decimal(0)) + _fraction_eur(eur)
    if BudgetScope.DEPLOYMENT in scopes:
        by_dep = dict(window_attribution(session, to_us(rng.start), to_us(rng.end),
                                         now_us).by_owner)
    for b in budgets:
        if b.scope == BudgetScope.ORG:
            out[b.id] = by_org.get(b.target_id, Decimal(0)).quantize(CENT)
        elif b.scope == BudgetScope.DEPLOYMENT and b.target_id in priced:
            out[b.id] = _fraction_eur(priced_by_dep.get(b.target_id, Fraction(0))
                                      ).quantize(CENT)
        elif b.scope == BudgetScope.DEPLOYMENT:
            out[b.id] = units_to_eur(by_dep.get(b.target_id, 0), CENT)
        else:
            out[b.id] = month_spend_eur(session, b.target_id, now).quantize(CENT)
    return out


def _fraction_eur(x: Fraction) -> Decimal:
    return (Decimal(x.numerator) / Decimal(x.denominator)).quantize(EUR_QUANTUM)


def priced_deployments(session: Session) -> dict[uuid.UUID, tuple[str, tuple[Decimal, Decimal]]]:
    """``id -> (name, (input, output) EUR per 1M tokens)`` of the chargeback-priced deployments
    (deleted ones included: their usage this month still costs)."""
    out = {}
    for dep_id, name, spec in session.execute(select(Deployment.id, Deployment.name,
                                                     Deployment.spec)):
        override = token_price_override(spec)
        if override is not None:
            out[dep_id] = (name, override)
    return out


def token_priced_spend(session: Session,
                       priced: dict[uuid.UUID, tuple[str, tuple[Decimal, Decimal]]],
                       rng: TimeRange) -> tuple[dict[uuid.UUID, Fraction],
                                                dict[uuid.UUID | None, Fraction]]:
    """Token-priced spend over ``rng``, exact: per deployment and per org (all priced ones)."""
    by_name = {name: (dep_id, prices) for dep_id, (name, prices) in priced.items()}
    by_dep: dict[uuid.UUID, Fraction] = {}
    by_org: dict[uuid.UUID | None, Fraction] = {}
    usage = usage_totals(session, rng.start, rng.end, ("deployment", "org"),
                         deployments=list(by_name))
    for (name, org), tot in usage.items():
        if name not in by_name:
            continue
        dep_id, (p_in, p_out) = by_name[name]
        eur = (Fraction(tot.prompt_tokens) * Fraction(p_in)
               + Fraction(tot.completion_tokens) * Fraction(p_out)) / 1_000_000
        by_dep[dep_id] = by_dep.get(dep_id, Fraction(0)) + eur
        by_org[org] = by_org.get(org, Fraction(0)) + eur
    return by_dep, by_org


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


# ---------------------------------------------------------------- budget guard (scale-up cap)

# Action logs of the budget guard: written by the control API's Serve sync when a deployment's
# cap starts or ends (state changes only); the latest one per deployment is its current state.
CAP_STARTED = "deployment.scale_capped"
CAP_ENDED = "deployment.scale_uncapped"


def scale_up_blocks(session: Session) -> dict[uuid.UUID, str]:
    """Deployments whose scale-up must be capped, with the reason (as of the last evaluation).

    A deployment is capped when its own budget is exceeded, or when the budget of an org its
    ``allowed_orgs`` names (by name or id) is exceeded. A deployment open to every org
    (``allowed_orgs: null``) is capped by its own budget only: one org over its budget must not
    freeze capacity every other org shares (that org's keys are stopped by their own budgets).
    """
    exceeded = list(session.execute(select(Budget.scope, Budget.target_id).where(
        Budget.state == BudgetState.EXCEEDED,
        Budget.scope.in_((BudgetScope.DEPLOYMENT, BudgetScope.ORG)))))
    if not exceeded:
        return {}
    dep_ids = {t for sc, t in exceeded if BudgetScope(sc) == BudgetScope.DEPLOYMENT}
    org_ids = {t for sc, t in exceeded if BudgetScope(sc) == BudgetScope.ORG}
    org_refs: dict[str, str] = {}
    if org_ids:
        for oid, name in session.execute(select(Org.id, Org.name).where(Org.id.in_(org_ids))):
            org_refs[str(oid)] = name
            org_refs[name] = name
    out: dict[uuid.UUID, str] = {}
    for dep_id, spec in session.execute(select(Deployment.id, Deployment.spec).where(
            Deployment.deleted_at.is_(None))):
        if dep_id in dep_ids:
            out[dep_id] = "deployment budget exceeded"
            continue
        allowed = (spec or {}).get("allowed_orgs")
        orgs = sorted({org_refs[ref] for ref in allowed or () if ref in org_refs})
        if orgs:
            out[dep_id] = f"org budget exceeded: {', '.join(orgs)}"
    return out


@dataclass(frozen=True)
class ScaleCap:
    """A deployment's scale-up cap: at most ``replicas`` (the count when it started)."""

    replicas: int
    reason: str
    since: datetime


def current_scale_caps(session: Session) -> dict[uuid.UUID, ScaleCap]:
    """The caps in force: the latest guard action log per deployment, when it is a start."""
    latest: dict[uuid.UUID, tuple[str, dict[str, Any], datetime]] = {}
    rows = session.execute(select(ActionLog.type, ActionLog.details, ActionLog.created_at)
                           .where(ActionLog.type.in_((CAP_STARTED, CAP_ENDED)))
                           .order_by(ActionLog.id))
    for type_, details, at in rows:
        try:
            dep_id = uuid.UUID(str((details or {}).get("deployment_id")))
        except ValueError:
            continue
        latest[dep_id] = (type_, details or {}, at)
    return {dep_id: ScaleCap(int(d.get("replicas", 0)), str(d.get("reason", "")), at)
            for dep_id, (type_, d, at) in latest.items() if type_ == CAP_STARTED}
