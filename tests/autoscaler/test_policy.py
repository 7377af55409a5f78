"""The pure replica policy on synthetic load sequences: burst, decay, hold for the start time,
scale to zero, budget cap, bounds; and a property check over random sequences."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.policy import Decision, LoadSample, PolicyConfig, decide, desired_replicas

BASE = PolicyConfig(min_replicas=1, max_replicas=10, target_ongoing_requests=8,
                    upscale_delay_s=30, downscale_delay_s=60, downscale_to_zero_delay_s=None,
                    replica_start_s=120)


class Driver:
    """Runs the policy like Serve does: the decided count becomes the next tick's current."""

    def __init__(self, config: PolicyConfig, replicas: int = 1, t0: float = 1000.0) -> None:
        self.config = config
        self.replicas = replicas
        self.now = t0
        self.state: dict[str, Any] = {}
        self.log: list[tuple[float, Decision]] = []

    def tick(self, total: float, dt: float = 1.0) -> Decision:
        decision, self.state = decide(LoadSample(self.now, self.replicas, total), self.config,
                                      self.state)
        json.dumps(self.state)  # the state must survive Serve's/JSON round trips
        self.log.append((self.now, decision))
        self.replicas = decision.replicas
        self.now += dt
        return decision

    def run(self, loads: Iterable[float], dt: float = 1.0) -> Decision:
        decision = None
        for load in loads:
            decision = self.tick(load, dt)
        assert decision is not None
        return decision

    def first(self, reason: str) -> float:
        return next(t for t, d in self.log if d.reason == reason)


def test_desired_is_ceil_of_load_over_target() -> None:
    assert desired_replicas(0, 8) == 0
    assert desired_replicas(0.01, 8) == 1
    assert desired_replicas(16, 8) == 2
    assert desired_replicas(16.000000001, 8) == 2
    assert desired_replicas(17, 8) == 3


def test_burst_scales_up_within_one_tick_without_the_upscale_delay() -> None:
    d = Driver(BASE)
    d.run([4] * 10)
    decision = d.tick(40)  # 5 replicas' worth of load on 1 replica
    assert decision == Decision(5, "burst")


def test_marginal_overload_waits_for_the_upscale_delay() -> None:
    d = Driver(BASE)
    d.run([4] * 5)
    t_start = d.now
    assert d.tick(12).reason == "upscale_wait"  # 1.5 replicas' load: half a replica extra
    d.run([12] * 28)
    assert d.replicas == 1
    decision = d.run([12] * 3)
    assert decision.replicas == 2
    assert d.first("upscale") - t_start == 30
    # An interruption restarts the wait.
    d2 = Driver(BASE)
    d2.run([12] * 20 + [4] + [12] * 20)
    assert d2.replicas == 1


def test_decay_holds_for_the_start_time_then_steps_down() -> None:
    d = Driver(BASE)
    d.tick(40)
    assert d.replicas == 5
    t_drop = d.now
    d.run([20] * 300)  # 3 replicas' worth: 5 -> 3 only after max(60, 120) s
    downs = [(t, dec.replicas) for t, dec in d.log if dec.reason == "downscale"]
    assert downs[0] == (t_drop + 120, 3)
    assert [r for _, r in downs] == [3]
    d.run([4] * 200)
    assert d.replicas == 1


def test_hold_uses_the_longer_of_delay_and_start_time() -> None:
    fast_start = replace(BASE, replica_start_s=10)
    for config, expected in ((fast_start, 60.0), (BASE, 120.0)):
        d = Driver(config)
        d.tick(40)
        t_drop = d.now
        d.run([4] * 200)
        assert d.first("downscale") - t_drop == expected


def test_short_dip_does_not_release_capacity() -> None:
    d = Driver(BASE)
    d.tick(40)
    # Load dips for 100 s (< the 120 s start time), comes back: nothing released, no restart.
    d.run([4] * 100 + [40] * 10)
    assert all(dec.replicas == 5 for _, dec in d.log)


def test_decaying_load_steps_down_each_level_after_its_own_hold() -> None:
    d = Driver(replace(BASE, replica_start_s=0, downscale_delay_s=10))
    d.tick(80)
    assert d.replicas == 10
    # 10 -> 8 -> 6 -> 4 replicas' worth of load, 20 s each: every level holds 10 s then goes.
    d.run([64] * 20 + [48] * 20 + [32] * 20)
    counts = [dec.replicas for _, dec in d.log if dec.reason == "downscale"]
    assert counts == [8, 6, 4]


