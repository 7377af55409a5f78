"""Sliding-window RPM/TPM with reservations (the state of the shared limiter actor)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from serve_apps.ratelimit import WINDOW_S, RateWindows


class Clock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Turn the event loop until ``condition()`` holds (at most ``timeout_s``). A fixed sleep just
    past the batcher's interval is not enough on a loaded machine: its ``wait_for`` timeout
    needs a few more loop turns, and a late wake-up can hand them to the test first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition() and loop.time() < deadline:
        await asyncio.sleep(0.01)


def test_rpm_window_slides() -> None:
    clock = Clock()
    w = RateWindows(clock)
    assert [w.acquire("k", f"r{i}", 3, None, 0) for i in range(3)] == [0.0, 0.0, 0.0]
    clock.t += 10
    assert w.acquire("k", "r3", 3, None, 0) == pytest.approx(WINDOW_S - 10)
    assert w.acquire("other", "x", 3, None, 0) == 0.0  # per key
    clock.t += WINDOW_S - 10
    assert w.acquire("k", "r4", 3, None, 0) == 0.0


def test_tpm_reserves_worst_case_then_settles() -> None:
    clock = Clock()
    w = RateWindows(clock)
    assert w.acquire("k", "a", None, 1000, 800) == 0.0
    assert w.acquire("k", "b", None, 1000, 300) > 0  # 800 reserved
    w.settle("k", "a", 120)  # it really used 120
    assert w.usage("k") == (1, 120)
    assert w.acquire("k", "b", None, 1000, 300) == 0.0
    assert w.usage("k") == (2, 420)


def test_retry_after_is_when_enough_expires() -> None:
    clock = Clock()
    w = RateWindows(clock)
    w.acquire("k", "a", None, 100, 60)
    clock.t += 20
    w.acquire("k", "b", None, 100, 30)
    clock.t += 5
    # 90 in the window; 50 more fits once "a" (60) expires, 35 s from now.
    assert w.acquire("k", "c", None, 100, 50) == pytest.approx(35)
    assert w.acquire("k", "huge", None, 100, 101) == WINDOW_S  # can never fit


def test_settle_of_an_expired_reservation_is_ignored() -> None:
    clock = Clock()
    w = RateWindows(clock)
    w.acquire("k", "a", 10, 100, 50)
    clock.t += WINDOW_S + 1
    w.settle("k", "a", 10)
    assert w.usage("k") == (0, 0)
    w.settle("nobody", "x", 1)


def test_admit_checks_rate_then_budget_and_releases_the_window_on_refusal() -> None:
    from serve_apps.ratelimit import OVER_BUDGET, RATE_LIMITED, BudgetAsk

    clock, wall = Clock(), Clock()
    w = RateWindows(clock, wall=wall)
    ask = BudgetAsk(left_eur=1.0, verified_at=wall.t, cost_eur=0.6)
    assert w.admit("k", "a", None, 10_000, 100, ask) == (0.0, "")
    # 0.6 reserved in flight: another 0.6 does not fit, and its tokens are not kept.
    wait, reason = w.admit("k", "b", None, 10_000, 100, ask)
    assert reason == OVER_BUDGET and wait > 0
    assert w.usage("k") == (1, 100)
    # Settled cheaper: 1.0 - 0.3 leaves room for 0.6.
    w.settle_cost("k", "a", 0.3)
    assert w.admit("k", "c", None, 10_000, 100, ask) == (0.0, "")
    assert w.admit("k", "d", 2, None, 0)[1] == RATE_LIMITED  # 2 requests already this minute


def test_budget_counts_costs_settled_since_the_verification_with_a_margin() -> None:
    from serve_apps.ratelimit import FLUSH_MARGIN_S, OVER_BUDGET, BudgetAsk

    clock, wall = Clock(), Clock()
    w = RateWindows(clock, wall=wall)
    w.admit("k", "a", None, None, 0, BudgetAsk(1.0, wall.t, 0.5))
    w.settle_cost("k", "a", 0.5)
    wall.t += 60
    # A verification 60 s later already includes that 0.5 (left 0.5): not counted twice.
    assert w.admit("k", "b", None, None, 0, BudgetAsk(0.5, wall.t, 0.5)) == (0.0, "")
    w.settle_cost("k", "b", 0.5)
    # A verification right after a settlement may predate its flush: counted (safe side).
    wall.t += FLUSH_MARGIN_S / 2
    assert w.admit("k", "c", None, None, 0, BudgetAsk(0.5, wall.t, 0.1))[1] == OVER_BUDGET


# ---------------------------------------------------------------- batched settlements


def test_settlements_are_sent_in_batches_after_the_interval_or_when_full() -> None:
    from serve_apps.ratelimit import SettleBatcher

    sent: list[list[tuple[str, str, str, float, float | None]]] = []

    async def main() -> None:
        batcher = SettleBatcher(sent.append, interval_s=0.05, max_pending=3)
        batcher.add(("settle", "k", "a", 10, None))
        batcher.add(("settle", "k", "b", 20, 0.1))
        await asyncio.sleep(0)
        assert sent == []  # not one call per settlement
        await until(lambda: sent != [])  # sent after the interval
        assert sent == [[("settle", "k", "a", 10, None), ("settle", "k", "b", 20, 0.1)]]
        for r in "cde":  # full: sent without waiting for the interval
            batcher.add(("settle", "k", r, 1, None))
        await asyncio.sleep(0.01)
        assert [len(b) for b in sent] == [2, 3]
        batcher.add(("settle", "k", "f", 1, None))
        batcher.close()  # shutdown sends what is pending
        assert [len(b) for b in sent] == [2, 3, 1]

    asyncio.run(main())


def test_batched_settlements_apply_in_order_and_a_failing_send_is_survived() -> None:
    from serve_apps.ratelimit import RateLimiterActor, SettleBatcher

    actor = RateLimiterActor()
    actor.windows = RateWindows(Clock())
    assert actor.windows.admit("k", "a", None, 1000, 800) == (0.0, "")
    assert actor.windows.admit("k", "b", None, 1000, 100) == (0.0, "")
    actor.settle_many([("settle", "k", "a", 50, None), ("settle", "k", "b", 20, None),
                       ("settle", "k", "gone", 5, None)])
    assert actor.usage("k") == (2, 70)

    def broken(_: object) -> None:
        raise ConnectionError("actor died")

    async def main() -> None:
        batcher = SettleBatcher(broken, interval_s=0.01)
        batcher.add(("settle", "k", "a", 1, None))
        await until(lambda: batcher._pending == [])  # the failing send has run
        batcher.add(("settle", "k", "b", 1, None))  # the task survived the failure
        await until(lambda: batcher._pending == [])
        assert batcher._pending == []
        batcher.close()

    asyncio.run(main())


# ---------------------------------------------------------------- leases


def test_leases_and_direct_admissions_never_exceed_the_limits_together() -> None:
    """Two replicas, each with a lease book, admitting locally while they can and asking the
    actor otherwise: over a minute, never more than the RPM/TPM limits, whatever the mix."""
    from serve_apps.ratelimit import LEASE_S, LeaseBook, RateLimiterActor

    clock = Clock()
    actor = RateLimiterActor()
    actor.windows = RateWindows(clock)
    rpm, tpm = 500, 50_000
    admitted: list[tuple[float, float]] = []  # (at, tokens)
    books = [LeaseBook(lambda s: actor.settle_many([s]), clock=clock) for _ in range(2)]
    local = 0
    for i in range(3000):
        book = books[i % 2]
        want = 10 + (i * 37) % 90
        rid = f"r{i}"
        if book.take("k", want) is not None:
            local += 1
        else:
            lease_id = f"lease-{i}"
            wait, _, lease, _ = actor.admit_lease("k", rid, rpm, tpm, want, None, lease_id, LEASE_S)
            if wait > 0:
                clock.t += 0.05
                continue
            if lease is not None:
                book.grant("k", lease_id, *lease, LEASE_S)
        admitted.append((clock.t, want))
        clock.t += 0.01
    # Sliding one-minute windows over what was admitted.
    for at, _ in admitted:
        inside = [w for t, w in admitted if at <= t < at + WINDOW_S]
        assert len(inside) <= rpm and sum(inside) <= tpm
    assert len(admitted) >= rpm  # the limit is reached, not starved by held slices
    assert local > len(admitted) / 2  # most never asked the actor


def test_small_limits_get_no_lease_and_unused_slices_are_given_back() -> None:
    from serve_apps.ratelimit import LeaseBook, RateLimiterActor

    clock = Clock()
    actor = RateLimiterActor()
    actor.windows = RateWindows(clock)
    assert actor.admit_lease("k", "a", 4, None, 1, None, "l1", 1.0)[:3] == (0.0, "", None)
    wait, _, lease, _ = actor.admit_lease("big", "a", 1000, None, 1, None, "l2", 1.0)
    assert wait == 0 and lease == (20, float("inf"))
    assert lease is not None
    assert actor.usage("big") == (21, 1)  # the request and the slice
    book = LeaseBook(lambda s: actor.settle_many([s]), clock=clock)
    book.grant("big", "l2", *lease, 1.0)
    assert [book.take("big", 5) for _ in range(3)] == ["l2"] * 3
    clock.t += 1.0
    assert book.take("big", 5) is None  # over: the 17 unused requests go back
    assert actor.usage("big") == (4, 1)
    # Budgets are never leased: every request is checked by the actor.
    from serve_apps.ratelimit import BudgetAsk

    ask = BudgetAsk(left_eur=10.0, verified_at=0.0, cost_eur=0.1)
    assert actor.admit_lease("big", "b", 1000, None, 1, ask, "l3", 1.0)[2] is None


def test_one_request_reserves_on_every_account_and_abandoned_reservations_expire() -> None:
    from serve_apps.ratelimit import BUDGET_EXCEEDED, RESERVATION_MAX_S, BudgetAsk

    clock, wall = Clock(), Clock()
    w = RateWindows(clock, wall=wall)

    def asks(cost: float) -> tuple[BudgetAsk, ...]:
        return (BudgetAsk(1.0, wall.t, cost, account="budget:org", reason=BUDGET_EXCEEDED),
                BudgetAsk(0.5, wall.t, cost, account="budget:key", reason=BUDGET_EXCEEDED))

    assert w.admit("k", "a", None, None, 0, asks(0.4)) == (0.0, "")
    assert w.admit("k", "b", None, None, 0, asks(0.2))[1] == BUDGET_EXCEEDED  # key: 0.6 > 0.5
    # The refusal reserved nothing on the org account either: 0.1 still fits both.
    for rid in ("c1", "c2"):
        assert w.admit("k", rid, None, None, 0, asks(0.04)) == (0.0, "")
    for rid in ("c1", "c2"):  # settled costs in the same second are summed into one entry
        w.settle_cost("k", rid, 0.01)
    assert [list(e) for e in w._budgets["budget:org"].settled] == [[500.0, 0.02]]
    # "a" is never settled (its replica died): after RESERVATION_MAX_S it stops counting.
    wall.t += RESERVATION_MAX_S
    assert w.admit("k", "d", None, None, 0, asks(0.45)) == (0.0, "")
