"""Attribution: attributed + overhead == the ledger's total, for random interleavings."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from finops.attribution import (
    NodeSpan,
    Placement,
    Wait,
    attribute,
    split_overhead,
    to_eur_parts,
    with_launches,
)
from finops.ledger import units_to_eur

NODES = [uuid.UUID(int=i + 1) for i in range(4)]
DEPS = [uuid.UUID(int=100 + i) for i in range(3)]
T = 10_000_000  # 10 s of microseconds as the horizon


@st.composite
def scenario(draw: st.DrawFn) -> tuple[list[NodeSpan], list[Placement], tuple[int, int],
                                      list[int], list[Wait]]:
    spans = []
    for node in draw(st.lists(st.sampled_from(NODES), min_size=1, max_size=4, unique=True)):
        launched = draw(st.one_of(st.none(), st.sampled_from(DEPS)))
        system = draw(st.booleans()) and launched is None
        t = draw(st.integers(0, T // 2))
        for _ in range(draw(st.integers(1, 3))):  # launches/terminations, price changes
            d = draw(st.integers(1, T // 3))
            spans.append(NodeSpan(node, draw(st.integers(0, 5_000_000)), t, t + d, launched,
                                  system, launch_us=t))
            t += d + draw(st.integers(0, T // 10))
    places = []
    for _ in range(draw(st.integers(0, 8))):
        s = draw(st.integers(0, T))
        e = draw(st.one_of(st.none(), st.integers(s, 2 * T)))
        places.append(Placement(draw(st.sampled_from(NODES)), draw(st.sampled_from(DEPS)), s, e,
                                draw(st.integers(1, 1_000_000))))
    a = draw(st.integers(0, T))
    b = draw(st.integers(a, 2 * T))
    k = draw(st.integers(0, 5))
    edges = sorted({a, b, *draw(st.lists(st.integers(a, b), max_size=k))})
    waits = []  # replicas waiting for capacity (nodes that never hosted one were launched for)
    for _ in range(draw(st.integers(0, 3))):
        w = draw(st.integers(0, T))
        waits.append(Wait(draw(st.sampled_from(DEPS)), w, w + draw(st.integers(0, T))))
    return spans, places, (a, b), edges, waits


@settings(max_examples=300, deadline=None)
@given(scenario())
def test_attributed_plus_overhead_is_the_ledger_total(
        case: tuple[list[NodeSpan], list[Placement], tuple[int, int], list[int],
                    list[Wait]]) -> None:
    spans, places, (a, b), edges, waits = case
    ledger = sum(s.price_micro * max(0, min(s.end_us, b) - max(s.start_us, a)) for s in spans)
    launched = with_launches(spans, places, waits)
    res = attribute(launched, places, (a, b), edges)
    assert res.total == ledger
    assert sum(res.by_owner.values()) == ledger
    for owner, per in res.buckets.items():
        assert sum(per) == res.by_owner[owner]
    eur = to_eur_parts(res.by_owner) if res.by_owner else {}
    assert sum(eur.values(), start=units_to_eur(0)) == units_to_eur(ledger)
    # System nodes are overhead only; overhead never goes to a deployment.
    sys_units = sum(s.price_micro * max(0, min(s.end_us, b) - max(s.start_us, a))
                    for s in spans if s.system)
    assert res.overhead >= sys_units
    # Knowing what a node was launched for only moves cost from overhead to deployments.
    plain = attribute(spans, places, (a, b), edges)
    assert res.overhead <= plain.overhead
    assert all(res.by_owner.get(d, 0) >= u for d, u in plain.by_owner.items() if d is not None)


def test_idle_before_and_after_a_replica_belongs_to_its_deployment() -> None:
    node, dep, other = NODES[0], DEPS[0], DEPS[1]
    span = NodeSpan(node, 1_000_000, 0, 100)
    # Replica of `dep` from 20 to 60 only: the node's whole cost is `dep`'s (idle before/after).
    res = attribute([span], [Placement(node, dep, 20, 60)], (0, 100))
    assert res.by_owner == {dep: 100_000_000}
    # Launched for `other`: idle stretches go to `other`, the replica's stretch to `dep`.
    span2 = NodeSpan(node, 1_000_000, 0, 100, launched_for=other)
    res = attribute([span2], [Placement(node, dep, 20, 60)], (0, 100))
    assert res.by_owner == {dep: 40_000_000, other: 60_000_000}


def test_shared_node_split_by_accelerator_share_and_head_is_overhead() -> None:
    node, head = NODES[0], NODES[1]
    spans = [NodeSpan(node, 4, 0, 100), NodeSpan(head, 1, 0, 100, system=True)]
    places = [Placement(node, DEPS[0], 0, None, 750_000), Placement(node, DEPS[1], 0, None,
                                                                    250_000),
              Placement(head, DEPS[2], 0, None)]  # replicas on the head: still overhead
    res = attribute(spans, places, (0, 100), [0, 50, 100])
    assert res.by_owner == {DEPS[0]: 300, DEPS[1]: 100, None: 100}
    assert res.buckets[DEPS[0]] == [150, 150]
    assert split_overhead(100, {DEPS[0]: 3, DEPS[1]: 1}) == {DEPS[0]: 75, DEPS[1]: 25}