def test_scale_to_zero_after_its_own_delay_and_back_at_once() -> None:
    config = replace(BASE, min_replicas=0, downscale_to_zero_delay_s=30)
    d = Driver(config)
    d.run([4] * 200)
    assert d.replicas == 1
    t_idle = d.now
    d.run([0] * 29)
    assert d.replicas == 1
    d.run([0] * 2)
    assert d.replicas == 0 and d.first("scale_to_zero") - t_idle == 30
    assert d.tick(0.5) == Decision(1, "scale_from_zero")


def test_scale_to_zero_without_its_own_delay_uses_the_hold() -> None:
    d = Driver(replace(BASE, min_replicas=0))
    d.run([4] * 10)
    t_idle = d.now
    d.run([0] * 200)
    assert d.first("scale_to_zero") - t_idle == 120


def test_several_replicas_go_to_zero_directly_when_idle_long_enough() -> None:
    d = Driver(replace(BASE, min_replicas=0, downscale_to_zero_delay_s=30, replica_start_s=0,
                       downscale_delay_s=300))
    d.tick(40)
    d.run([0] * 40)
    assert d.replicas == 0


def test_min_replicas_keeps_the_floor() -> None:
    d = Driver(replace(BASE, min_replicas=2), replicas=2)
    d.run([0] * 500)
    assert d.replicas == 2


def test_max_replicas_clamps_a_burst() -> None:
    d = Driver(BASE)
    assert d.tick(10_000) == Decision(10, "burst")


def test_config_change_below_current_is_a_bounds_decision() -> None:
    d = Driver(replace(BASE, max_replicas=3), replicas=6)
    assert d.tick(48) == Decision(3, "bounds")


def test_budget_cap_blocks_scale_up_but_keeps_existing_capacity() -> None:
    capped = replace(BASE, scale_up_cap=2)
    d = Driver(capped)
    assert d.tick(40) == Decision(2, "budget_cap")
    assert d.tick(40) == Decision(2, "budget_cap")
    # Already above the cap: keep serving with what runs, add nothing.
    d = Driver(replace(BASE, scale_up_cap=0), replicas=4)
    assert d.tick(80) == Decision(4, "budget_cap")
    assert d.tick(32) == Decision(4, "steady")
    # A cap of 0 at zero replicas keeps it at zero (the ingress answers 503 + Retry-After).
    d = Driver(replace(BASE, min_replicas=0, scale_up_cap=0), replicas=0)
    assert d.tick(3) == Decision(0, "budget_cap")
    # The cap never forces a downscale; the normal hold still applies.
    d = Driver(replace(BASE, scale_up_cap=1), replicas=5)
    d.run([4] * 119)
    assert d.replicas == 5


def test_fresh_state_does_not_scale_down_before_observing_a_full_hold() -> None:
    d = Driver(BASE, replicas=4)
    d.run([0] * 119)
    assert d.replicas == 4
    d.run([0] * 2)
    assert d.replicas == 1


@settings(max_examples=300, deadline=None)
@given(
    min_r=st.integers(0, 5), span=st.integers(0, 10), cap=st.none() | st.integers(0, 20),
    start=st.integers(0, 20), zero_delay=st.none() | st.floats(0, 100),
    loads=st.lists(st.tuples(st.floats(0, 500), st.floats(0.05, 30)), min_size=1, max_size=60),
)
def test_decision_is_always_within_bounds_and_never_above_the_cap(
        min_r: int, span: int, cap: int | None, start: int, zero_delay: float | None,
        loads: list[tuple[float, float]]) -> None:
    config = PolicyConfig(min_replicas=min_r, max_replicas=max(1, min_r + span),
                          target_ongoing_requests=4, upscale_delay_s=5, downscale_delay_s=20,
                          downscale_to_zero_delay_s=zero_delay, replica_start_s=30,
                          scale_up_cap=cap)
    d = Driver(config, replicas=start)
    for load, dt in loads:
        before = d.replicas
        decision = d.tick(load, dt)
        assert decision.replicas <= max(config.max_replicas, 0)
        if cap is not None:
            assert decision.replicas <= max(before, cap)
            if decision.replicas > before:
                assert decision.replicas <= cap
        floor = config.min_replicas if cap is None else min(config.min_replicas,
                                                            max(before, cap))
        assert decision.replicas >= floor
        if decision.replicas < before:  # never below the load it sees
            assert decision.replicas >= min(desired_replicas(load, 4), config.max_replicas) \
                or decision.reason == "bounds"
