"""FinOps behind /api/finops: ranges, access filtering, and the calls into ``finops``.

Access levels (declared on the routes):
- summary, costs, series, forecast: ``platform_admin`` — infrastructure cost is platform-wide;
- unit-costs, chargeback, usage: ``user`` — non-admins see only their orgs' lines (chargeback,
  usage) and the deployments their orgs used in the window (unit costs);
- budgets: list/show ``user`` (non-admins: budgets of their orgs), create/update/delete
  ``org:admin`` for org and API-key budgets of their org, platform admin for deployment budgets.

Reads never write: the background job (:func:`control_api.background.finops_refresh`) alone
brings the derived data up to date (cost spans, hourly usage rollups, budget states, threshold
notifications). Usage reads count the records not rolled up yet too, so they are exact anyway;
costs of intervals opened or closed since the last refresh appear at the next one. Budget writes
(create, update) evaluate the budget they change.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_api.deps import Principal
from control_api.errors import Conflict, NotFound, Unprocessable
from control_api.schemas import finops as sch
from core.db import utcnow
from core.models import ApiKey, Budget, BudgetScope, Deployment, Instance, Org, Role
from finops import budgets as fb
from finops.chargeback import chargeback as compute_chargeback
from finops.costs import GROUP_COLUMNS, burn_rate, series_units, window_costs_units
from finops.forecast import minimum_rate_micro, project, rate_eur
from finops.ledger import to_us, units_to_eur
from finops.unitcost import unit_costs as compute_unit_costs
from finops.usage import USAGE_GROUPS, usage_totals
from finops.windows import (
    WINDOWS,
    TimeRange,
    WindowError,
    bucket_edges,
    month_start,
    next_month_start,
    resolve_range,
)

Clock = Callable[[], datetime]
COST_GROUPS = (*GROUP_COLUMNS, "org", "none")


def resolve(now: datetime, window: str | None, start: datetime | None,
            end: datetime | None, default: str = "day") -> TimeRange:
    """A validated range; bad names, reversed or over-long ranges are 422s."""
    try:
        return resolve_range(now, window if (window or start or end) else default, start, end)
    except WindowError as exc:
        raise Unprocessable(str(exc)) from None


def summary(session: Session, now: datetime) -> sch.Summary:
    now_us = to_us(now)
    names = list(WINDOWS)
    ms = month_start(now)
    wins = [(to_us(now - WINDOWS[n]), now_us) for n in names] + [(to_us(ms), now_us)]
    results = window_costs_units(session, wins, now_us)
    units = [r.get(None, 0) for r in results]
    br = burn_rate(session, now_us)
    fc = project(br.micro_per_hour, minimum_rate_micro(session, now), units[-1], now,
                 next_month_start(now))
    return sch.Summary(
        start=ms, end=now, now=now, burn_rate_eur_per_hour=rate_eur(br.micro_per_hour),
        running_instances=br.running_instances,
        windows={n: units_to_eur(u) for n, u in zip(names, units, strict=False)},
        month_to_date_eur=fc.month_to_date_eur, month_end_projection_eur=fc.month_end_eur)


def _labels(session: Session, group_by: str, keys: list[object]) -> dict[object, str]:
    ids = [k for k in keys if isinstance(k, uuid.UUID)]
    if not ids:
        return {}
    if group_by == "deployment":
        q = select(Deployment.id, Deployment.name).where(Deployment.id.in_(ids))
    elif group_by == "instance":
        q = select(Instance.id, Instance.launch_id).where(Instance.id.in_(ids))
    elif group_by == "org":
        q = select(Org.id, Org.name).where(Org.id.in_(ids))
    else:
        return {}
    return dict(session.execute(q).all())  # type: ignore[arg-type]


def costs(session: Session, now: datetime, rng: TimeRange, group_by: str) -> sch.CostsOut:
    if group_by not in COST_GROUPS:
        raise Unprocessable(f"unknown group {group_by!r}; expected one of "
                            f"{', '.join(COST_GROUPS)}")
    now_us = to_us(now)
    items: list[sch.CostItem] = []
    if group_by == "org":
        cb = compute_chargeback(session, rng, now_us)
        labels = _labels(session, "org", list(cb.by_org))
        for org, eur in sorted(cb.by_org.items(), key=lambda kv: (-kv[1], str(kv[0]))):
            items.append(sch.CostItem(key=str(org) if org else None,
                                      name=labels.get(org) if org else "unallocated",
                                      cost_eur=eur))
        total = cb.total_eur
    else:
        grp = None if group_by == "none" else group_by
        res = window_costs_units(session, [(to_us(rng.start), to_us(rng.end))], now_us, grp)[0]
        labels = _labels(session, group_by, list(res))
        total_units = sum(res.values())
        for key, u in sorted(res.items(), key=lambda kv: (-kv[1], str(kv[0]))):
            if u == 0:
                continue
            items.append(sch.CostItem(key=None if key is None else str(key),
                                      name=labels.get(key), cost_eur=units_to_eur(u)))
        total = units_to_eur(total_units)
    return sch.CostsOut(start=rng.start, end=rng.end, group_by=group_by, total_eur=total,
                        items=items)


def series(session: Session, now: datetime, rng: TimeRange, bucket: str) -> sch.SeriesOut:
    try:
        edges_dt = bucket_edges(rng, bucket)
    except WindowError as exc:
        raise Unprocessable(str(exc)) from None
    now_us = to_us(now)
    edges = [to_us(e) for e in edges_dt]
    per = series_units(session, edges, now_us)
    items = []
    running = 0
    for k, u in enumerate(per):
        running += u
        # Cumulative from exact units, so its last point equals the total to the micro-euro.
        items.append(sch.SeriesPoint(start=edges_dt[k], end=edges_dt[k + 1],
                                     cost_eur=units_to_eur(u),
                                     cumulative_eur=units_to_eur(running)))
    return sch.SeriesOut(start=rng.start, end=rng.end, bucket=bucket,
                         total_eur=units_to_eur(running), items=items)


def forecast(session: Session, now: datetime) -> sch.ForecastOut:
    now_us = to_us(now)
    mtd = window_cost_mtd(session, now)
    br = burn_rate(session, now_us)
    fc = project(br.micro_per_hour, minimum_rate_micro(session, now), mtd, now,
                 next_month_start(now))
    return sch.ForecastOut(
        now=now, burn_rate_eur_per_hour=rate_eur(fc.burn_rate_micro),
        minimum_eur_per_hour=rate_eur(fc.minimum_rate_micro),
        projected_eur_per_hour=rate_eur(fc.projected_rate_micro), horizons=fc.horizons,
        month_to_date_eur=fc.month_to_date_eur, month_end_projection_eur=fc.month_end_eur)


def window_cost_mtd(session: Session, now: datetime) -> int:
    now_us = to_us(now)
    return window_costs_units(session, [(to_us(month_start(now)), now_us)], now_us)[0].get(
        None, 0)


def _visible_orgs(principal: Principal) -> set[uuid.UUID] | None:
    """None for platform admins (everything), else the caller's orgs."""
    return None if principal.is_platform_admin else set(principal.roles)


