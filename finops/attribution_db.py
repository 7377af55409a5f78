"""Loads what :mod:`finops.attribution` needs (node cost spans, replica placements) and
records replica placements from Serve's status (called by the control API's Serve sync)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from core.models import Instance
from core.models_finops import ReplicaPlacement
from finops.attribution import FULL_SHARE, Attribution, NodeSpan, Placement, attribute
from finops.costs import _end_expr, _is_pg, _normalize_key
from finops.ledger import to_us

HEAD_MARKERS = ("head",)


def load_node_spans(session: Session, a_us: int, b_us: int, now_us: int) -> list[NodeSpan]:
    """Every priced cost span overlapping ``[a_us, b_us)``, with its node's role."""
    sql = (f"SELECT instance_id, deployment_id, price_micro, start_us, "  # noqa: S608
           f"{_end_expr(_is_pg(session))} AS e FROM cost_spans "
           "WHERE start_us < :hi AND (is_open OR end_us > :lo) AND price_micro <> 0")
    rows = [(_normalize_key(i, "instance"), _normalize_key(d, "deployment"), int(p), int(s),
             int(e))
            for i, d, p, s, e in session.execute(text(sql),
                                                 {"now": now_us, "lo": a_us, "hi": b_us})
            if int(e) > a_us and int(s) < b_us]
    ids = {r[0] for r in rows}
    heads: set[uuid.UUID] = set()
    if ids:
        for iid, node_type, itype in session.execute(
                select(Instance.id, Instance.node_type, Instance.instance_type_name)
                .where(Instance.id.in_(list(ids)))):
            if (node_type or "") in HEAD_MARKERS or (itype or "") in HEAD_MARKERS or (
                    itype or "").endswith("-head"):
                heads.add(iid)
    return [NodeSpan(i, p, s, e, d, i in heads) for i, d, p, s, e in rows]


def load_placements(session: Session, instance_ids: Iterable[uuid.UUID]) -> list[Placement]:
    """All recorded placements on these nodes (any time: idle stretches need them)."""
    ids = list(set(instance_ids))
    out: list[Placement] = []
    for i in range(0, len(ids), 1000):
        rp = ReplicaPlacement
        for iid, dep, s, e, share in session.execute(
                select(rp.instance_id, rp.deployment_id, rp.started_at, rp.ended_at,
                       rp.share_ppm).where(rp.instance_id.in_(ids[i:i + 1000]),
                                           rp.deployment_id.is_not(None))):
            out.append(Placement(iid, dep, to_us(s), None if e is None else to_us(e),
                                 int(share or FULL_SHARE)))
    return out


def window_attribution(session: Session, a_us: int, b_us: int, now_us: int,
                       edges: Sequence[int] | None = None) -> Attribution:
    """The attribution of ``[a_us, b_us)`` (spans must be synced)."""
    spans = load_node_spans(session, a_us, b_us, now_us)
    places = load_placements(session, {s.instance_id for s in spans if not s.system})
    return attribute(spans, places, (a_us, b_us), edges)


# ---------------------------------------------------------------- recording from Serve


@dataclass(frozen=True)
class ObservedReplica:
    """A live replica as Serve reports it, mapped to our deployment and node."""

    replica_id: str
    deployment_id: uuid.UUID | None
    deployment: str
    ray_node_id: str
    instance_id: uuid.UUID | None
    share_ppm: int
    started_at: datetime | None = None


def record_placements(session: Session, observed: Sequence[ObservedReplica],
                      now: datetime) -> dict[str, int]:
    """Open a placement for each newly seen replica, close those no longer live (at ``now``).

    A replica is the same while its (replica id, node) is; a new one starts at the replica's own
    start time when Serve gives one (not after ``now``), else ``now``.
    """
    rp = ReplicaPlacement
    open_rows = {(r.replica_id, r.ray_node_id): r
                 for r in session.scalars(select(rp).where(rp.ended_at.is_(None)))}
    seen = {(o.replica_id, o.ray_node_id): o for o in observed}
    closed = opened = 0
    for key, row in open_rows.items():
        if key not in seen:
            row.ended_at = max(now, row.started_at)
            closed += 1
        else:
            o = seen[key]
            if row.instance_id is None and o.instance_id is not None:
                row.instance_id = o.instance_id
    for key, o in seen.items():
        if key in open_rows:
            continue
        start = o.started_at if o.started_at is not None and o.started_at <= now else now
        session.add(rp(replica_id=o.replica_id, deployment_id=o.deployment_id,
                       deployment=o.deployment, ray_node_id=o.ray_node_id,
                       instance_id=o.instance_id, share_ppm=o.share_ppm, started_at=start))
        opened += 1
    session.flush()
    return {"opened": opened, "closed": closed, "live": len(seen)}
