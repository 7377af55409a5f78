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
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import func, or_, select, text, true, union
from sqlalchemy.orm import Session

from core.models import Deployment, UsageHourly, UsageRecord
from finops.attribution import split_overhead as split_by_tokens
from finops.attribution_db import window_attribution
from finops.deployments import token_price_override
from finops.ledger import EUR_QUANTUM, UNITS_PER_EUR, to_us, units_to_eur
from finops.usage import ceil_hour, floor_hour, usage_totals
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
    deps = {i: (n, spec) for i, n, spec in session.execute(
        select(Deployment.id, Deployment.name, Deployment.spec))}
    by_name = {n: i for i, (n, _) in deps.items()}
    usage = usage_totals(session, rng.start, rng.end, ("deployment",))
    mine = usage if org_ids is None else usage_totals(
        session, rng.start, rng.end, ("deployment",), org_ids=list(org_ids))
    active: dict[uuid.UUID | None, set[int]] = defaultdict(set)
    for name, hour in active_hours(session, rng):
        dep_id = by_name.get(name)
        if dep_id is None:
            continue
        # Mark the bucket(s) this usage hour touches as active.
        h0, h1 = to_us(max(hour, rng.start)), to_us(min(hour + timedelta(hours=1), rng.end))
        active[dep_id].add(max(0, _bucket_index(edges, h0)))
        active[dep_id].add(max(0, _bucket_index(edges, max(h0, h1 - 1))))
    # Attribute per run of buckets in which no deployment's activity changes, not per bucket:
    # the same units (the attribution's cumulative floors at a coarse edge are those at the
    # same fine edge), and a month where every deployment serves every hour is one bucket.
    runs = _activity_runs(len(edges) - 1, active.values())
    att = window_attribution(session, edges[0], edges[-1], now_us,
                             [edges[k] for k in runs] + [edges[-1]])
    totals: dict[uuid.UUID | None, list[int]] = defaultdict(lambda: [0, 0, 0])
    all_tokens: dict[uuid.UUID, int] = defaultdict(int)
    for (name,), tot in usage.items():
        dep_id = by_name.get(name)
        if dep_id is not None and tot.requests:
            all_tokens[dep_id] += tot.tokens
    for (name,), tot in mine.items():
        dep_id = by_name.get(name)
        if dep_id is None or tot.requests == 0:
            continue
        t = totals[dep_id]
        t[0] += tot.requests
        t[1] += tot.prompt_tokens
        t[2] += tot.completion_tokens
    shared = split_by_tokens(att.overhead, dict(all_tokens)) if split_overhead else {}
    nr = len(runs)
    owners = set(att.by_owner) | set(totals)
    if split_overhead and shared:
        owners.discard(None)
    out = []
    for dep_id in sorted(owners, key=lambda d: (d is None, str(d))):
        if dep_id is not None and deployment_ids is not None and dep_id not in deployment_ids:
            continue
        if dep_id is None and org_ids is not None:
            continue  # platform overhead is platform-wide: admins only
        per_run = att.buckets.get(dep_id, [0] * nr)
        cost = att.by_owner.get(dep_id, 0) + (shared.get(dep_id, 0) if dep_id else 0)
        on = active.get(dep_id, set())
        idle = sum(c for k, c in zip(runs, per_run, strict=True) if k not in on)
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


def active_hours(session: Session, rng: TimeRange) -> set[tuple[str, datetime]]:
    """``(deployment, UTC hour)`` of every hour of ``rng`` with a request, in one statement
    (one snapshot, as :func:`finops.usage.usage_totals`): the hourly rollup's whole hours, the
    records not rolled up yet, and the raw records of the partial hours at both ends. Postgres
    truncates to the hour in SQL (a few hundred rows a month, not one per raw record)."""
    h, r = UsageHourly.__table__, UsageRecord.__table__
    first_full, last_full = ceil_hour(rng.start), floor_hour(rng.end)
    pg = session.get_bind().dialect.name == "postgresql"
    dep = func.coalesce(r.c.deployment, r.c.model)
    at = func.date_trunc("hour", r.c.at, "UTC") if pg else r.c.at
    raw = (select(dep.label("d"), at.label("h"))
           .where(r.c.at >= rng.start, r.c.at < rng.end)
           .where(or_(text("NOT usage_records.rolled_up"), r.c.at < first_full,
                      r.c.at >= last_full) if first_full < last_full else true())
           .group_by(dep, at))
    q: Any = raw
    if first_full < last_full:
        q = union(select(func.coalesce(h.c.deployment, h.c.model).label("d"),
                         h.c.hour.label("h"))
                  .where(h.c.hour >= first_full, h.c.hour < last_full, h.c.requests > 0)
                  .distinct(), raw)
    out: set[tuple[str, datetime]] = set()
    for name, hour in session.execute(q):
        if isinstance(hour, str):  # SQLite through a UNION loses the column type
            hour = datetime.fromisoformat(hour)
        if hour.tzinfo is None:
            hour = hour.replace(tzinfo=UTC)
        out.add((name, floor_hour(hour)))
    return out


def _activity_runs(nb: int, active: Iterable[set[int]]) -> list[int]:
    """First bucket of each run of buckets over which no deployment's activity changes."""
    starts = {0}
    for on in active:
        for j in on:
            for k in (j, j + 1):
                if 0 < k < nb and ((k in on) != (k - 1 in on)):
                    starts.add(k)
    return sorted(starts)


def _bucket_index(edges: list[int], t: int) -> int:
    return min(bisect.bisect_right(edges, t) - 1, len(edges) - 2)

