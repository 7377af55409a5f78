"""Property tests of the pure ledger: partitions, brute force, prices, rules, splits, budgets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from core.models import BudgetState
from finops.budgets import budget_state
from finops.costs import bucketize
from finops.ledger import (
    CENT,
    UNITS_PER_EUR,
    BillingRule,
    Interval,
    PriceSchedule,
    billed_span_us,
    from_us,
    largest_remainder,
    to_us,
    units_to_eur,
    window_cost_units,
)
from finops.spans import interval_pieces

T0 = datetime(2025, 1, 1, tzinfo=UTC)
S = 1_000_000

rules_st = st.builds(BillingRule, granularity_seconds=st.sampled_from([1, 10, 60, 3600]),
                     minimum_seconds=st.sampled_from([0, 30, 60, 600]))
prices_st = st.lists(st.tuples(st.integers(0, 4000), st.decimals("0.01", "30", places=3)),
                     min_size=1, max_size=4, unique_by=lambda x: x[0])


@st.composite
def intervals_st(draw: st.DrawFn, horizon: int = 4000) -> list[tuple[int, int | None]]:
    out = []
    for _ in range(draw(st.integers(1, 4))):
        s = draw(st.integers(0, horizon))
        if draw(st.booleans()):
            out.append((s, None))
        else:
            out.append((s, s + draw(st.integers(0, 1500))))
    return out


def _ivs(raw: list[tuple[int, int | None]]) -> list[Interval]:
    return [Interval(T0 + timedelta(seconds=s), None if e is None else T0 + timedelta(seconds=e),
                     "p", "t") for s, e in raw]


def _sched(points: list[tuple[int, Decimal]]) -> PriceSchedule:
    return PriceSchedule([(T0 + timedelta(seconds=t), v) for t, v in points])


def _brute_force(raw: list[tuple[int, int | None]], rule: BillingRule,
                 points: list[tuple[int, Decimal]], a: int, b: int, now: int) -> int:
    """Per-second integration, written independently of the ledger."""
    pts = sorted(points)

    def price(t: int) -> int:
        cur = pts[0][1]
        for eff, v in pts:
            if eff <= t:
                cur = v
        return int(cur * 1_000_000)

    total = 0
    for s, e in raw:
        if e is None and now < s:
            continue
        dur = (now if e is None else e) - s
        g = rule.granularity_seconds
        billed = max(rule.minimum_seconds, -(-dur // g) * g)
        for t in range(max(a, s), min(b, s + billed)):
            total += price(t) * S
    return total


@settings(max_examples=60, deadline=None)
@given(raw=intervals_st(), rule=rules_st, points=prices_st, a=st.integers(0, 3000),
       length=st.integers(1, 3000), now=st.integers(0, 6000))
def test_equals_brute_force_per_second(raw: list[tuple[int, int | None]], rule: BillingRule,
                                       points: list[tuple[int, Decimal]], a: int, length: int,
                                       now: int) -> None:
    prices = {("p", "t"): _sched(points)}
    got = window_cost_units(_ivs(raw), {"p": rule}, prices, T0 + timedelta(seconds=a),
                            T0 + timedelta(seconds=a + length), T0 + timedelta(seconds=now))
    assert got == _brute_force(raw, rule, points, a, a + length, now)


@settings(max_examples=80, deadline=None)
@given(raw=intervals_st(horizon=10**6), rule=rules_st, points=prices_st,
       cuts=st.lists(st.integers(1, 2 * 10**6 - 1), max_size=6, unique=True),
       micro=st.integers(0, 999_999), now=st.integers(0, 2 * 10**6))
def test_window_equals_sum_over_any_partition(raw: list[tuple[int, int | None]],
                                              rule: BillingRule,
                                              points: list[tuple[int, Decimal]],
                                              cuts: list[int], micro: int, now: int) -> None:
    prices = {("p", "t"): _sched(points)}
    ivs = _ivs(raw)
    nowdt = T0 + timedelta(seconds=now, microseconds=micro)
    edges = [T0, *(T0 + timedelta(seconds=c, microseconds=micro) for c in sorted(cuts)),
             T0 + timedelta(seconds=2 * 10**6)]
    whole = window_cost_units(ivs, {"p": rule}, prices, edges[0], edges[-1], nowdt)
    parts = [window_cost_units(ivs, {"p": rule}, prices, x, y, nowdt)
             for x, y in zip(edges, edges[1:], strict=False)]
    assert whole == sum(parts)
    # The bucketed series (what /series uses) agrees with the window integral bucket by bucket.
    sched = prices[("p", "t")]
    rows = []
    for iv in ivs:
        e = None if iv.ended_at is None else to_us(iv.ended_at)
        for p in interval_pieces(to_us(iv.started_at), e, rule, sched):
            s_, e_ = billed_span_us(to_us(iv.started_at), e, to_us(nowdt), rule)
            end = min(p.end_us, e_) if p.end_us is not None else e_
            rows.append((p.price_micro, p.start_us, end))
    assert bucketize(rows, [to_us(x) for x in edges]) == parts


@settings(max_examples=60, deadline=None)
@given(points=prices_st, s=st.integers(0, 5000), d=st.integers(0, 5000), rule=rules_st)
def test_price_changes_split_an_interval(points: list[tuple[int, Decimal]], s: int, d: int,
                                         rule: BillingRule) -> None:
    sched = _sched(points)
    pieces = interval_pieces(to_us(T0) + s * S, to_us(T0) + (s + d) * S, rule, sched)
    span = billed_span_us(to_us(T0) + s * S, to_us(T0) + (s + d) * S, 0, rule)
    assert pieces[0].start_us == span[0] and pieces[-1].end_us == span[1]
    assert all(p.price_micro == sched.price_at(p.start_us) for p in pieces)
    total = sum(p.price_micro * (p.end_us - p.start_us) for p in pieces)  # type: ignore[operator]
    assert total == sched.integrate(*span)


def test_billing_rule_granularity_and_minimum() -> None:
    per_minute = BillingRule(60, 60)
    assert per_minute.billed_us(0) == 60 * S
    assert per_minute.billed_us(1) == 60 * S
    assert per_minute.billed_us(60 * S) == 60 * S
    assert per_minute.billed_us(60 * S + 1) == 120 * S
    hourly_min = BillingRule(1, 3600)
    assert hourly_min.billed_us(10 * S) == 3600 * S
    assert hourly_min.billed_us(3601 * S - 1) == 3601 * S
    # An open interval is billed up to now with the rule applied; a future one costs nothing.
    assert billed_span_us(100, None, 50, per_minute) == (100, 100)
    assert billed_span_us(0, None, 61 * S, per_minute) == (0, 120 * S)


@settings(max_examples=200, deadline=None)
@given(total=st.decimals("0", "100000", places=6),
       weights=st.lists(st.integers(0, 10**9), min_size=1, max_size=12))
def test_largest_remainder_sums_exactly_to_the_cent(total: Decimal, weights: list[int]) -> None:
    parts = largest_remainder(total, weights)
    assert sum(parts) == total.quantize(CENT)
    assert all(p == p.quantize(CENT) and p >= 0 for p in parts)
    wsum = sum(weights)
    if wsum:
        for p, w in zip(parts, weights, strict=True):
            exact = total.quantize(CENT) * w / wsum
            assert abs(p - exact) < CENT


@settings(max_examples=200, deadline=None)
@given(monthly=st.decimals("0.01", "100000", places=2),
       ratio=st.decimals("0.01", "0.99", places=2))
def test_budget_state_changes_exactly_at_thresholds(monthly: Decimal, ratio: Decimal) -> None:
    warn_at = monthly * ratio
    tiny = Decimal("0.000001")
    assert budget_state(warn_at - tiny, monthly, ratio) == BudgetState.OK
    assert budget_state(warn_at, monthly, ratio) == BudgetState.WARNING
    assert budget_state(monthly - tiny, monthly, ratio) == (
        BudgetState.WARNING if monthly - tiny >= warn_at else BudgetState.OK)
    assert budget_state(monthly, monthly, ratio) == BudgetState.EXCEEDED


def test_units_round_trip() -> None:
    assert units_to_eur(UNITS_PER_EUR) == Decimal("1.000000")
    assert from_us(to_us(T0 + timedelta(microseconds=7))) == T0 + timedelta(microseconds=7)
