"""Month-to-date chargeback spend of one API key (served to the ingress by key-verify).

spend = sum over the deployments the key used this month of
    the key's tokens / all tokens of that deployment this month x the deployment's GPU cost this
    month (billing intervals x prices, idle time included),
or, when the deployment spec overrides the price (``price.input_eur_per_1m`` and
``output_eur_per_1m``), the key's prompt and completion tokens x those prices.

Tokens are prompt + completion. A usage record without a deployment name is attributed to the
deployment named like its model (Serve LLM names deployments after the model by default).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

from sqlalchemy.orm import Session

from finops.deployments import deployment_cost_units, deployments_by_name, token_price_override
from finops.ledger import EUR_QUANTUM, UNITS_PER_EUR
from finops.usage import UsageTotals, usage_totals
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
                     end: datetime) -> dict[str, tuple[UsageTotals, int]]:
    """``deployment name -> (key usage, all tokens)`` for deployments the key used in range.

    Two aggregate queries over the hourly rollup plus the raw records not yet rolled up.
    """
    mine = usage_totals(session, start, end, ("deployment",), api_key_id=api_key_id)
    if not mine:
        return {}
    names = [n for (n,) in mine]
    totals = usage_totals(session, start, end, ("deployment",), deployments=names)
    return {n: (mine[(n,)], totals[(n,)].tokens if (n,) in totals else 0) for n in names}


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
            total += (Fraction(mine.prompt_tokens) * Fraction(override[0])
                      + Fraction(mine.completion_tokens) * Fraction(override[1])) / 1_000_000
        elif all_tokens > 0:
            by_cost[dep_id] = (mine.tokens, all_tokens)
    costs = deployment_cost_units(session, list(by_cost), start, now, now)
    for dep_id, (key_tokens, dep_tokens) in by_cost.items():
        total += Fraction(costs.get(dep_id, 0) * key_tokens, dep_tokens * UNITS_PER_EUR)
    return _fraction_to_eur(total)
