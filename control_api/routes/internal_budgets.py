"""Routes under /api/internal for the ingress's budget admission (the budgets that apply to a
request's org, key and deployment, with what is already spent).

Spend figures: a key budget's is computed now (read-only, the same figure key verification
serves); org and deployment budgets use the background job's last evaluation
(``Budget.spent_eur`` at ``evaluated_at``, refreshed every ``finops_refresh_seconds``) and are
only recomputed here when that evaluation is missing or older than ``STALE_EVALUATION_S``
(background job stopped): the ingress counts what it settled since ``as_of`` itself, for
about ten minutes (``serve_apps.ratelimit.SETTLED_RETENTION_S``), so a figure must never be
older than that.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from fastapi import APIRouter
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from control_api.deps import IngressDep, SessionDep, access
from core.db import utcnow
from core.models import Budget, BudgetScope, Deployment
from core.wire_budgets import ApplicableBudgets, ApplicableBudgetsRequest, BudgetView

router = APIRouter(prefix="/api/internal", tags=["internal"])

# An org/deployment evaluation older than this is recomputed on the spot.
STALE_EVALUATION_S = 300.0


@router.post("/budgets/applicable", openapi_extra=access("service"))
def post_applicable_budgets(body: ApplicableBudgetsRequest, db: SessionDep,
                            caller: IngressDep) -> ApplicableBudgets:
    """The budgets on the org, the key and the deployment (by name), with what is left."""
    result = applicable_budgets(db, body, utcnow())
    db.commit()  # a recomputation may have refreshed derived spans
    return result


def applicable_budgets(session: Session, query: ApplicableBudgetsRequest,
                       now: datetime) -> ApplicableBudgets:
    """See :func:`post_applicable_budgets`."""
    from finops.budgets import month_spends
    from finops.keys import month_spend_eur
    from finops.windows import month_start, next_month_start

    targets = [and_(Budget.scope == BudgetScope.ORG, Budget.target_id == query.org_id),
               and_(Budget.scope == BudgetScope.API_KEY, Budget.target_id == query.api_key_id)]
    dep_id = session.scalar(select(Deployment.id).where(
        Deployment.name == query.deployment, Deployment.deleted_at.is_(None)))
    if dep_id is not None:
        targets.append(and_(Budget.scope == BudgetScope.DEPLOYMENT,
                            Budget.target_id == dep_id))
    budgets = list(session.scalars(select(Budget).where(or_(*targets)).order_by(Budget.id)))
    stale_before = now - timedelta(seconds=STALE_EVALUATION_S)
    spent: dict[object, tuple[Decimal, datetime]] = {}
    stale = []
    for b in budgets:
        if BudgetScope(b.scope) == BudgetScope.API_KEY:
            spent[b.id] = (Decimal(month_spend_eur(session, b.target_id, now)), now)
        elif b.spent_eur is None or b.evaluated_at is None or b.evaluated_at < stale_before \
                or b.evaluated_at < month_start(now):
            stale.append(b)  # also a last-month evaluation: the month rolled over
        else:
            spent[b.id] = (Decimal(b.spent_eur), b.evaluated_at)
    if stale:
        for budget_id, eur in month_spends(session, stale, now).items():
            spent[budget_id] = (eur, now)
    end = next_month_start(now)
    views = []
    for b in budgets:
        eur, as_of = spent[b.id]
        limit = Decimal(b.monthly_eur)
        views.append(BudgetView(budget_id=b.id, scope=b.scope, target_id=b.target_id,
                                limit_eur=limit, spent_eur=eur,
                                left_eur=max(Decimal(0), limit - eur), as_of=as_of,
                                period_end=end))
    return ApplicableBudgets(budgets=views)

