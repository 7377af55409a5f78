"""The fast read paths the console uses at scale give the same integers as the direct ones,
on Postgres and SQLite: the cost series from the daily rollup (``finops.costs.series_units``)
against bucketing every span, and unit costs' idle share attributed per run of buckets against
attributing every hour."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from core.models import (
    BillingInterval,
    CostDaily,
    CostSpan,
    Deployment,
    FinopsState,
    Instance,
    InstanceType,
    InstanceTypePrice,
    Provider,
    UsageHourly,
    UsageRecord,
)
from core.models_finops import ReplicaPlacement
from finops.attribution_db import window_attribution
from finops.costs import bucketize, fetch_span_rows, series_units
from finops.ledger import to_us, units_to_eur
from finops.spans import sync_spans
from finops.unitcost import _bucket_index, unit_costs
from finops.usage import rollup_usage
from finops.windows import TimeRange, bucket_edges
from tests.finops.helpers import Seed

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def _clear(s: Session) -> None:
    for m in (ReplicaPlacement, CostDaily, CostSpan, BillingInterval, Instance, Deployment,
              InstanceTypePrice, InstanceType, Provider, FinopsState, UsageRecord, UsageHourly):
        s.execute(delete(m))


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ivs=st.lists(st.tuples(st.integers(0, 9 * 86400), st.one_of(
           st.none(), st.integers(0, 4 * 86400)), st.integers(0, 999_999)),
           min_size=1, max_size=6),
       change=st.integers(1, 9 * 86400), now_s=st.integers(0, 12 * 86400),
       start_s=st.integers(0, 6 * 86400), length_s=st.integers(1, 6 * 86400),
       bucket=st.sampled_from(["hour", "day"]))
def test_series_from_the_daily_rollup_equals_bucketing_every_span(
        db: sessionmaker[Session], ivs: list[tuple[int, int | None, int]], change: int,
        now_s: int, start_s: int, length_s: int, bucket: str) -> None:
    now = T0 + timedelta(seconds=now_s)
    with db() as s, s.begin():
        _clear(s)
        seed = Seed(s)
        seed.provider("p", 60, 60)
        seed.itype("p", "t", [(T0, "1.234567"), (T0 + timedelta(seconds=change), "2.5")])
        for start, dur, us in ivs:
            inst = seed.instance("p", "t")
            st_ = T0 + timedelta(seconds=start, microseconds=us)
            seed.interval(inst, st_, None if dur is None else st_ + timedelta(seconds=dur))
    with db() as s, s.begin():
        sync_spans(s)
        # Unaligned ends: partial first and last days (and hours) besides whole ones.
        a = T0 + timedelta(seconds=start_s, microseconds=123)
        edges = [to_us(e) for e in bucket_edges(TimeRange(a, a + timedelta(seconds=length_s)),
                                                bucket)]
        rows = fetch_span_rows(s, edges[0], edges[-1], to_us(now))
        expected = bucketize([(p, x, y) for _, p, x, y in rows], edges)
        got = series_units(s, edges, to_us(now))
        assert got == expected


def test_unit_cost_idle_is_the_cost_of_the_hours_without_requests(
        db: sessionmaker[Session]) -> None:
    """Sparse, uneven activity (deployments active in different hours, a partial last hour,
    replicas sharing a node, records not rolled up yet): the idle cost equals the attribution's
    per-hour cost summed over each deployment's hours without a request."""
    now = T0 + timedelta(days=2, hours=3, minutes=25, seconds=7)
    with db() as s, s.begin():
        seed = Seed(s)
        seed.provider("p", 1, 0)
        seed.itype("p", "t", [(T0, "3.333333")])
        d1, d2, d3 = (seed.deployment(n) for n in ("one", "two", "three"))
        n1 = seed.instance("p", "t", deployment_id=d1)
        n2 = seed.instance("p", "t")
        seed.interval(n1, T0 + timedelta(minutes=7), None)
        seed.interval(n2, T0 + timedelta(hours=5, seconds=3), T0 + timedelta(days=1, hours=20))
        for k, (dep, node, a, b, share) in enumerate((
                (d1, n1, 10, 2000, 500_000), (d2, n1, 50, 400, 500_000),
                (d2, n2, 310, 900, 1_000_000), (d3, n2, 1000, 2400, 333_333))):
            s.add(ReplicaPlacement(replica_id=f"r{k}", deployment_id=dep, deployment=str(dep),
                                   ray_node_id=f"node-{node}", instance_id=node,
                                   share_ppm=share,
                                   started_at=T0 + timedelta(minutes=a),
                                   ended_at=T0 + timedelta(minutes=b)))
        org = seed.org()
        for minute, name in ((20, "one"), (75, "one"), (80, "two"), (600, "two"),
                             (601, "one"), (1500, "three"), (3000, "one"), (3200, "three")):
            seed.usage(T0 + timedelta(minutes=minute, seconds=11), (10, 5), deployment=name,
                       org_id=org)
    with db() as s, s.begin():
        sync_spans(s)
        rollup_usage(s)
        # One more request after the rollup, in the window's partial last hour.
        Seed(s).usage(now - timedelta(minutes=3), (1, 1), deployment="two", org_id=org)
    rng = TimeRange(T0, now)
    with db() as s:
        items = {i.deployment_id: i for i in unit_costs(s, rng, to_us(now))}
        edges = [to_us(e) for e in bucket_edges(rng, "hour")]
        att = window_attribution(s, edges[0], edges[-1], to_us(now), edges)
    active: dict[uuid.UUID, set[int]] = {d1: set(), d2: set(), d3: set()}
    for minute, dep in ((20, d1), (75, d1), (80, d2), (600, d2), (601, d1), (1500, d3),
                        (3000, d1), (3200, d3)):
        active[dep].add(_bucket_index(edges, to_us(T0 + timedelta(minutes=minute, seconds=11))))
    active[d2].add(len(edges) - 2)
    for dep, on in active.items():
        per_hour = att.buckets[dep]
        idle = sum(c for k, c in enumerate(per_hour) if k not in on)
        assert 0 < idle < sum(per_hour)
        assert items[dep].idle_cost_eur == units_to_eur(idle)

