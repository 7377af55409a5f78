"""Our policy in Ray Serve: the context mapping (unit, on Serve's real AutoscalingContext), the
autoscaling_config shapes, and a real Serve deployment that scales up on a burst of slow
requests, back down after it, and is held by the budget cap."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from autoscaler.serve_policy import (
    POLICY_IMPORT_PATH,
    RESERVE_STARTS,
    STATE_KEY,
    InventivPolicy,
    serve_autoscaling_config,
)
from core.spec import AutoscalingSpec
from tests.client.conftest import free_port


def _ctx(config: Any, *, target: int, running: int, total: float | Any,
         state: dict[str, Any] | None = None, now: float = 1000.0,
         lo: int | None = None, hi: int | None = None) -> Any:
    from ray.serve._private.common import DeploymentID
    from ray.serve.config import AutoscalingContext

    return AutoscalingContext(
        deployment_id=DeploymentID(name="d", app_name="a"), deployment_name="d",
        app_name="a", current_num_replicas=running, target_num_replicas=target,
        running_replicas=[], total_num_requests=total, total_queued_requests=0.0,
        aggregated_metrics={}, raw_metrics={},
        capacity_adjusted_min_replicas=config.min_replicas if lo is None else lo,
        capacity_adjusted_max_replicas=config.max_replicas if hi is None else hi,
        policy_state=state or {}, last_scale_up_time=None, last_scale_down_time=None,
        current_time=now, config=config)


def _serve_config(auto: AutoscalingSpec, **kw: Any) -> Any:
    from ray.serve.config import AutoscalingConfig

    return AutoscalingConfig(**serve_autoscaling_config(auto, **kw))


def test_inventiv_config_moves_the_delays_into_policy_kwargs() -> None:
    auto = AutoscalingSpec(min_replicas=0, max_replicas=4, initial_replicas=1,
                           target_ongoing_requests=2, max_ongoing_requests=4,
                           upscale_delay_s=7, downscale_delay_s=60,
                           downscale_to_zero_delay_s=30, replica_start_s=90)
    cfg = serve_autoscaling_config(auto, replica_start_s=10, scale_up_cap=3)
    assert cfg == {
        "min_replicas": 0, "max_replicas": 4, "initial_replicas": 1,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 0.0, "downscale_delay_s": 0.0, "downscale_to_zero_delay_s": 0.0,
        "metrics_interval_s": 2.0, "look_back_period_s": 10.0, "aggregation_function": "mean",
        "policy": {"policy_function": POLICY_IMPORT_PATH, "policy_kwargs": {
            "upscale_delay_s": 7, "downscale_delay_s": 60, "downscale_to_zero_delay_s": 30,
            "replica_start_s": 90,  # the YAML's value wins over the learned one
            "scale_up_cap": 3, "max_ongoing_requests": 4}},
    }
    learned = serve_autoscaling_config(AutoscalingSpec(), replica_start_s=10)
    assert learned["policy"]["policy_kwargs"]["replica_start_s"] == 10
    # Serve accepts it, and resolves the policy to our class.
    from ray.serve._private.autoscaling_state import _resolve_policy_callable

    with pytest.warns(DeprecationWarning):  # metrics_interval_s: deprecated, still used
        serve_cfg = _serve_config(auto, scale_up_cap=3)
    policy = _resolve_policy_callable(serve_cfg.policy)
    assert type(policy).__name__ == "InventivPolicy" and policy.scale_up_cap == 3


def test_ray_policy_is_serves_default_with_the_yaml_delays() -> None:
    auto = AutoscalingSpec(policy="ray", max_replicas=3, upscale_delay_s=5,
                           downscale_delay_s=50, downscale_to_zero_delay_s=20)
    cfg = serve_autoscaling_config(auto, replica_start_s=10, scale_up_cap=0)
    assert cfg == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 8,
                   "upscale_delay_s": 5, "downscale_delay_s": 50,
                   "downscale_to_zero_delay_s": 20}
    assert _serve_config(auto).policy.is_default_policy_function()


def test_policy_maps_the_context_and_keeps_serves_state_keys() -> None:
    import warnings

    auto = AutoscalingSpec(max_replicas=6, target_ongoing_requests=2, max_ongoing_requests=4,
                           upscale_delay_s=30, downscale_delay_s=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        config = _serve_config(auto, replica_start_s=100)
    policy = InventivPolicy(**config.policy.policy_kwargs)
    calls: list[int] = []

    def lazy_total() -> float:  # Serve passes the metric as a callable, evaluated lazily
        calls.append(1)
        return 9.0

    # Two replicas targeted, one still starting: the burst is judged against 2, not 1. A
    # burst is a load that grows (here by 8 in 2 s) toward the replicas' hard limit
    # (2 x max_ongoing_requests); a flat one waits for the upscale delay.
    _, state = policy(_ctx(config, target=2, running=1, total=1.0, now=998.0,
                           state={"__decision_counters": 0}))
    n, state = policy(_ctx(config, target=2, running=1, total=lazy_total, state=state))
    assert (n, state["reason"]) == (5, "burst") and calls == [1]
    assert state["__decision_counters"] == 0 and STATE_KEY in state
    # Serve's capacity-adjusted bounds are the policy's bounds.
    n, _ = policy(_ctx(config, target=2, running=2, total=40, state=state, now=1001, hi=3))
    assert n == 3
    # The hold is max(downscale_delay_s, replica_start_s) = 100 s, from the kwargs.
    now = 1001.0
    for _ in range(99):
        now += 1
        n, state = policy(_ctx(config, target=5, running=5, total=2, state=state, now=now))
        assert n == 5
    n, state = policy(_ctx(config, target=5, running=5, total=2, state=state, now=now + 2))
    assert n < 5 and state["reason"] == "downscale"
    # The hold follows the policy's 30 s mean of the load: the last level goes that much later.
    n, state = policy(_ctx(config, target=n, running=n, total=2, state=state, now=now + 32))
    # ... down to the burst reserve: 40 requests on 2 replicas of 4 queued, more than a
    # moment before, so 2 replicas stay for RESERVE_STARTS start times after that burst, then 1.
    assert (n, state["reason"]) == (2, "hold")
    n, state = policy(_ctx(config, target=n, running=n, total=2, state=state,
                           now=1001 + RESERVE_STARTS * 100 + 1))
    assert (n, state["reason"]) == (1, "downscale")
    capped = InventivPolicy(**{**config.policy.policy_kwargs, "scale_up_cap": 1})
    _, state = capped(_ctx(config, target=1, running=1, total=1, now=998.0))
    n, state = capped(_ctx(config, target=1, running=1, total=40, state=state))
    assert (n, state["reason"]) == (1, "budget_cap")


# ------------------------------------------------------------------ a real Serve deployment

@pytest.fixture(scope="module")
def serve_instance() -> Iterator[str]:
    """A small Ray + Serve of this module only (shut down at module end, before the serving
    tier's session-wide `ray.init`)."""
    import ray
    from ray import serve

    if ray.is_initialized():
        pytest.skip("another Ray driver is active in this process")
    temp_dir = tempfile.mkdtemp(prefix="ia-as-", dir="/tmp")
    env = pytest.MonkeyPatch()
    env.setenv("RAY_AUTH_MODE", "disabled")
    try:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir,
                 _metrics_export_port=free_port(), log_to_driver=False,
                 namespace="inventiv-autoscaler-tests")
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        yield temp_dir
    finally:
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            env.undo()
            shutil.rmtree(temp_dir, ignore_errors=True)


