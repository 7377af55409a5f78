"""Attribution: each node's cost, idle time included, to the deployments whose replicas it hosted.

Pure functions on integers (ledger units, see :mod:`finops.ledger`), no database; the loaders
are in :mod:`finops.attribution_db`. Rules, applied to every instant of a node's billed span:

- a *system* node (the head, or a node that never hosted a replica and was not launched for a
  deployment) is **platform overhead** (owner ``None``);
- while replicas run on a worker node, its cost is split across their deployments by their
  share of the node's accelerator resources (``share_ppm``; the unused part of the node goes
  to the same deployments in the same proportions: it is their idle headroom);
- while no replica runs on it, the node belongs to the deployment it was launched for (its
  billing interval's ``deployment_id``); failing that, to the deployment of the replica that ran
  on it last (after it left), or first (before it started) — capacity started or kept for a
  deployment is that deployment's idle cost;
- a worker node that never hosted a replica (it failed to boot, or was overtaken by another
  node) was launched for the replica that was waiting for capacity when its billing began
  (:func:`with_launches`: a replica recorded from before its own node's billing began waited
  that long); without one, it is overhead.

The split of each constant stretch is exact (largest remainder on integer units), so for any
window, ``sum(attributed) + overhead == the ledger's total`` in units, and
:func:`to_eur_parts` turns units into micro-euro amounts that still sum to the rounded total.
"""

from __future__ import annotations

import bisect
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

from finops.ledger import EUR_QUANTUM, largest_remainder, units_to_eur

Owner = uuid.UUID | None  # None: platform overhead
FULL_SHARE = 1_000_000
_OPEN = 2**62


@dataclass(frozen=True)
class NodeSpan:
    """A piece of a node's billed span at one price (``end_us`` already effective)."""

    instance_id: uuid.UUID
    price_micro: int
    start_us: int
    end_us: int
    launched_for: uuid.UUID | None = None
    system: bool = False
    launch_us: int | None = None  # the start of its billing interval (when it was launched)


@dataclass(frozen=True)
class Placement:
    """A replica of ``deployment_id`` on node ``instance_id`` over ``[start_us, end_us)``."""

    instance_id: uuid.UUID
    deployment_id: uuid.UUID
    start_us: int
    end_us: int | None
    share_ppm: int = FULL_SHARE


@dataclass(frozen=True)
class Wait:
    """A replica of ``deployment_id`` that waited for capacity over ``[start_us, until_us]``:
    Serve dates a replica from its creation (pending), and its node's billing began later."""

    deployment_id: uuid.UUID
    start_us: int
    until_us: int


@dataclass
class Attribution:
    """Units per owner over the window (``None`` = platform overhead), and per bucket when
    bucket edges were given (``buckets[owner][k]`` for ``[edges[k], edges[k+1])``)."""

    total: int = 0
    by_owner: dict[Owner, int] = field(default_factory=lambda: defaultdict(int))
    buckets: dict[Owner, list[int]] = field(default_factory=dict)

    @property
    def overhead(self) -> int:
        return self.by_owner.get(None, 0)