def unit_costs(session: Session, principal: Principal, now: datetime,
               rng: TimeRange, split_overhead: bool = False) -> sch.UnitCostsOut:
    """Non-admins: the deployments their orgs used, with their orgs' requests and tokens only and
    their token share of the cost (the unit price is the deployment's); no overhead line."""
    orgs = _visible_orgs(principal)
    allowed: set[uuid.UUID] | None = None
    if orgs is not None:
        used = usage_totals(session, rng.start, rng.end, ("deployment",), org_ids=list(orgs))
        names = [n for (n,) in used]
        allowed = set(session.scalars(select(Deployment.id).where(Deployment.name.in_(names))))
    items = compute_unit_costs(session, rng, to_us(now), allowed,
                               org_ids=None if orgs is None else orgs,
                               split_overhead=split_overhead)
    return sch.UnitCostsOut(start=rng.start, end=rng.end,
                            items=[sch.UnitCostItem.model_validate(i) for i in items])


def chargeback(session: Session, principal: Principal, now: datetime,
               rng: TimeRange, split_overhead: bool = False) -> sch.ChargebackOut:
    cb = compute_chargeback(session, rng, to_us(now), split_overhead=split_overhead)
    orgs = _visible_orgs(principal)
    lines = [ln for ln in cb.lines if orgs is None or ln.org_id in orgs]
    names = {ln.org_id: ln.org for ln in cb.lines}
    by_org = [sch.OrgCharge(org_id=o, org=names.get(o), cost_eur=eur)
              for o, eur in sorted(cb.by_org.items(), key=lambda kv: (-kv[1], str(kv[0])))
              if orgs is None or o in orgs]
    total = cb.total_eur if orgs is None else sum((c.cost_eur for c in by_org), Decimal("0.00"))
    return sch.ChargebackOut(start=rng.start, end=rng.end, total_eur=total,
                             items=[sch.ChargebackItem.model_validate(ln) for ln in lines],
                             by_org=by_org)


def usage(session: Session, principal: Principal, rng: TimeRange,
          group_by: list[str]) -> sch.UsageOut:
    bad = [g for g in group_by if g not in USAGE_GROUPS]
    if bad or len(set(group_by)) != len(group_by):
        raise Unprocessable(f"unknown or repeated group {', '.join(bad) or group_by!r}; "
                            f"expected some of {', '.join(USAGE_GROUPS)}")
    orgs = _visible_orgs(principal)
    res = usage_totals(session, rng.start, rng.end, group_by,
                       org_ids=None if orgs is None else list(orgs))
    items = [sch.UsageItem(key={g: None if v is None else str(v)
                                for g, v in zip(group_by, key, strict=True)},
                           requests=t.requests, prompt_tokens=t.prompt_tokens,
                           completion_tokens=t.completion_tokens, total_tokens=t.tokens)
             for key, t in sorted(res.items(), key=lambda kv: -kv[1].tokens)]
    return sch.UsageOut(start=rng.start, end=rng.end, group_by=group_by, items=items)


