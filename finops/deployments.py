"""Per-deployment attributed GPU cost and the optional per-token price override of a spec."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Deployment
from finops.attribution_db import window_attribution
from finops.ledger import to_us


def _dec(raw: Any) -> Decimal | None:
    if raw is None or isinstance(raw, bool):
        return None
    try:
        value = Decimal(str(raw))
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() and value >= 0 else None


def token_price_override(spec: dict[str, Any] | None) -> tuple[Decimal, Decimal] | None:
    """``(input, output)`` EUR per 1M tokens when the deployment spec overrides the price.

    The deployment YAML's ``price: {input_eur_per_1m, output_eur_per_1m}``; a single
    ``pricing.eur_per_million_tokens`` (both directions) is accepted too.
    """
    if not isinstance(spec, dict):
        return None
    price = spec.get("price")
    if isinstance(price, dict):
        i, o = _dec(price.get("input_eur_per_1m")), _dec(price.get("output_eur_per_1m"))
        if i is not None and o is not None:
            return i, o
    pricing = spec.get("pricing")
    if isinstance(pricing, dict):
        both = _dec(pricing.get("eur_per_million_tokens"))
        if both is not None:
            return both, both
    return None


def deployments_by_name(session: Session,
                        names: Collection[str]) -> dict[str, tuple[uuid.UUID, dict[str, Any]]]:
    """``name -> (id, spec)`` for the named deployments (deleted ones included: they cost)."""
    if not names:
        return {}
    rows = session.execute(select(Deployment.name, Deployment.id, Deployment.spec)
                           .where(Deployment.name.in_(list(names))))
    return {n: (i, s or {}) for n, i, s in rows}


def deployment_cost_units(session: Session, deployment_ids: Collection[uuid.UUID],
                          start: datetime, end: datetime, now: datetime) -> dict[uuid.UUID, int]:
    """Attributed cost in units of each deployment over ``[start, end)`` (its replicas' share
    of the worker nodes they ran on, idle time included: :mod:`finops.attribution`)."""
    out: dict[uuid.UUID, int] = {d: 0 for d in deployment_ids}
    if not deployment_ids:
        return out
    att = window_attribution(session, to_us(start), to_us(end), to_us(now))
    for dep_id in out:
        out[dep_id] = att.by_owner.get(dep_id, 0)
    return out