def _split(units: int, weights: dict[uuid.UUID, int]) -> dict[uuid.UUID, int]:
    """Exact integer split of ``units`` by ``weights`` (largest remainder, deterministic)."""
    keys = sorted(weights, key=str)
    if len(keys) == 1:
        return {keys[0]: units}
    wsum = sum(weights[k] for k in keys)
    floors = [units * weights[k] // wsum for k in keys]
    rems = [units * weights[k] % wsum for k in keys]
    left = units - sum(floors)
    for i in sorted(range(len(keys)), key=lambda i: (-rems[i], i))[:left]:
        floors[i] += 1
    return dict(zip(keys, floors, strict=True))


def _idle_owner(launched_for: uuid.UUID | None, node_places: Sequence[Placement],
                t: int) -> Owner:
    """Who owns a node's stretch without replicas starting at ``t``."""
    if launched_for is not None:
        return launched_for
    before = [p for p in node_places if (p.end_us if p.end_us is not None else _OPEN) <= t]
    if before:
        last = max(before, key=lambda p: (p.end_us or _OPEN, str(p.deployment_id)))
        return last.deployment_id
    after = [p for p in node_places if p.start_us >= t]
    if after:
        return min(after, key=lambda p: (p.start_us, str(p.deployment_id))).deployment_id
    return None


def launched_for_waiting(launch_us: int, waits: Iterable[Wait]) -> uuid.UUID | None:
    """The deployment a node launched at ``launch_us`` was launched for: a replica waiting for
    capacity then. Of several, the one whose own node came last: a node that failed to boot is
    replaced for the same demand later, while the others' nodes were launched with it."""
    waiting = [w for w in waits if w.start_us <= launch_us <= w.until_us]
    if not waiting:
        return None
    return max(waiting, key=lambda w: (w.until_us, -w.start_us, str(w.deployment_id))
               ).deployment_id


def hosted(placements: Iterable[Placement]) -> set[uuid.UUID]:
    """Nodes that hosted a replica for some time (what :func:`attribute` counts)."""
    return {p.instance_id for p in placements if p.end_us is None or p.end_us > p.start_us}


def unplaced_workers(spans: Iterable[NodeSpan], placements: Iterable[Placement]
                     ) -> list[NodeSpan]:
    """Worker spans that would be overhead: no replica ever on the node, no deployment on its
    billing interval (the candidates of :func:`with_launches`)."""
    placed = hosted(placements)
    return [sp for sp in spans if not sp.system and sp.launched_for is None
            and sp.instance_id not in placed and sp.launch_us is not None]


def with_launches(spans: Sequence[NodeSpan], placements: Iterable[Placement],
                  waits: Sequence[Wait], only: set[uuid.UUID] | None = None) -> list[NodeSpan]:
    """``spans`` with the deployment each never-used worker node was launched for (see
    :func:`launched_for_waiting`) as its ``launched_for``; the others unchanged. ``only``: the
    nodes that can host a replica (with accelerators; None: all)."""
    todo = {id(sp) for sp in unplaced_workers(spans, placements)
            if only is None or sp.instance_id in only}
    if not todo or not waits:
        return list(spans)
    out = []
    for sp in spans:
        dep = launched_for_waiting(sp.launch_us, waits) \
            if id(sp) in todo and sp.launch_us is not None else None
        out.append(sp if dep is None else replace(sp, launched_for=dep))
    return out


def attribute(spans: Iterable[NodeSpan], placements: Iterable[Placement],
              window: tuple[int, int], edges: Sequence[int] | None = None) -> Attribution:
    """Attribute the cost of ``spans`` inside ``window`` (see the module docstring).

    ``placements`` may cover any time (all of a node's placements, so that idle time before and
    after them finds its owner). ``edges``: bucket edges inside the window, for per-bucket units.
    """
    a, b = window
    by_node: dict[uuid.UUID, list[Placement]] = defaultdict(list)
    for p in placements:
        if p.end_us is None or p.end_us > p.start_us:
            by_node[p.instance_id].append(p)
    cuts_edges = sorted(set(edges or ()))
    nb = len(cuts_edges) - 1
    out = Attribution()

    def add(owner: Owner, s: int, e: int, units: int) -> None:
        """``units`` of ``[s, e)`` to ``owner``, spread over the buckets it crosses in
        proportion to time (exact: cumulative floors), without cutting the span per bucket:
        a month of hourly buckets over 1,000 nodes is then one pass per edge, not a split."""
        out.by_owner[owner] += units
        if nb <= 0 or not units:
            return
        row = out.buckets.get(owner)
        if row is None:
            row = out.buckets[owner] = [0] * nb
        k = min(max(bisect.bisect_right(cuts_edges, s) - 1, 0), nb - 1)
        span, done = e - s, 0
        while k < nb - 1 and cuts_edges[k + 1] < e:
            cum = units * (cuts_edges[k + 1] - s) // span
            row[k] += cum - done
            done = cum
            k += 1
        row[k] += units - done

    for sp in spans:
        s, e = max(sp.start_us, a), min(sp.end_us, b)
        if e <= s or sp.price_micro == 0:
            continue
        places = [] if sp.system else by_node.get(sp.instance_id, [])
        if sp.system or (not places and sp.launched_for is None):
            u = sp.price_micro * (e - s)
            out.total += u
            add(None, s, e, u)
            continue
        points = {s, e}
        for p in places:
            for x in (p.start_us, p.end_us):
                if x is not None and s < x < e:
                    points.add(x)
        cuts = sorted(points)
        for t0, t1 in zip(cuts, cuts[1:], strict=False):
            u = sp.price_micro * (t1 - t0)
            out.total += u
            weights: dict[uuid.UUID, int] = defaultdict(int)
            for p in places:
                if p.start_us <= t0 and (p.end_us is None or p.end_us >= t1):
                    weights[p.deployment_id] += max(1, p.share_ppm)
            if weights:
                for dep, part in _split(u, weights).items():
                    add(dep, t0, t1, part)
            else:
                add(_idle_owner(sp.launched_for, places, t0), t0, t1, u)
    out.by_owner = dict(out.by_owner)
    return out


def to_eur_parts(units_by_owner: dict[Owner, int]) -> dict[Owner, Decimal]:
    """Owners' units as micro-euro amounts summing exactly to the rounded total."""
    owners = sorted(units_by_owner, key=lambda o: (o is None, str(o)))
    total = units_to_eur(sum(units_by_owner.values()))
    parts = largest_remainder(total, [max(0, units_by_owner[o]) for o in owners], EUR_QUANTUM)
    return dict(zip(owners, parts, strict=True))


def split_overhead(overhead: int, tokens: dict[uuid.UUID, int]) -> dict[uuid.UUID, int]:
    """Overhead units split by token share (exact; nothing when no deployment served tokens)."""
    weights = {d: t for d, t in tokens.items() if t > 0}
    if not weights or overhead <= 0:
        return {}
    return _split(overhead, weights)