# ---------------------------------------------------------------- budgets


def budget_out(b: Budget) -> sch.BudgetOut:
    spent = b.spent_eur
    return sch.BudgetOut(
        id=b.id, scope=b.scope, target_id=b.target_id, org_id=b.org_id,
        monthly_eur=b.monthly_eur, warning_ratio=b.warning_ratio, state=b.state,
        state_changed_at=b.state_changed_at, spent_eur=spent,
        ratio=None if spent is None else fb.budget_ratio(spent, b.monthly_eur),
        evaluated_at=b.evaluated_at, created_at=b.created_at)


def _require_budget_admin(principal: Principal, scope: BudgetScope,
                          org_id: uuid.UUID | None) -> None:
    if scope == BudgetScope.DEPLOYMENT or org_id is None:
        principal.require_platform_admin()
        return
    principal.require_org_visible(org_id, "budget target")
    principal.require_role(org_id, Role.ADMIN)


def _target_org(session: Session, principal: Principal, scope: BudgetScope,
                target_id: uuid.UUID) -> uuid.UUID | None:
    if scope == BudgetScope.ORG:
        if session.get(Org, target_id) is None:
            raise NotFound("organisation not found")
        principal.require_org_visible(target_id, "organisation")
        return target_id
    if scope == BudgetScope.API_KEY:
        key = session.get(ApiKey, target_id)
        if key is None:
            raise NotFound("API key not found")
        principal.require_org_visible(key.org_id, "API key")
        return key.org_id
    principal.require_platform_admin()
    if session.get(Deployment, target_id) is None:
        raise NotFound("deployment not found")
    return None


def create_budget(session: Session, principal: Principal, body: sch.BudgetCreate,
                  now: datetime) -> sch.BudgetOut:
    org_id = _target_org(session, principal, body.scope, body.target_id)
    _require_budget_admin(principal, body.scope, org_id)
    if session.scalar(select(Budget.id).where(Budget.scope == body.scope,
                                              Budget.target_id == body.target_id)):
        raise Conflict("a budget already exists for this target")
    b = Budget(scope=body.scope, target_id=body.target_id, org_id=org_id,
               monthly_eur=body.monthly_eur, warning_ratio=body.warning_ratio, created_at=now)
    session.add(b)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict("a budget already exists for this target") from None
    fb.evaluate_budgets(session, now, [b.id])
    return budget_out(b)


def list_budgets(session: Session, principal: Principal, now: datetime,
                 scope: BudgetScope | None = None) -> sch.BudgetList:
    q = select(Budget).order_by(Budget.created_at, Budget.id)
    orgs = _visible_orgs(principal)
    if orgs is not None:
        q = q.where(Budget.org_id.in_(list(orgs)))
    if scope is not None:
        q = q.where(Budget.scope == scope)
    budgets = list(session.scalars(q))
    return sch.BudgetList(items=[budget_out(b) for b in budgets])


def get_budget(session: Session, principal: Principal, budget_id: uuid.UUID) -> Budget:
    b = session.get(Budget, budget_id)
    if b is None or not (principal.is_platform_admin or
                         (b.org_id is not None and b.org_id in principal.roles)):
        raise NotFound("budget not found")
    return b


def show_budget(session: Session, principal: Principal, budget_id: uuid.UUID,
                now: datetime) -> sch.BudgetOut:
    return budget_out(get_budget(session, principal, budget_id))


def update_budget(session: Session, principal: Principal, budget_id: uuid.UUID,
                  body: sch.BudgetPatch, now: datetime) -> sch.BudgetOut:
    b = get_budget(session, principal, budget_id)
    _require_budget_admin(principal, BudgetScope(b.scope), b.org_id)
    if body.monthly_eur is not None:
        b.monthly_eur = body.monthly_eur
    if body.warning_ratio is not None:
        b.warning_ratio = body.warning_ratio
    session.flush()
    fb.evaluate_budgets(session, now, [b.id])
    return budget_out(b)


def delete_budget(session: Session, principal: Principal, budget_id: uuid.UUID) -> None:
    b = get_budget(session, principal, budget_id)
    _require_budget_admin(principal, BudgetScope(b.scope), b.org_id)
    session.delete(b)
    session.flush()


def clock_of(app_state: object) -> Clock:
    """The injectable clock (``app.state.finops_clock``), default real UTC time."""
    return getattr(app_state, "finops_clock", utcnow)
