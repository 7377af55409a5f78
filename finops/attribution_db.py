"""Loads what :mod:`finops.attribution` needs (node cost spans, replica placements) and
records replica placements from Serve's status (called by the control API's Serve sync)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from core.models import BillingInterval, Instance, InstanceType
from core.models_finops import ReplicaPlacement
from finops.attribution import (
    FULL_SHARE,
    Attribution,
    NodeSpan,
    Placement,
    Wait,
    attribute,
    unplaced_workers,
    with_launches,
)
from finops.costs import _end_expr, _is_pg, _normalize_key
from finops.ledger import from_us, to_us

HEAD_MARKERS = ("head",)


def load_node_spans(session: Session, a_us: int, b_us: int, now_us: int) -> list[NodeSpan]:
    """Every priced cost span overlapping ``[a_us, b_us)``, with its node's role."""
    sql = (f"SELECT instance_id, deployment_id, price_micro, start_us, "  # noqa: S608
           f"{_end_expr(_is_pg(session))} AS e, interval_start_us FROM cost_spans "
           "WHERE start_us < :hi AND (is_open OR end_us > :lo) AND price_micro <> 0")
    rows = [(_normalize_key(i, "instance"), _normalize_key(d, "deployment"), int(p), int(s),
             int(e), int(li))
            for i, d, p, s, e, li in session.execute(text(sql),
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
    return [NodeSpan(i, p, s, e, d, i in heads, li) for i, d, p, s, e, li in rows]


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


def load_waits(session: Session, lo_us: int, hi_us: int) -> list[Wait]:
    """Replicas that waited for capacity at some instant of ``[lo_us, hi_us]``: recorded from
    before the billing of the node they ran on began (Serve dates a replica from its creation,
    pending until a node offers its resources). A replica runs past its node's start, so one
    that ended before ``lo_us`` cannot have been waiting then."""
    rp, bi = ReplicaPlacement, BillingInterval
    rows = session.execute(
        select(rp.deployment_id, rp.instance_id, rp.started_at).where(
            rp.deployment_id.is_not(None), rp.instance_id.is_not(None),
            rp.started_at <= from_us(hi_us),
            (rp.ended_at.is_(None)) | (rp.ended_at >= from_us(lo_us)))).all()
    if not rows:
        return []
    starts: dict[uuid.UUID, list[tuple[int, int | None]]] = {}
    ids = list({r.instance_id for r in rows})
    for i in range(0, len(ids), 1000):
        for iid, s, e in session.execute(select(bi.instance_id, bi.started_at, bi.ended_at)
                                         .where(bi.instance_id.in_(ids[i:i + 1000]))):
            starts.setdefault(iid, []).append((to_us(s), None if e is None else to_us(e)))
    out = []
    for dep, iid, started in rows:
        p_us = to_us(started)
        # The node's billing that this replica ran in: the first interval not over at its start.
        node_from = min((s for s, e in starts.get(iid, []) if e is None or e > p_us),
                        default=None)
        if node_from is not None and node_from > p_us:
            out.append(Wait(dep, p_us, node_from))
    return out


_NOT_ACCELERATORS = {"CPU", "memory", "object_store_memory"}


def accelerated_nodes(session: Session, instance_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """The nodes whose instance type offers accelerators (GPUs, or custom resources such as
    the local cloud's ``local_gpu_slot``): what a waiting replica asks for. A CPU-only node
    that hosted nothing is a system node, never launched for a replica."""
    ids = list(set(instance_ids))
    out: set[uuid.UUID] = set()
    it = InstanceType
    for i in range(0, len(ids), 1000):
        for iid, gpus, res in session.execute(
                select(Instance.id, it.gpu_count, it.ray_resources)
                .join(it, (it.provider_code == Instance.provider_code)
                      & (it.name == Instance.instance_type_name))
                .where(Instance.id.in_(ids[i:i + 1000]))):
            extra = any(k not in _NOT_ACCELERATORS and not str(k).startswith(
                ("accelerator_type:", "node:")) and isinstance(v, int | float) and v > 0
                for k, v in (res or {}).items())
            if (gpus or 0) > 0 or extra:
                out.add(iid)
    return out


def window_attribution(session: Session, a_us: int, b_us: int, now_us: int,
                       edges: Sequence[int] | None = None) -> Attribution:
    """The attribution of ``[a_us, b_us)`` (spans must be synced)."""
    spans = load_node_spans(session, a_us, b_us, now_us)
    places = load_placements(session, {s.instance_id for s in spans if not s.system})
    todo = unplaced_workers(spans, places)
    if todo:
        launches = [sp.launch_us for sp in todo if sp.launch_us is not None]
        waits = load_waits(session, min(launches), max(launches))
        if waits:
            spans = with_launches(spans, places, waits, only=accelerated_nodes(
                session, {sp.instance_id for sp in todo}))
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
    start time when Serve gives one (not after ``now``), else ``now``. A replica closed because
    one status missed it (Serve redeploying, a status without the app) and seen again with the
    same start time is the same placement: it is reopened (a second row would break the
    placement's unique key and, with it, every later sync).
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
    new = {key: o for key, o in seen.items() if key not in open_rows}
    closed_rows: dict[tuple[str, str, datetime], ReplicaPlacement] = {}
    replica_ids = sorted({o.replica_id for o in new.values()})
    for i in range(0, len(replica_ids), 1000):
        for row in session.scalars(select(rp).where(rp.replica_id.in_(replica_ids[i:i + 1000]),
                                                    rp.ended_at.is_not(None))):
            closed_rows[(row.replica_id, row.ray_node_id, row.started_at)] = row
    for o in new.values():
        start = o.started_at if o.started_at is not None and o.started_at <= now else now
        again = closed_rows.get((o.replica_id, o.ray_node_id, start))
        if again is not None:
            again.ended_at = None
            if again.instance_id is None:
                again.instance_id = o.instance_id
        else:
            session.add(rp(replica_id=o.replica_id, deployment_id=o.deployment_id,
                           deployment=o.deployment, ray_node_id=o.ray_node_id,
                           instance_id=o.instance_id, share_ppm=o.share_ppm,
                           started_at=start))
        opened += 1
    session.flush()
    return {"opened": opened, "closed": closed, "live": len(seen)}
