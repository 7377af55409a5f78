"""Our replica policy plugged into Ray Serve's custom autoscaling hook (Ray 2.60).

A deployment's ``autoscaling_config`` names it::

    "policy": {"policy_function": "autoscaler.serve_policy:InventivPolicy",
               "policy_kwargs": {...}}

Serve (the controller) instantiates the class once per deployment config with
``policy_kwargs`` and calls ``instance(ctx)`` every control-loop tick (0.1 s), expecting
``(num_replicas, policy_state)``. :func:`serve_autoscaling_config` builds the whole dict from
the deployment YAML's ``autoscaling`` section.

**Why Serve's own delays are 0 and ours travel in policy_kwargs.** Serve wraps every custom
policy (``_apply_autoscaling_config``): it applies ``upscale_delay_s`` / ``downscale_delay_s`` /
``downscale_to_zero_delay_s`` of the ``AutoscalingConfig`` *on top of* the policy's answer. Left
at the YAML values they would delay a burst by ``upscale_delay_s`` and every downscale twice. So
the Serve config carries zeros and the policy applies the YAML's delays itself (from
``policy_kwargs``). Serve's wrapper still applies its cold-start fast path (0 running replicas
and any request: scale to >= 1 without asking the policy), the scaling factors (left at 1: no
effect) and the ``[min, max]`` bounds (adjusted by target capacity).

**The policy_kwargs contract** (all JSON, all optional; the control API sets the last two
at deploy time through :func:`serve_apps.builder.app_builder`'s ``autoscaling`` argument):

- ``upscale_delay_s``, ``downscale_delay_s``, ``downscale_to_zero_delay_s`` (float, the last may
  be null): the YAML's delays. Absent: ``ctx.config``'s (i.e. Serve's) values.
- ``replica_start_s`` (float > 0): expected start of a new replica (node boot + model load),
  learned per instance type and model from the lifecycle history. Absent/null: 0, i.e. the
  hold before a downscale is just ``downscale_delay_s``.
- ``replica_restart_s`` (float >= 0, only present when known): a replica's start on a node
  the cluster still keeps up (its idle timeout), i.e. the model load alone; it shortens the
  hold before a downscale (see :attr:`autoscaler.policy.PolicyConfig.hold_s`). Absent: the
  full hold. Nothing sets it in Serve yet (the simulator does).
- ``scale_up_cap`` (int >= 0): the budget guard's cap. The policy never decides more than
  ``max(current, scale_up_cap)`` replicas (existing capacity keeps serving; reason
  ``budget_cap``). Absent/null: no cap. Serve's cold-start fast path bypasses the policy, so
  a deployment at zero replicas is started by Serve even when capped: the budget guard must
  also refuse at the ingress (or set ``min_replicas``/``max_replicas``) to stop that.

Changing ``policy_kwargs`` of a running app is NOT a lightweight update in Ray 2.60: Serve
treats it as new code and restarts every replica of the app (measured in
``tests/control_api/test_serve_client.py``). So a budget cap that comes and goes at run time
is applied as a ``max_replicas`` override (a lightweight update; the policy reads Serve's
capacity-adjusted bounds, so it obeys it), and ``scale_up_cap`` here is for a cap known at
deploy time and for the simulator. Any config change also resets the policy state: downscales
then wait one full hold again, the safe direction.

State: the pure policy's state lives under ``policy_state["inventiv"]`` (Serve keeps its own
``__decision_*`` keys in the same dict); the last reason under ``policy_state["reason"]``.
The controller logs every change of count with its reason (``ray.serve`` logger, controller
log).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal, Protocol

from autoscaler.policy import LoadSample, PolicyConfig, decide

POLICY_IMPORT_PATH = "autoscaler.serve_policy:InventivPolicy"
# How Serve feeds the policy, for the inventiv policy: replicas and handles push their
# request counts every METRICS_INTERVAL_S (Serve's default, 10 s, is too slow to react to a
# burst "within seconds"; the field is marked deprecated in 2.60 but still drives the push),
# and the controller averages the last LOOK_BACK_PERIOD_S (10 s, not Serve's 30 s: a burst
# reaches full height within 10 s). Not `max`: the policy also holds the peak of its window
# before a downscale, and max-then-peak kept a second replica through every daytime wobble
# (benchmarks/autoscaler_bench.py, diurnal trace: +13 % cost vs Ray's default with `max`,
# +3 % with `mean`, same waits). The hold before a downscale is the policy's business.
METRICS_INTERVAL_S = 2.0
LOOK_BACK_PERIOD_S = 10.0
AGGREGATION_FUNCTION = "mean"
STATE_KEY = "inventiv"
# The policy's own mean of that signal for everything but bursts (see autoscaler.policy).
SMOOTH_S = 30.0
# Burst memory (see autoscaler.policy): after a burst, keep at least RESERVE_REPLICAS for
# RESERVE_STARTS replica start times, so the next burst finds a spare replica rather than a
# node boot + model load; the longer a start, the longer a spare is worth its price (36: 1.8 h
# for a 3 min cloud GPU start, 53 min for the local cloud's 88 s). Bench (chat day with
# bursts): 15 or 25 starts lost the p95 win, 2700 s flat missed it on the GPU deployment.
RESERVE_STARTS = 36.0
RESERVE_REPLICAS = 2

logger = logging.getLogger("ray.serve")


class AutoscalingFields(Protocol):
    """What :func:`serve_autoscaling_config` reads: ``core.spec.AutoscalingSpec``
    (a protocol, because ``autoscaler`` does not import ``serve_apps``)."""

    min_replicas: int
    max_replicas: int
    initial_replicas: int | None
    target_ongoing_requests: float
    max_ongoing_requests: int
    upscale_delay_s: float
    downscale_delay_s: float
    downscale_to_zero_delay_s: float | None
    replica_start_s: float | None
    policy: Literal["inventiv", "ray"]


class InventivPolicy:
    """Serve's class-callable policy: maps the ``AutoscalingContext`` to :func:`decide`."""

    def __init__(self, *, upscale_delay_s: float | None = None,
                 downscale_delay_s: float | None = None,
                 downscale_to_zero_delay_s: float | None = None,
                 replica_start_s: float | None = None,
                 scale_up_cap: int | None = None,
                 max_ongoing_requests: int | None = None,
                 smooth_s: float = SMOOTH_S,
                 replica_restart_s: float | None = None,
                 reserve_s: float | None = None,
                 reserve_replicas: int | None = None) -> None:
        self.upscale_delay_s = upscale_delay_s
        self.downscale_delay_s = downscale_delay_s
        self.downscale_to_zero_delay_s = downscale_to_zero_delay_s
        self.replica_start_s = float(replica_start_s or 0.0)
        self.scale_up_cap = None if scale_up_cap is None else max(0, int(scale_up_cap))
        self.max_ongoing_requests = (None if max_ongoing_requests is None
                                     else max(1, int(max_ongoing_requests)))
        self.smooth_s = max(0.0, float(smooth_s))
        self.replica_restart_s = (None if replica_restart_s is None
                                  else max(0.0, float(replica_restart_s)))
        self.reserve_s = max(0.0, float(RESERVE_STARTS * self.replica_start_s
                                        if reserve_s is None else reserve_s))
        self.reserve_replicas = max(0, int(RESERVE_REPLICAS if reserve_replicas is None
                                           else reserve_replicas))

    def config_for(self, ctx: Any) -> PolicyConfig:
        """The pure policy's config from ``ctx`` (bounds, target) and our kwargs (delays)."""
        auto = ctx.config
        target = auto.get_target_ongoing_requests()

        def delay(mine: float | None, serves: float | None) -> float:
            return float(mine if mine is not None else (serves or 0.0))

        to_zero = self.downscale_to_zero_delay_s
        if to_zero is None and self.downscale_delay_s is None:
            to_zero = auto.downscale_to_zero_delay_s
        return PolicyConfig(
            # Serve's bounds already account for target capacity (and initial_replicas while
            # a deployment scales up to its target capacity).
            min_replicas=int(ctx.capacity_adjusted_min_replicas),
            max_replicas=int(ctx.capacity_adjusted_max_replicas),
            target_ongoing_requests=float(target),
            upscale_delay_s=delay(self.upscale_delay_s, auto.upscale_delay_s),
            downscale_delay_s=delay(self.downscale_delay_s, auto.downscale_delay_s),
            downscale_to_zero_delay_s=None if to_zero is None else float(to_zero),
            replica_start_s=self.replica_start_s,
            scale_up_cap=self.scale_up_cap,
            max_ongoing_requests=self.max_ongoing_requests,
            smooth_s=self.smooth_s,
            replica_restart_s=self.replica_restart_s,
            reserve_s=self.reserve_s,
            reserve_replicas=self.reserve_replicas,
        )

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        """One tick: ``(num_replicas, policy_state)`` for Serve."""
        policy_state = dict(ctx.policy_state or {})
        now = ctx.current_time if ctx.current_time is not None else time.time()
        # `current` is Serve's target (running + starting): judging the load against running
        # replicas only would order the replicas that are already starting a second time.
        sample = LoadSample(now=float(now), current_replicas=int(ctx.target_num_replicas),
                            total_requests=float(ctx.total_num_requests),
                            running_replicas=int(ctx.current_num_replicas))
        decision, state = decide(sample, self.config_for(ctx), policy_state.get(STATE_KEY, {}))
        if decision.replicas != sample.current_replicas or (
                decision.reason != policy_state.get("reason")
                and decision.reason == "budget_cap"):
            logger.info("inventiv policy %s: %d -> %d replicas (%s, %.1f requests)",
                        getattr(ctx, "deployment_name", "?"), sample.current_replicas,
                        decision.replicas, decision.reason, sample.total_requests)
        policy_state[STATE_KEY] = state
        policy_state["reason"] = decision.reason
        return decision.replicas, policy_state


