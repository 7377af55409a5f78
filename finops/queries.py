"""SQL access for the ledger: billing rules, price schedules and the intervals of a window.

Only intervals that can touch the window are fetched (index ``ix_billing_intervals_window``):
``started_at < end`` and (open, or ended no earlier than ``start`` minus the longest billing
extension any provider's rule can add).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.models import BillingInterval, InstanceType, InstanceTypePrice, Provider
from finops.ledger import US_PER_SECOND, BillingRule, Interval, PriceSchedule


def load_rules(session: Session) -> dict[str, BillingRule]:
    """Billing rule per provider code."""
    rows = session.execute(select(Provider.code, Provider.billing_granularity_seconds,
                                  Provider.billing_minimum_seconds))
    return {code: BillingRule(int(g or 1), int(m or 0)) for code, g, m in rows}


def load_prices(session: Session) -> dict[tuple[str, str], PriceSchedule]:
    """Price schedule per ``(provider_code, instance_type_name)``."""
    rows = session.execute(
        select(InstanceType.provider_code, InstanceType.name, InstanceTypePrice.effective_from,
               InstanceTypePrice.hourly_eur)
        .join(InstanceTypePrice, InstanceTypePrice.instance_type_id == InstanceType.id))
    points: dict[tuple[str, str], list[tuple[datetime, object]]] = defaultdict(list)
    for prov, name, eff, eur in rows:
        points[(prov, name)].append((eff, eur))
    return {k: PriceSchedule(v) for k, v in points.items()}  # type: ignore[arg-type]


def max_extension(rules: dict[str, BillingRule]) -> timedelta:
    """The longest a billed span can outlast its interval, over all providers."""
    us = max((r.max_extension_us for r in rules.values()), default=US_PER_SECOND)
    return timedelta(microseconds=us)


def fetch_intervals(session: Session, start: datetime, end: datetime,
                    rules: dict[str, BillingRule], *,
                    deployment_ids: Collection[uuid.UUID] | None = None) -> list[Interval]:
    """Intervals whose billed span may overlap ``[start, end)``."""
    bi = BillingInterval
    q = select(bi.started_at, bi.ended_at, bi.provider_code, bi.instance_type_name, bi.zone_code,
               bi.instance_id, bi.deployment_id).where(
        bi.started_at < end,
        or_(bi.ended_at.is_(None), bi.ended_at >= start - max_extension(rules)))
    if deployment_ids is not None:
        if not deployment_ids:
            return []
        q = q.where(bi.deployment_id.in_(list(deployment_ids)))
    return [Interval(s, e, p, t, z, i, d) for s, e, p, t, z, i, d in session.execute(q)]
