"""The capacity-aware rules of the replica policy (``max_ongoing_requests`` known, the load's
own mean over ``smooth_s``, starting replicas reported): bursts are answered at once only
when the growing load would saturate the replicas before a new one could serve; a backlog
that drains by itself waits like any marginal overload; starts whose need passed are
cancelled. Simulated time only (no clock)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.policy import (
    BURST,
    CANCEL_START,
    HOLD,
    UPSCALE,
    UPSCALE_WAIT,
    Decision,
    LoadSample,
    PolicyConfig,
    decide,
    desired_replicas,
    growth_rate,
)
from autoscaler.serve_policy import InventivPolicy

CAP = PolicyConfig(min_replicas=1, max_replicas=10, target_ongoing_requests=8,
                   upscale_delay_s=30, downscale_delay_s=60, downscale_to_zero_delay_s=None,
                   replica_start_s=120, max_ongoing_requests=32, smooth_s=30)


class Driver:
    """Serve-like loop: the decided count is the next tick's current; ``running`` lags it
    by ``start_ticks`` (replicas start for that many ticks)."""

    def __init__(self, config: PolicyConfig, replicas: int = 1, start_ticks: int = 0,
                 t0: float = 1000.0) -> None:
        self.config = config
        self.replicas = replicas
        self.running = replicas
        self.start_ticks = start_ticks
        self.now = t0
        self.state: dict[str, Any] = {}
        self.log: list[tuple[float, Decision]] = []
        self._pending: list[tuple[float, int]] = []

    def tick(self, total: float, dt: float = 1.0) -> Decision:
        ready = [n for t, n in self._pending if t <= self.now]
        if ready:
            self.running = max(ready)
        self._pending = [(t, n) for t, n in self._pending if t > self.now]
        decision, self.state = decide(
            LoadSample(self.now, self.replicas, total, running_replicas=self.running),
            self.config, self.state)
        json.dumps(self.state)
        self.log.append((self.now, decision))
        if decision.replicas > self.replicas:
            self._pending.append((self.now + self.start_ticks * dt, decision.replicas))
        else:
            self.running = min(self.running, decision.replicas)
            self._pending = [(t, min(n, decision.replicas)) for t, n in self._pending]
        self.replicas = decision.replicas
        self.now += dt
        return decision

    def run(self, loads: list[float], dt: float = 1.0) -> Decision:
        for load in loads:
            decision = self.tick(load, dt)
        return decision

    def reasons(self) -> set[str]:
        return {d.reason for _, d in self.log}


def test_growth_rate_needs_two_seconds_of_history() -> None:
    assert growth_rate([], 10.0, 5.0) == 0.0
    assert growth_rate([[9.5, 1.0]], 10.0, 5.0) == 0.0
    assert growth_rate([[6.0, 1.0]], 10.0, 5.0) == 1.0


def test_a_growing_load_bursts_before_it_saturates_the_replicas() -> None:
    d = Driver(CAP)
    d.run([4.0] * 20)
    loads = [4.0 + 2.0 * i for i in range(1, 9)]  # +2 requests/s: saturates 32 in 14 s
    d.run(loads)
    assert d.reasons() >= {BURST}
    t_burst = next(t for t, dec in d.log if dec.reason == BURST)
    burst_load = loads[int(t_burst - d.log[20][0])]
    assert burst_load < 32  # answered before the one replica is full
    assert d.replicas >= desired_replicas(burst_load, 8)


def test_a_draining_backlog_waits_like_a_marginal_overload() -> None:
    # What a replica finds after a cold start: a backlog that fits its slots and drains.
    d = Driver(CAP)
    d.run([28.0] * 8 + [20.0, 14.0, 9.0, 5.0] + [2.0] * 30)
    assert BURST not in d.reasons()
    assert UPSCALE_WAIT in d.reasons()
    assert d.replicas == 1


def test_a_sustained_flat_overload_still_scales_after_the_upscale_delay() -> None:
    # Younger than a start (120 s): one replica beyond the serving one; once the overload has
    # lasted a start, the target's count (20 / 8 -> 3).
    d = Driver(CAP)
    d.run([20.0] * 31)
    assert UPSCALE in d.reasons() and BURST not in d.reasons()
    assert d.replicas == 2
    d.run([20.0] * 100)
    assert d.replicas == 3


def test_a_young_overload_orders_one_replica_at_a_time_when_starts_are_short_it_does_not() -> None:
    # A queue of 100 on one replica (start 180 s): replicas ordered now serve after a burst
    # of a few minutes, so one is ordered beyond the serving one, not the target's 13.
    slow = replace(CAP, replica_start_s=180)
    d = Driver(slow, start_ticks=1000)
    d.run([0.0, 100.0, 100.0])
    assert d.replicas == 2
    d.run([100.0] * 240)  # lasted a start (+ upscale_delay_s): the target's count, bounded
    assert d.replicas == 10
    # A start shorter than YOUNG_MIN_START_S: the burst is answered in full at once.
    fast = replace(CAP, replica_start_s=60)
    d = Driver(fast, start_ticks=1000)
    d.run([0.0, 100.0, 100.0])
    assert d.replicas == 10


def test_poisson_wobble_around_the_target_buys_no_replica() -> None:
    d = Driver(CAP)
    wobble = [5.0, 9.0, 6.0, 11.0, 4.0, 10.0, 7.0, 3.0] * 20
    d.run(wobble)
    assert d.replicas == 1
    assert BURST not in d.reasons()


def test_the_hold_follows_the_mean_load_not_each_wobble() -> None:
    loads = ([5.0] * 59 + [9.0]) * 6  # a 10 s mean that touches 2 replicas once a minute
    smooth = Driver(CAP, replicas=2)
    smooth.run(loads)
    raw = Driver(replace(CAP, smooth_s=0.0), replicas=2)
    raw.run(loads)
    assert smooth.replicas == 1
    assert raw.replicas == 2


def test_starts_whose_need_passed_are_cancelled_before_the_hold() -> None:
    d = Driver(CAP, start_ticks=100)
    d.run([4.0] * 20)
    d.run([4.0 + 4.0 * i for i in range(1, 10)])  # a short burst: +4/s up to 40
    assert d.replicas > 1 and d.running == 1
    d.run([30.0] * 5)  # still above what the running replica should carry: hold
    assert d.replicas > 1
    assert d.log[-1][1].reason in (HOLD, "steady", UPSCALE_WAIT)
    d.run([3.0] * 40)  # the burst is over before the new replicas serve
    assert CANCEL_START in d.reasons()
    assert d.replicas == 1


def test_serving_replicas_are_still_held_for_the_hold() -> None:
    d = Driver(CAP, start_ticks=0)
    d.run([4.0] * 20)
    d.run([4.0 + 4.0 * i for i in range(1, 10)])
    peak = d.replicas
    assert peak > 1
    d.run([3.0] * 60)  # within the hold (120 s): the serving replicas stay
    assert d.replicas == peak
    assert CANCEL_START not in d.reasons()
    d.run([3.0] * 100)  # hold + the smoothing's lag later: released
    assert d.replicas == 1


def test_inventiv_policy_passes_the_running_replicas_and_the_capacity() -> None:
    policy = InventivPolicy(upscale_delay_s=30, downscale_delay_s=60,
                            replica_start_s=120, max_ongoing_requests=32)

    class Auto:
        upscale_delay_s = 0.0
        downscale_delay_s = 0.0
        downscale_to_zero_delay_s = 0.0

        @staticmethod
        def get_target_ongoing_requests() -> float:
            return 8.0

    class Ctx:
        config = Auto()
        capacity_adjusted_min_replicas = 1
        capacity_adjusted_max_replicas = 10
        policy_state: dict[str, Any] = {}
        current_time = 1000.0
        deployment_name = "d"
        target_num_replicas = 4
        current_num_replicas = 1
        total_num_requests = 2.0

    cfg = policy.config_for(Ctx())
    assert cfg.max_ongoing_requests == 32 and cfg.smooth_s == 30.0
    replicas, state = policy(Ctx())
    assert (replicas, state["reason"]) == (1, CANCEL_START)


@settings(max_examples=200, deadline=None)
@given(
    min_r=st.integers(0, 3), span=st.integers(0, 8), cap=st.none() | st.integers(0, 12),
    start=st.integers(0, 12), start_ticks=st.integers(0, 20),
    loads=st.lists(st.tuples(st.floats(0, 400), st.floats(0.1, 20)), min_size=1, max_size=60),
)
def test_capacity_rules_stay_within_bounds_and_the_cap(
        min_r: int, span: int, cap: int | None, start: int, start_ticks: int,
        loads: list[tuple[float, float]]) -> None:
    config = replace(CAP, min_replicas=min_r, max_replicas=max(1, min_r + span),
                     scale_up_cap=cap, replica_start_s=30, upscale_delay_s=5,
                     downscale_delay_s=20)
    d = Driver(config, replicas=start, start_ticks=start_ticks)
    for load, dt in loads:
        before = d.replicas
        decision = d.tick(load, dt)
        assert decision.replicas <= config.max_replicas
        if cap is not None and decision.replicas > before:
            assert decision.replicas <= cap
        if decision.reason == CANCEL_START:  # never below what serves
            assert decision.replicas >= 1


RESERVE = replace(CAP, reserve_s=600.0, reserve_replicas=2)


def _burst_then_quiet(config: PolicyConfig) -> Driver:
    """Requests queue beyond one replica's hard limit (32) and grow for 20 s, then 3
    requests remain; the new replicas start in 30 ticks."""
    d = Driver(config, start_ticks=30)
    d.run([4.0] * 40 + [40.0 + 5.0 * i for i in range(20)] + [3.0] * 200)
    return d


def test_after_a_burst_the_reserve_keeps_two_replicas_then_releases_one() -> None:
    d = _burst_then_quiet(RESERVE)
    assert d.replicas == 2  # 200 s of 3 requests: one replica would do, the reserve holds 2
    d.run([3.0] * 420)  # past reserve_s since the last queued second
    assert d.replicas == 1
    # Without the reserve the same load is down to one replica long before.
    plain = _burst_then_quiet(CAP)
    assert plain.replicas == 1


def test_the_reserve_is_added_back_when_the_count_fell_below_it() -> None:
    d = Driver(RESERVE, start_ticks=100)
    # A queue that grows beyond 1 x 32 marks a burst, then Serve (e.g. a restarted
    # controller with bounds) runs one replica: the policy adds the reserve back.
    d.run([4.0] * 20 + [40.0 + 4.0 * i for i in range(6)])
    d.replicas = d.running = 1
    decision = d.tick(3.0)
    assert decision.replicas == 2 and decision.reason == "reserve"


def test_no_reserve_when_a_start_is_short_or_after_a_cold_start_backlog() -> None:
    short = _burst_then_quiet(replace(RESERVE, replica_start_s=10.0))
    assert short.replicas == 1
    # The backlog a cold start leaves shrinks once the replica serves: not a burst.
    d = Driver(RESERVE, replicas=1, start_ticks=0)
    d.run([60.0 - 2.0 * i for i in range(25)] + [3.0] * 200)
    assert d.replicas == 1


def test_a_known_warm_restart_shortens_the_hold() -> None:
    # hold = min(max(downscale_delay_s 60, start 120), max(restart 40, smooth 30)) = 40 s.
    warm = replace(CAP, replica_restart_s=40.0)
    assert warm.hold_s == 40.0 and CAP.hold_s == 120.0
    assert replace(CAP, replica_restart_s=5.0).hold_s == 30.0  # never below the smoothing
    d = Driver(warm, replicas=3)
    d.run([30.0] * 60 + [2.0] * 75)
    assert d.replicas == 1
    slow = Driver(CAP, replicas=3)
    slow.run([30.0] * 60 + [2.0] * 75)
    assert slow.replicas > 1