def serve_autoscaling_config(auto: AutoscalingFields, *, replica_start_s: float | None = None,
                             scale_up_cap: int | None = None,
                             replica_restart_s: float | None = None) -> dict[str, Any]:
    """The Serve ``autoscaling_config`` dict of a deployment's ``autoscaling`` section.

    ``policy: ray``: Serve's default policy with the YAML's bounds, target and delays
    (``replica_start_s`` and ``scale_up_cap`` do not apply). ``policy: inventiv``: our policy,
    Serve's delays at 0 and ours in ``policy_kwargs`` (see the module docstring).
    ``replica_start_s`` is the learned start time; the YAML's value, when set, wins.
    """
    out: dict[str, Any] = {
        "min_replicas": auto.min_replicas,
        "max_replicas": auto.max_replicas,
        "target_ongoing_requests": auto.target_ongoing_requests,
    }
    if auto.initial_replicas is not None:
        out["initial_replicas"] = auto.initial_replicas
    if auto.policy == "ray":
        out.update(upscale_delay_s=auto.upscale_delay_s, downscale_delay_s=auto.downscale_delay_s)
        if auto.downscale_to_zero_delay_s is not None:
            out["downscale_to_zero_delay_s"] = auto.downscale_to_zero_delay_s
        return out
    start = auto.replica_start_s if auto.replica_start_s is not None else replica_start_s
    kwargs: dict[str, Any] = {
        "upscale_delay_s": auto.upscale_delay_s,
        "downscale_delay_s": auto.downscale_delay_s,
        "downscale_to_zero_delay_s": auto.downscale_to_zero_delay_s,
        "replica_start_s": start,
        "scale_up_cap": scale_up_cap,
        "max_ongoing_requests": auto.max_ongoing_requests,
    }
    if replica_restart_s is not None:  # only when known: a new kwarg restarts the app
        kwargs["replica_restart_s"] = replica_restart_s
    out.update(
        upscale_delay_s=0.0, downscale_delay_s=0.0, downscale_to_zero_delay_s=0.0,
        metrics_interval_s=METRICS_INTERVAL_S, look_back_period_s=LOOK_BACK_PERIOD_S,
        aggregation_function=AGGREGATION_FUNCTION,
        policy={"policy_function": POLICY_IMPORT_PATH, "policy_kwargs": kwargs},
    )
    return out
