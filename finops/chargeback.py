"""Chargeback: each deployment's GPU cost split across orgs by their token share.

Per deployment, its attributed cost of the window (:mod:`finops.attribution`: the worker nodes
its replicas ran on, idle time included) is rounded to the cent, then split by the orgs' tokens
with the largest-remainder method, so the parts sum exactly to it. A deployment that served no
tokens in the window is charged to nobody (``org_id`` None, "unallocated"). The head and system
nodes are "platform overhead" (deployment None), or, with ``split_overhead``, shared out across
deployments by token share first.
This is also how the infrastructure cost is broken down "by org".
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Deployment, Org
from finops.attribution import split_overhead as split_by_tokens
from finops.attribution_db import window_attribution
from finops.ledger import CENT, largest_remainder, to_us, units_to_eur
from finops.usage import usage_totals
from finops.windows import TimeRange

OVERHEAD_NAME = "(platform overhead)"


@dataclass
class ChargebackLine:
    deployment_id: uuid.UUID | None
    deployment: str | None
    org_id: uuid.UUID | None
    org: str | None
    tokens: int
    cost_eur: Decimal


@dataclass
class Chargeback:
    start: object
    end: object
    total_eur: Decimal
    lines: list[ChargebackLine] = field(default_factory=list)
    by_org: dict[uuid.UUID | None, Decimal] = field(default_factory=dict)


def split_cost(cost_eur: Decimal, tokens_by_org: dict[uuid.UUID | None, int]
               ) -> dict[uuid.UUID | None, Decimal]:
    """Split a deployment's cost (rounded to the cent) by token counts; sums exactly."""
    orgs = sorted((o for o, t in tokens_by_org.items() if t > 0), key=lambda o: str(o))
    if not orgs:
        return {None: cost_eur.quantize(CENT)}
    parts = largest_remainder(cost_eur, [tokens_by_org[o] for o in orgs])
    return dict(zip(orgs, parts, strict=True))


def chargeback(session: Session, rng: TimeRange, now_us: int, *,
               split_overhead: bool = False) -> Chargeback:
    """Chargeback of ``rng`` (spans must be synced, usage may or may not be rolled up)."""
    costs = dict(window_attribution(session, to_us(rng.start), to_us(rng.end), now_us).by_owner)
    names: dict[uuid.UUID, str] = {
        r[0]: r[1] for r in session.execute(select(Deployment.id, Deployment.name))}
    ids_by_name = {v: k for k, v in names.items()}
    usage = usage_totals(session, rng.start, rng.end, ("deployment", "org"))
    tokens: dict[uuid.UUID, dict[uuid.UUID | None, int]] = defaultdict(dict)
    for (dep_name, org), tot in usage.items():
        dep_id = ids_by_name.get(dep_name)
        if dep_id is not None:
            tokens[dep_id][org] = tokens[dep_id].get(org, 0) + tot.tokens
    if split_overhead and costs.get(None):
        shared = split_by_tokens(costs[None], {d: sum(t.values()) for d, t in tokens.items()})
        if shared:
            costs.pop(None)
            for dep_id, units in shared.items():
                costs[dep_id] = costs.get(dep_id, 0) + units
    org_names: dict[uuid.UUID, str] = {
        r[0]: r[1] for r in session.execute(select(Org.id, Org.name))}
    out = Chargeback(rng.start, rng.end, Decimal("0.00"))
    by_org: dict[uuid.UUID | None, Decimal] = defaultdict(lambda: Decimal("0.00"))
    for dep_id in sorted(costs, key=lambda d: str(d)):
        cost = units_to_eur(costs[dep_id], CENT)
        if dep_id is None:
            parts: dict[uuid.UUID | None, Decimal] = {None: cost}
        else:
            parts = split_cost(cost, tokens.get(dep_id, {}))
        for org, eur in parts.items():
            out.lines.append(ChargebackLine(
                dep_id, names.get(dep_id) if dep_id else OVERHEAD_NAME, org,
                org_names.get(org) if org else None,
                tokens.get(dep_id, {}).get(org, 0) if dep_id else 0, eur))
            by_org[org] += eur
        out.total_eur += cost
    out.by_org = dict(by_org)
    return out