def _deploy(name: str, auto: AutoscalingSpec, **kw: Any) -> Any:
    import warnings

    from ray import serve

    config = serve_autoscaling_config(auto, **kw)
    # Fast feedback for a test: metrics every 0.2 s, a 1 s window.
    config.update(metrics_interval_s=0.2, look_back_period_s=1.0)

    @serve.deployment(name=name, max_ongoing_requests=auto.max_ongoing_requests,
                      ray_actor_options={"num_cpus": 0}, autoscaling_config=config)
    class Held:
        async def __call__(self, gate: Any) -> str:
            await gate.wait.remote()
            return "ok"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return serve.run(Held.bind(), name=name, route_prefix=f"/{name}")


class Load:
    """``n`` requests held open until :meth:`release` (a Ray actor gate): the load lasts as
    long as the test needs, however slowly replicas start on shared CPUs."""

    def __init__(self, handle: Any, n: int) -> None:
        import ray

        @ray.remote(num_cpus=0)
        class Gate:
            def __init__(self) -> None:
                self.event = asyncio.Event()

            async def wait(self) -> None:
                await self.event.wait()

            async def open(self) -> None:
                self.event.set()

        self.gate = Gate.remote()  # type: ignore[attr-defined]
        self.responses = [handle.remote(self.gate) for _ in range(n)]
        self.n = n

    def release(self) -> None:
        import ray

        ray.get(self.gate.open.remote(), timeout=60)
        assert [r.result(timeout_s=120) for r in self.responses] == ["ok"] * self.n


