"""The replica autoscaling policy: a pure function of one load sample, the config and a state.

No Ray import: Serve calls it through :mod:`autoscaler.serve_policy`, the simulator calls it
directly with simulated time. One tick is ``decide(sample, config, state) -> (decision,
state)``; ``state`` is a small JSON-able dict the caller passes back on the next tick (as Serve
does with ``policy_state``); start with ``{}``.

Semantics (``target = target_ongoing_requests``, ``current = sample.current_replicas``):

- **Desired** ``= ceil(total_requests / target)`` (0 when there is no request at all), where
  ``total_requests`` counts ongoing plus queued requests over every replica and handle.
- **Scale up at once on a burst.** When the load exceeds what the current replicas should
  carry by at least one whole replica's target (``total - current*target >= target``: the
  excess is queued work a new replica would take), the decision is ``desired`` within the same
  tick (reason ``burst``). A request arriving at zero replicas scales to at least 1 at once
  (``scale_from_zero``).
- **Marginal overload waits.** When ``desired > current`` but the excess is less than one
  replica's target, the overload must last ``upscale_delay_s`` first (``upscale_wait``, then
  ``upscale``): a fraction of a replica's load is not worth a new node yet.
- **Hold capacity for the start time.** A replica is released only when the load has stayed
  at or below a lower replica count for ``hold = max(downscale_delay_s, replica_start_s)``:
  releasing a replica that would be needed again within its own start time (node boot + model
  load) costs more than holding it. The new count is the peak desired count over the last
  ``hold`` seconds (a sliding-window maximum), so a decaying load steps down as soon as each
  lower level has held long enough (``downscale``; ``hold`` while waiting).
- **Scale to zero** (only when ``min_replicas == 0``) after ``downscale_to_zero_delay_s`` of
  zero requests; when that is None, after the same ``hold`` as any other downscale
  (``scale_to_zero``). Until then the last replica stays.
- **Bounds**: the result is clamped to ``[min_replicas, max_replicas]`` (``bounds`` when the
  clamp alone changed the count).
- **Budget cap**: with ``scale_up_cap`` set (the budget guard), the result never exceeds
  ``max(current, scale_up_cap)``: existing capacity keeps serving, nothing is added. It wins
  over ``min_replicas`` (a budget stop is a stop); the reason is ``budget_cap`` when it bit.
- Otherwise ``steady``.

Before the policy has observed ``hold`` seconds of load (a fresh state), it never scales down:
it cannot know the load stayed low.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Wall-clock subtraction of large timestamps can land a hair below the configured delay.
_EPS_S = 1e-6
# Reasons (short codes; logged, shown in metrics and in the simulator's output).
BURST = "burst"
UPSCALE = "upscale"
UPSCALE_WAIT = "upscale_wait"
SCALE_FROM_ZERO = "scale_from_zero"
DOWNSCALE = "downscale"
HOLD = "hold"
SCALE_TO_ZERO = "scale_to_zero"
BOUNDS = "bounds"
BUDGET_CAP = "budget_cap"
STEADY = "steady"


@dataclass(frozen=True)
class PolicyConfig:
    """The knobs of one deployment's policy (from the deployment YAML and the control API)."""

    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float
    upscale_delay_s: float
    downscale_delay_s: float
    downscale_to_zero_delay_s: float | None  # None: the same hold as any other downscale
    replica_start_s: float  # measured/expected start of a new replica (node boot + model load)
    scale_up_cap: int | None = None  # budget guard: never above max(current, cap); None: no cap

    @property
    def hold_s(self) -> float:
        """How long the load must stay low before a replica is released."""
        return max(self.downscale_delay_s, self.replica_start_s)

    @property
    def zero_hold_s(self) -> float:
        """How long there must be no request at all before the last replica is released."""
        if self.downscale_to_zero_delay_s is not None:
            return self.downscale_to_zero_delay_s
        return self.hold_s


