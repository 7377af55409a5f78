"""A worker node that never hosted a replica is the deployment's it was launched for (#12).

Seen on the laptop walk-through (one run in two): the autoscaler launched a node for a pending
replica, its raylet timed out on the loaded box, and the node was billed ~40 s, terminated and
replaced. It never hosted a replica and its interval names no deployment, so it was platform
overhead: ~5 % of the worker nodes' cost. Serve dates a replica from its creation (pending),
before its node's billing began, so the placement says which deployment was waiting for
capacity when the failed node was launched. The rows below are that run's, on a real database.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.models import Instance, InstanceType
from core.models_finops import ReplicaPlacement
from finops.attribution import NodeSpan, Placement, Wait, launched_for_waiting, with_launches
from finops.attribution_db import (
    ObservedReplica,
    load_node_spans,
    load_waits,
    record_placements,
    window_attribution,
)
from finops.ledger import to_us
from finops.spans import sync_spans
from tests.finops.helpers import Seed

T0 = datetime(2026, 12, 4, 19, 0, 10, tzinfo=UTC)  # the replicas are created (pending)


def s_(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def walk_through_rows(s: Session) -> dict[str, uuid.UUID]:
    """Embed's node (launched first), the node that failed to boot, burst's replacement
    node, then tiny-chat scaled from zero on a third node; the ingress on embed's node."""
    seed = Seed(s)
    p = seed.provider("local", 1, 0)
    l4 = s.get(InstanceType, seed.itype(p, "local-L4",
                                        [(datetime(2020, 1, 1, tzinfo=UTC), "0.36")]))
    assert l4 is not None
    l4.ray_resources = {"CPU": 2, "local_gpu_slot": 1}  # the local cloud's "GPU" node
    seed.itype(p, "cpu-2", [(datetime(2020, 1, 1, tzinfo=UTC), "0.05")])
    cpu = seed.instance(p, "cpu-2")  # a CPU-only system node, launched while burst waited
    seed.interval(cpu, s_(3.0), None)
    embed, burst, chat = (seed.deployment(n) for n in ("minilm-embed", "tiny-burst",
                                                       "tiny-chat"))
    a, failed, b, c = (seed.instance(p, "local-L4") for _ in range(4))
    seed.interval(a, s_(1.0), None)
    seed.interval(failed, s_(2.1), s_(41.4))  # raylet timed out: never joined Ray
    seed.interval(b, s_(41.4), None)
    seed.interval(c, s_(172.5), None)

    def place(rid: str, dep: uuid.UUID | None, name: str, node: uuid.UUID,
              start: datetime) -> ReplicaPlacement:
        return ReplicaPlacement(replica_id=rid, deployment_id=dep, deployment=name,
                                ray_node_id=f"ray-{node}", instance_id=node,
                                share_ppm=1_000_000, started_at=start)

    s.add_all([place("ing", None, "ingress", a, s_(0.68)),
               place("emb", embed, "minilm-embed", a, s_(0.679)),
               place("bur", burst, "tiny-burst", b, s_(0.68)),
               place("cha", chat, "tiny-chat", c, s_(171.7))])
    s.flush()
    return {"embed": embed, "burst": burst, "chat": chat, "failed": failed, "a": a, "b": b,
            "c": c, "cpu": cpu}


def test_a_node_that_failed_to_boot_is_the_waiting_deployments(
        db: sessionmaker[Session]) -> None:
    now = s_(600)
    with db() as s, s.begin():
        ids = walk_through_rows(s)
        sync_spans(s)
        att = window_attribution(s, to_us(now - timedelta(days=1)), to_us(now), to_us(now))
        assert sum(att.by_owner.values()) == att.total > 0
        a, b = to_us(now - timedelta(days=1)), to_us(now)
        node = {}
        for sp in load_node_spans(s, a, b, b):
            node[sp.instance_id] = node.get(sp.instance_id, 0) + sp.price_micro * (
                min(sp.end_us, b) - max(sp.start_us, a))
        assert node[ids["failed"]] > 0  # billed ~40 s
        # tiny-burst pays the failed node's time and its replacement's: nothing of the worker
        # nodes is overhead; the CPU-only node is.
        assert att.by_owner == {ids["embed"]: node[ids["a"]],
                                ids["burst"]: node[ids["failed"]] + node[ids["b"]],
                                ids["chat"]: node[ids["c"]], None: node[ids["cpu"]]}


def test_waits_are_read_from_placements_recorded_before_their_nodes_billing(
        db: sessionmaker[Session]) -> None:
    with db() as s, s.begin():
        ids = walk_through_rows(s)
        waits = sorted(load_waits(s, to_us(s_(2.1)), to_us(s_(2.1))), key=lambda w: w.start_us)
        # Embed waited 0.32 s for its node, burst 40.7 s; tiny-chat was created later.
        assert [(w.deployment_id, w.until_us - w.start_us) for w in waits] == [
            (ids["embed"], 321_000), (ids["burst"], 40_720_000)]
        # The failed node was launched after embed's: burst's is the only wait covering it.
        assert launched_for_waiting(to_us(s_(2.1)), waits) == ids["burst"]
        # Nothing waited at 600 s: a node launched then was launched for nobody.
        assert launched_for_waiting(to_us(s_(600)), load_waits(s, to_us(s_(600)),
                                                               to_us(s_(700)))) is None


def test_of_several_waiting_the_one_whose_node_came_last_and_placed_nodes_keep_theirs() -> None:
    n1, n2, d1, d2 = (uuid.UUID(int=i) for i in range(1, 5))
    waits = [Wait(d1, 0, 50), Wait(d2, 0, 900)]
    assert launched_for_waiting(10, waits) == d2
    assert launched_for_waiting(60, waits) == d2
    assert launched_for_waiting(901, waits) is None
    spans = [NodeSpan(n1, 1, 10, 100, launch_us=10), NodeSpan(n2, 1, 10, 100, launch_us=10),
             NodeSpan(uuid.UUID(int=9), 1, 10, 100, system=True, launch_us=10)]
    out = with_launches(spans, [Placement(n1, d1, 20, None)], waits)
    # n1 hosted a replica (idle goes by its placements); the head stays overhead.
    assert [sp.launched_for for sp in out] == [None, d2, None]


def test_a_replica_missed_by_one_status_is_reopened_not_duplicated(
        db: sessionmaker[Session]) -> None:
    t = datetime(2026, 12, 4, 19, 0, tzinfo=UTC)
    with db() as s, s.begin():
        seed = Seed(s)
        p = seed.provider("local", 1, 0)
        seed.itype(p, "local-L4", [(datetime(2020, 1, 1, tzinfo=UTC), "0.36")])
        dep = seed.deployment("tiny-chat")
        node = seed.instance(p, "local-L4")
        inst = s.get(Instance, node)
        assert inst is not None
        inst.ray_node_id = "ab" * 28
        seen = [ObservedReplica("rep-1", dep, "tiny-chat", "ab" * 28, node, 1_000_000,
                                started_at=t)]
        assert record_placements(s, seen, t + timedelta(seconds=10))["opened"] == 1
        # A status without the app (Serve redeploying) closes it...
        assert record_placements(s, [], t + timedelta(seconds=20))["closed"] == 1
        # ...and the same replica (same Serve start time) comes back: one row, open again.
        assert record_placements(s, seen, t + timedelta(seconds=30)) == {
            "opened": 1, "closed": 0, "live": 1}
        assert record_placements(s, seen, t + timedelta(seconds=40))["opened"] == 0
        rows = list(s.scalars(select(ReplicaPlacement)))
        assert [(r.started_at, r.ended_at) for r in rows] == [(t, None)]