def _controller_log(temp_dir: str) -> str:
    """What the Serve controller logged (our policy logs every change with its reason)."""
    from pathlib import Path

    logs = Path(temp_dir, "session_latest", "logs", "serve").glob("controller_*.log")
    return "\n".join(p.read_text(errors="replace") for p in logs)


def _replicas(name: str) -> int:
    from ray import serve

    dep = serve.status().applications[name].deployments[name]
    return int(dep.replica_states.get("RUNNING", 0))


def _watch(name: str, until: Any, timeout: float) -> tuple[float, list[int]]:
    """Poll the running replica count until ``until(count)``; (elapsed, counts seen)."""
    start, seen = time.monotonic(), []
    while time.monotonic() - start < timeout:
        seen.append(_replicas(name))
        if until(seen[-1]):
            return time.monotonic() - start, seen
        time.sleep(0.1)
    raise AssertionError(f"{name}: condition not met in {timeout} s, saw {seen[-20:]}")


# upscale_delay_s is 30 s: a scale-up well before that is the policy's burst path.
AUTO = AutoscalingSpec(min_replicas=1, max_replicas=3, target_ongoing_requests=1,
                       max_ongoing_requests=2, upscale_delay_s=30, downscale_delay_s=1)


def test_serve_scales_up_on_a_burst_and_back_down_after_it(serve_instance: str) -> None:
    handle = _deploy("burst", AUTO, replica_start_s=2)
    assert _replicas("burst") == 1
    load = Load(handle, 6)  # 6 requests, 2 at a time per replica: 3 replicas' worth
    try:
        up_s, _ = _watch("burst", lambda n: n == 3, timeout=120)
    finally:
        load.release()
    down_s, _ = _watch("burst", lambda n: n == 1, timeout=60)
    log = _controller_log(serve_instance)
    # Our policy made both decisions (Serve's default would not log them, nor hold).
    assert "inventiv policy burst: 1 -> 3 replicas (burst" in log, log[-3000:]
    assert re.search(r"inventiv policy burst: [23] -> 1 replicas \(downscale", log), log[-3000:]
    print(f"\n[autoscaler] burst: 3 replicas running {up_s:.1f} s after it started; back to 1 "
          f"{down_s:.1f} s after it ended")  # noqa: T201


def test_budget_cap_keeps_the_running_replicas_only(serve_instance: str) -> None:
    from ray import serve

    handle = _deploy("capped", AUTO, replica_start_s=2, scale_up_cap=1)
    assert _replicas("capped") == 1
    load = Load(handle, 6)
    try:
        # Wait until the policy has seen the load (it logs the cap), then watch: no replica
        # is added while the load lasts.
        deadline = time.monotonic() + 60
        while "inventiv policy capped: 1 -> 1 replicas (budget_cap" not in \
                _controller_log(serve_instance):
            assert time.monotonic() < deadline, "the policy never saw the load"
            time.sleep(0.2)
        until = time.monotonic() + 4.0
        while time.monotonic() < until:
            status = serve.status().applications["capped"].deployments["capped"]
            assert _replicas("capped") == 1 and status.status.value != "UPSCALING"
            time.sleep(0.2)
    finally:
        load.release()
