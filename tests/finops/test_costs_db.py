"""The SQL paths (cost spans, usage rollup) agree with the pure ledger, on Postgres and SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, update
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
from finops.chargeback import chargeback
from finops.costs import burn_rate, window_costs_units
from finops.ledger import to_us
from finops.ledger import window_cost_units as pure_cost
from finops.queries import fetch_intervals, load_prices, load_rules
from finops.spans import sync_spans
from finops.usage import rollup_usage, usage_totals
from finops.windows import TimeRange
from tests.finops.helpers import Seed

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def _clear(s: Session) -> None:
    for m in (CostDaily, CostSpan, BillingInterval, Instance, Deployment, InstanceTypePrice,
              InstanceType, Provider, FinopsState, UsageRecord, UsageHourly):
        s.execute(delete(m))


def _pure(s: Session, a: datetime, b: datetime, now: datetime) -> int:
    rules = load_rules(s)
    return pure_cost(fetch_intervals(s, a, b, rules), rules, load_prices(s), a, b, now)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ivs=st.lists(st.tuples(st.integers(0, 20 * 86400), st.one_of(
           st.none(), st.integers(0, 3 * 86400)), st.integers(0, 999_999)),
           min_size=1, max_size=6),
       g=st.sampled_from([1, 60, 3600]), m=st.sampled_from([0, 60, 1800]),
       change=st.integers(1, 20 * 86400), now_s=st.integers(0, 25 * 86400),
       cuts=st.lists(st.integers(1, 30 * 86400 - 1), max_size=3, unique=True))
def test_sql_costs_match_pure_ledger_and_partitions(
        db: sessionmaker[Session], ivs: list[tuple[int, int | None, int]], g: int, m: int,
        change: int, now_s: int, cuts: list[int]) -> None:
    now = T0 + timedelta(seconds=now_s)
    with db() as s, s.begin():
        _clear(s)
        seed = Seed(s)
        seed.provider("p", g, m)
        seed.itype("p", "t", [(T0, "1.234"), (T0 + timedelta(seconds=change), "2.5")])
        dep = seed.deployment(f"d{now_s}-{change}")
        for k, (start, dur, us) in enumerate(ivs):
            inst = seed.instance("p", "t", deployment_id=dep if k % 2 else None)
            st_ = T0 + timedelta(seconds=start, microseconds=us)
            seed.interval(inst, st_, None if dur is None else st_ + timedelta(seconds=dur))
    with db() as s, s.begin():
        sync_spans(s)
        edges = [T0 - timedelta(days=1), *(T0 + timedelta(seconds=c) for c in sorted(cuts)),
                 T0 + timedelta(days=30)]
        wins = [(to_us(x), to_us(y)) for x, y in zip(edges, edges[1:], strict=False)]
        parts = [r.get(None, 0) for r in window_costs_units(s, wins, to_us(now))]
        whole = window_costs_units(s, [(to_us(edges[0]), to_us(edges[-1]))], to_us(now))[0]
        assert whole.get(None, 0) == sum(parts) == _pure(s, edges[0], edges[-1], now)
        by_dep = window_costs_units(s, [(to_us(edges[0]), to_us(edges[-1]))], to_us(now),
                                    "deployment")[0]
        assert sum(by_dep.values()) == sum(parts)
        assert all(p == _pure(s, x, y, now) for p, x, y in zip(
            parts, edges, edges[1:], strict=False))
        # A price added later resets the affected intervals; a close is picked up too.
        it = s.query(InstanceType).one()
        s.add(InstanceTypePrice(instance_type_id=it.id, hourly_eur=Decimal("9"),
                                effective_from=T0 + timedelta(days=5, microseconds=3)))
        s.execute(update(BillingInterval).where(BillingInterval.ended_at.is_(None))
                  .values(ended_at=T0 + timedelta(days=26)))
        s.flush()
        sync_spans(s)
        later = T0 + timedelta(days=40)
        got = window_costs_units(s, [(to_us(edges[0]), to_us(later))], to_us(later))[0]
        assert got.get(None, 0) == _pure(s, edges[0], later, later)


def test_burn_rate_and_chargeback_sum_to_the_cent(db: sessionmaker[Session]) -> None:
    now = T0 + timedelta(days=3, hours=5, minutes=7, seconds=3)
    with db() as s, s.begin():
        seed = Seed(s)
        seed.provider("p", 60, 60)
        seed.itype("p", "t", [(T0, "1.111111")])
        d1, d2 = seed.deployment("one"), seed.deployment("two")
        orgs = [seed.org() for _ in range(3)]
        for d in (d1, d1, d2):
            seed.interval(seed.instance("p", "t", deployment_id=d), T0, None)
        for k, o in enumerate(orgs):
            seed.usage(T0 + timedelta(hours=k), (k + 1, 2 * k), deployment="one", org_id=o)
        seed.usage(T0 + timedelta(hours=1), (7, 0), deployment="two", org_id=orgs[0])
    with db() as s, s.begin():
        sync_spans(s)
        br = burn_rate(s, to_us(now))
        assert (br.micro_per_hour, br.running_instances) == (3 * 1_111_111, 3)
        cb = chargeback(s, TimeRange(T0, now), to_us(now))
        per_dep: dict[object, Decimal] = {}
        for ln in cb.lines:
            per_dep[ln.deployment_id] = per_dep.get(ln.deployment_id, Decimal(0)) + ln.cost_eur
        totals = window_costs_units(s, [(to_us(T0), to_us(now))], to_us(now), "deployment")[0]
        from finops.ledger import CENT, units_to_eur

        assert per_dep == {d: units_to_eur(u, CENT) for d, u in totals.items()}
        assert sum(cb.by_org.values()) == cb.total_eur == sum(per_dep.values())
        assert len([ln for ln in cb.lines if ln.deployment_id == d1]) == 3


def test_usage_rollup_counts_each_record_once(db: sessionmaker[Session]) -> None:
    with db() as s, s.begin():
        seed = Seed(s)
        org = seed.org()
        for k in range(30):
            seed.usage(T0 + timedelta(minutes=17 * k, seconds=k), (k, 1), deployment=None,
                       model="m" if k % 3 else "n", org_id=org if k % 2 else None)
    a, b = T0 + timedelta(minutes=5), T0 + timedelta(minutes=17 * 29 - 3)
    with db() as s:
        before = usage_totals(s, a, b, ("deployment", "org"))
    with db() as s, s.begin():
        assert rollup_usage(s, batch=7) == 30
        assert rollup_usage(s) == 0
        after = usage_totals(s, a, b, ("deployment", "org"))
        # Late record in an already rolled-up hour: still counted once.
        Seed(s).usage(T0 + timedelta(hours=2, minutes=1), (100, 0), deployment="m",
                      org_id=org)
    assert after == before
    with db() as s:
        late = usage_totals(s, a, b, ("deployment",))
        assert late[("m",)].prompt_tokens == before_sum(before, "m") + 100
    with db() as s, s.begin():
        rollup_usage(s)
    with db() as s:
        assert usage_totals(s, a, b, ("deployment",)) == late


def before_sum(totals: dict[tuple[object, ...], object], dep: str) -> int:
    return sum(t.prompt_tokens for k, t in totals.items() if k[0] == dep)  # type: ignore[attr-defined]
