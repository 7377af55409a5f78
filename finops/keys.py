"""Month-to-date chargeback spend of one API key (served to the ingress by key-verify).

spend = sum over the deployments the key used this month of
    the key's tokens / all tokens of that deployment this month x the deployment's GPU cost this
    month (billing intervals x prices, idle time included),
or, when the deployment spec sets ``pricing.eur_per_million_tokens``, the key's tokens x that price.

Tokens are prompt + completion. A usage record without a deployment name is attributed to the
deployment named like its model (Serve LLM names deployments after the model by default).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from control_api.models import UsageRecord
from finops.deployments import deployment_cost_units, deployments_by_name, token_price_override
from finops.ledger import EUR_QUANTUM, UNITS_PER_EUR
from finops.windows import month_start


def _fraction_to_eur(x: Fraction, quantum: Decimal = EUR_QUANTUM) -> Decimal:
    # Round half-even at micro-EUR: exact rational in, one rounding out.
    scale = int(1 / quantum)
    q = x * scale
    n, r = divmod(q.numerator, q.denominator)
    twice = 2 * r
    if twice > q.denominator or (twice == q.denominator and n % 2 == 1):
        n += 1
    return (Decimal(n) / scale).quantize(quantum)


def key_month_tokens(session: Session, api_key_id: uuid.UUID, start: datetime,
                     end: datetime) -> dict[str, tuple[int, int]]:
    """``deployment name -> (key tokens, all tokens)`` for deployments the key used in range."""
    u = UsageRecord
    dep = func.coalesce(u.deployment, u.model)
    tokens = u.prompt_tokens + u.completion_tokens
    mine = dict(session.execute(
        select(dep, func.sum(tokens)).where(u.api_key_id == api_key_id, u.at >= start, u.at < end)
        .group_by(dep)).all())
    if not mine:
        return {}
    names = list(mine)
    totals = dict(session.execute(
        select(dep, func.sum(tokens)).where(
            u.at >= start, u.at < end,
            or_(u.deployment.in_(names), and_(u.deployment.is_(None), u.model.in_(names))))
        .group_by(dep)).all())
    return {n: (int(mine[n] or 0), int(totals.get(n) or 0)) for n in names}


def month_spend_eur(session: Session, api_key_id: uuid.UUID, now: datetime) -> Decimal:
    """Chargeback spend (EUR, 6 decimals) of ``api_key_id`` this UTC month up to ``now``."""
    start = month_start(now)
    usage = key_month_tokens(session, api_key_id, start, now)
    if not usage:
        return Decimal(0).quantize(EUR_QUANTUM)
    deps = deployments_by_name(session, usage)
    by_cost: dict[uuid.UUID, tuple[int, int]] = {}
    total = Fraction(0)
    for name, (mine, all_tokens) in usage.items():
        if name not in deps:
            continue  # usage of an unknown deployment has no GPU cost to share
        dep_id, spec = deps[name]
        override = token_price_override(spec)
        if override is not None:
            total += Fraction(mine) * Fraction(override) / 1_000_000
        elif all_tokens > 0:
            by_cost[dep_id] = (mine, all_tokens)
    costs = deployment_cost_units(session, list(by_cost), start, now, now)
    for dep_id, (mine, all_tokens) in by_cost.items():
        total += Fraction(costs.get(dep_id, 0) * mine, all_tokens * UNITS_PER_EUR)
    return _fraction_to_eur(total)
