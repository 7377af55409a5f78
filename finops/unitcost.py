"""EUR per million tokens per deployment, idle time included and reported separately.

A deployment's cost is what :mod:`finops.attribution` gives it: the worker nodes' cost while
its replicas ran on them (by accelerator share), plus their idle time before and after (capacity
launched or kept for it). The head and CPU-only system nodes are *platform overhead*: their own
line (``deployment_id`` None), or, with ``split_overhead``, shared out by token share.

unit cost = attributed cost in the window / tokens served x 1e6. Idle cost = the attributed cost
of the buckets (hours; days for windows over 62 days) in which the deployment served no request.
Restricted to some orgs (``org_ids``, non-admins), tokens and requests are those orgs' only and
the cost is their token share of the deployment's cost (so the unit price is the same).
"""

from __future__ import annotations

import bisect
import uuid
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Deployment
from finops.attribution import split_overhead as split_by_tokens
from finops.attribution_db import window_attribution
from finops.deployments import token_price_override
from finops.ledger import EUR_QUANTUM, UNITS_PER_EUR, to_us, units_to_eur
from finops.usage import usage_totals
from finops.windows import TimeRange, bucket_edges

RATIO_QUANTUM = Decimal("0.0001")


@dataclass
class UnitCost:
    deployment_id: uuid.UUID | None
    deployment: str | None
    cost_eur: Decimal
    idle_cost_eur: Decimal
    idle_share: Decimal | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    eur_per_million_tokens: Decimal | None
    price_override_input_eur_per_1m: Decimal | None
    price_override_output_eur_per_1m: Decimal | None


def eur_per_million(cost_units: int, tokens: int) -> Decimal | None:
    """Cost per million tokens (micro-EUR precision), None when no token was served."""
    if tokens <= 0:
        return None
    return (Decimal(cost_units) * 1_000_000 / (Decimal(UNITS_PER_EUR) * tokens)).quantize(
        EUR_QUANTUM, rounding=ROUND_HALF_EVEN)


OVERHEAD_NAME = "(platform overhead)"


def _scaled(units: int, part: int, whole: int) -> int:
    return units if part == whole else (units * part // whole if whole else 0)


def unit_costs(session: Session, rng: TimeRange, now_us: int,
               deployment_ids: set[uuid.UUID] | None = None, *,
               org_ids: Collection[uuid.UUID] | None = None,
               split_overhead: bool = False) -> list[UnitCost]:
    """Unit costs of every deployment with cost or usage in ``rng`` (spans must be synced)."""
    bucket = "hour" if rng.duration <= timedelta(days=62) else "day"
    edges_dt = bucket_edges(rng, bucket)
    edges = [to_us(e) for e in edges_dt]
    att = window_attribution(session, edges[0], edges[-1], now_us, edges)
    deps = {i: (n, spec) for i, n, spec in session.execute(
        select(Deployment.id, Deployment.name, Deployment.spec))}
    by_name = {n: i for i, (n, _) in deps.items()}
    usage = usage_totals(session, rng.start, rng.end, ("deployment",), by_hour=True)
    mine = usage if org_ids is None else usage_totals(
        session, rng.start, rng.end, ("deployment",), by_hour=True, org_ids=list(org_ids))
    active: dict[uuid.UUID | None, set[int]] = defaultdict(set)
    totals: dict[uuid.UUID | None, list[int]] = defaultdict(lambda: [0, 0, 0])
    all_tokens: dict[uuid.UUID, int] = defaultdict(int)
    for (name, hour), tot in usage.items():
        dep_id = by_name.get(name)
        if dep_id is None or tot.requests == 0:
            continue
        all_tokens[dep_id] += tot.tokens
        # Mark the bucket(s) this usage hour touches as active.
        h0, h1 = to_us(max(hour, rng.start)), to_us(min(hour + timedelta(hours=1), rng.end))
        active[dep_id].add(max(0, _bucket_index(edges, h0)))
        active[dep_id].add(max(0, _bucket_index(edges, max(h0, h1 - 1))))
    for (name, _hour), tot in mine.items():
        dep_id = by_name.get(name)
        if dep_id is None or tot.requests == 0:
            continue
        t = totals[dep_id]
        t[0] += tot.requests
        t[1] += tot.prompt_tokens
        t[2] += tot.completion_tokens
    shared = split_by_tokens(att.overhead, dict(all_tokens)) if split_overhead else {}
    nb = len(edges) - 1
    owners = set(att.by_owner) | set(totals)
    if split_overhead and shared:
        owners.discard(None)
    out = []
    for dep_id in sorted(owners, key=lambda d: (d is None, str(d))):
        if dep_id is not None and deployment_ids is not None and dep_id not in deployment_ids:
            continue
        if dep_id is None and org_ids is not None:
            continue  # platform overhead is platform-wide: admins only
        per_bucket = list(att.buckets.get(dep_id, [0] * nb))
        cost = att.by_owner.get(dep_id, 0) + (shared.get(dep_id, 0) if dep_id else 0)
        idle = sum(c for k, c in enumerate(per_bucket) if k not in active.get(dep_id, set()))
        req, pt, ct = totals.get(dep_id, [0, 0, 0])
        if org_ids is not None and dep_id is not None:
            cost = _scaled(cost, pt + ct, all_tokens.get(dep_id, 0))
            idle = _scaled(idle, pt + ct, all_tokens.get(dep_id, 0))
        name, spec = deps.get(dep_id, (None, None)) if dep_id else (OVERHEAD_NAME, None)
        override = token_price_override(spec)
        out.append(UnitCost(
            dep_id, name, units_to_eur(cost), units_to_eur(idle),
            (Decimal(idle) / Decimal(cost)).quantize(RATIO_QUANTUM) if cost else None,
            req, pt, ct, eur_per_million(cost, pt + ct),
            override[0] if override else None, override[1] if override else None))
    return out


def _bucket_index(edges: list[int], t: int) -> int:
    return min(bisect.bisect_right(edges, t) - 1, len(edges) - 2)

