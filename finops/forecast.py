"""Forecast: the burn rate of what runs now, floored by the capacity deployments require.

Projected rate = max(current burn rate, scheduled minimum), where the scheduled minimum is, over
the non-deleted deployments, ``autoscaling.min_replicas`` x the hourly price of the node a replica
needs (one replica per node): an explicit ``instance_type`` (optionally with ``provider``), else
the cheapest catalog type with ``placement.accelerator_type`` GPUs and at least
``engine.tensor_parallel_size`` of them. CPU-only deployments add nothing.
The month-end projection is month-to-date + projected rate x the hours
left in the month.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Deployment, InstanceType
from finops.ledger import MICRO, PriceSchedule, to_us, units_to_eur
from finops.queries import load_prices

HORIZONS: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "30d": timedelta(days=30),
    "365d": timedelta(days=365),
}


@dataclass
class Forecast:
    burn_rate_micro: int
    minimum_rate_micro: int
    projected_rate_micro: int
    horizons: dict[str, Decimal]
    month_to_date_eur: Decimal
    month_end_eur: Decimal


def _spec_min_replicas(spec: dict[str, Any]) -> int:
    auto = spec.get("autoscaling") if isinstance(spec.get("autoscaling"), dict) else {}
    raw = auto.get("min_replicas", spec.get("min_replicas", 0)) if auto is not None else 0
    try:
        return max(0, int(raw))
    except (TypeError, ValueError):
        return 0


def _spec_instance_type(spec: dict[str, Any]) -> str | None:
    for v in (spec.get("instance_type"),
              (spec.get("resources") or {}).get("instance_type")
              if isinstance(spec.get("resources"), dict) else None,
              spec.get("node_type")):
        if isinstance(v, str) and v:
            return v
    return None


def minimum_rate_micro(session: Session, now: datetime,
                       prices: dict[tuple[str, str], PriceSchedule] | None = None) -> int:
    """Hourly cost (micro-EUR/h) of the minimum capacity the deployments require."""
    prices = prices if prices is not None else load_prices(session)
    now_us = to_us(now)
    types = session.execute(select(InstanceType.provider_code, InstanceType.name,
                                   InstanceType.gpu_model, InstanceType.gpu_count)).all()
    total = 0
    for spec, in session.execute(select(Deployment.spec).where(Deployment.deleted_at.is_(None))):
        if not isinstance(spec, dict):
            continue
        n = _spec_min_replicas(spec)
        if n == 0:
            continue
        itype = _spec_instance_type(spec)
        provider = spec.get("provider")
        candidates: list[int] = []
        if itype is not None:
            candidates = [s.price_at(now_us) for (p, t), s in prices.items()
                          if t == itype and (provider is None or p == provider)]
        else:
            placement = spec.get("placement") if isinstance(spec.get("placement"), dict) else {}
            accel = (placement or {}).get("accelerator_type")
            engine = spec.get("engine") if isinstance(spec.get("engine"), dict) else {}
            tp = (engine or {}).get("tensor_parallel_size") or 1
            if accel:
                candidates = [prices[(p, t)].price_at(now_us) for p, t, gm, gc in types
                              if gm == accel and (gc or 0) >= int(tp) and (p, t) in prices
                              and (provider is None or p == provider)]
        if candidates:
            total += n * min(candidates)
    return total


def project(burn_micro: int, minimum_micro: int, month_to_date_units: int,
            now: datetime, month_end: datetime) -> Forecast:
    """Pure projection from a rate and the month-to-date cost."""
    rate = max(burn_micro, minimum_micro)

    def over(d: timedelta) -> Decimal:
        us = d // timedelta(microseconds=1)
        return units_to_eur(rate * us)

    left_us = max(0, to_us(month_end) - to_us(now))
    return Forecast(
        burn_micro, minimum_micro, rate, {k: over(v) for k, v in HORIZONS.items()},
        units_to_eur(month_to_date_units), units_to_eur(month_to_date_units + rate * left_us))


def rate_eur(micro_per_hour: int) -> Decimal:
    """micro-EUR/h to EUR/h."""
    return (Decimal(micro_per_hour) / MICRO).quantize(Decimal("0.000001"))