@dataclass(frozen=True)
class LoadSample:
    """What the policy sees on one tick."""

    now: float  # seconds (monotonic or simulated)
    current_replicas: int  # running + starting, as Serve counts them
    total_requests: float  # ongoing + queued, across replicas and handles


@dataclass(frozen=True)
class Decision:
    """The replica count to run and why (a short code, see the module docstring)."""

    replicas: int
    reason: str


def desired_replicas(total_requests: float, target_ongoing_requests: float) -> int:
    """``ceil(total / target)``; 0 only when there is no request at all."""
    if total_requests <= 0:
        return 0
    # The tolerance keeps 16.000000001 / 8 at 2 (averaged metrics are floats).
    return max(1, math.ceil(total_requests / target_ongoing_requests - 1e-9))


def decide(sample: LoadSample, config: PolicyConfig,
           state: dict[str, Any]) -> tuple[Decision, dict[str, Any]]:
    """One autoscaling tick: the replica count to run now and the state for the next tick.

    ``state`` is not mutated; the returned one is a new JSON-able dict.
    """
    now = sample.now
    current = max(0, sample.current_replicas)
    total = max(0.0, sample.total_requests)
    target = config.target_ongoing_requests
    hold = config.hold_s
    desired = desired_replicas(total, target)

    since = float(state.get("since", now))
    # Sliding-window maximum of the desired count over the last `hold` seconds, as a
    # monotonic deque of [t, desired] (values strictly decreasing; at most max+1 entries
    # because the stored value is clamped to max_replicas).
    peaks: list[list[float]] = [list(p) for p in state.get("peaks", [])]
    stored = min(desired, config.max_replicas)
    while peaks and peaks[-1][1] <= stored:
        peaks.pop()
    peaks.append([now, stored])
    while peaks and peaks[0][0] < now - hold - _EPS_S:
        peaks.pop(0)
    window_peak = int(peaks[0][1]) if peaks else stored
    zero_since = state.get("zero_since")
    zero_since = (zero_since if zero_since is not None else now) if total <= 0 else None
    over_since = state.get("over_since")

    if desired > current:
        if current == 0:
            proposed, reason, over_since = desired, SCALE_FROM_ZERO, None
        elif total - current * target >= target - 1e-9:
            proposed, reason, over_since = desired, BURST, None
        else:
            over_since = over_since if over_since is not None else now
            if now - over_since + _EPS_S >= config.upscale_delay_s:
                proposed, reason, over_since = desired, UPSCALE, None
            else:
                proposed, reason = current, UPSCALE_WAIT
    elif desired < current:
        over_since = None
        observed_long_enough = now - since + _EPS_S >= hold
        lower = window_peak if observed_long_enough else current
        zero_ok = (config.min_replicas == 0 and zero_since is not None
                   and now - zero_since + _EPS_S >= config.zero_hold_s
                   and now - since + _EPS_S >= config.zero_hold_s)
        if zero_ok:
            lower = 0
        elif lower == 0:
            lower = 1  # the last replica waits for the zero delay
        if lower < current:
            proposed = lower
            reason = SCALE_TO_ZERO if lower == 0 else DOWNSCALE
        else:
            proposed, reason = current, HOLD
    else:
        over_since = None
        proposed, reason = current, STEADY

    bounded = max(config.min_replicas, min(config.max_replicas, proposed))
    if bounded != proposed:
        if proposed == current:  # the clamp alone moves the count (e.g. bounds changed)
            reason = BOUNDS
        proposed = bounded
    if config.scale_up_cap is not None:
        ceiling = max(current, config.scale_up_cap)
        if proposed > ceiling:
            proposed, reason = ceiling, BUDGET_CAP

    new_state: dict[str, Any] = {"since": since, "peaks": peaks, "zero_since": zero_since,
                                 "over_since": over_since}
    return Decision(replicas=proposed, reason=reason), new_state
