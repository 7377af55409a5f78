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
- **Capacity-aware bursts** (when ``max_ongoing_requests``, the replica's hard limit, is known:
  Serve's deployments always pass it). Waiting only starts when the load exceeds
  ``current * max_ongoing_requests``; the target is the comfortable level. So a burst (decided
  at once) is a load that *grows* — by at least one replica's target within the last 10 s, the
  noise of Poisson arrivals around a level grows less — fast enough to reach the hard limit
  before a replica ordered now could serve (``replica_start_s`` ahead, at least 10 s). A
  saturating load that does not grow (the backlog a cold start leaves, which the new replica's
  slots drain within one service time) is a marginal overload: it must last
  ``upscale_delay_s``. Without ``max_ongoing_requests``: the rule above.
- **Young overloads order one replica at a time** (``replica_start_s`` >=
  :data:`YOUNG_MIN_START_S`, ``max_ongoing_requests`` known): until an overload has lasted
  one start time, the count is at most one beyond the serving replicas (``upscale_wait``
  while that one starts). Replicas ordered in a burst's first seconds serve after a burst of
  a few minutes is over; an overload that lasted a start gets the target's count.
- **Burst memory** (``reserve_replicas`` > 0, ``replica_start_s`` >=
  :data:`RESERVE_MIN_START_S`): after requests queued beyond every serving replica's hard
  limit while the load grew (a burst; not a cold start's shrinking backlog), at least
  ``reserve_replicas`` are kept for ``reserve_s`` (``reserve``: added back when the count is
  below; no downscale or cancel below it). A load of zero still scales to zero.
- **Marginal overload waits.** When ``desired > current`` but the excess is less than one
  replica's target, the overload must last ``upscale_delay_s`` first (``upscale_wait``, then
  ``upscale``): a fraction of a replica's load is not worth a new node yet.
- **Hold capacity for the start time.** A replica is released only when the load has stayed
  at or below a lower replica count for ``hold = max(downscale_delay_s, replica_start_s)``
  (with ``replica_restart_s`` known — the node of a released replica stays up for the
  cluster's idle timeout, so it comes back in the model load alone — ``min(that,
  max(replica_restart_s, smooth_s))``):
  releasing a replica that would be needed again within its own start time (node boot + model
  load) costs more than holding it. The new count is the peak desired count over the last
  ``hold`` seconds (a sliding-window maximum), so a decaying load steps down as soon as each
  lower level has held long enough (``downscale``; ``hold`` while waiting).
- **Smoothed hold** (``smooth_s`` > 0; Serve's policy uses 30 s): the counts held for a
  downscale are those of the load's mean over the last ``smooth_s`` (plus every count just
  added), not of each 10 s sample: a 10 s mean of Poisson traffic touches the next level now and
  then and would otherwise hold a replica all day. Nothing is released while the raw signal
  still wants the current count.
- **Cancel starts whose need passed** (``running_replicas`` known): when the load — raw and
  smoothed — is back within what the serving replicas should carry while some replicas are
  still starting, the starting ones are cancelled at once (``cancel_start``). The hold protects
  serving capacity against a quick return of the load; a replica that never served protects
  nothing, and its node stays up for the cluster's idle timeout anyway, so re-adding it soon
  costs only the model load.
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
# Growth of the load (for the saturation forecast): sampled once per second, over 10 s (the
# span of Serve's averaged metric: a shorter one only sees the averaging's own ramp).
GROWTH_WINDOW_S = 10.0
GROWTH_SAMPLE_S = 1.0
MIN_GROWTH_SPAN_S = 2.0
# Burst memory only pays when a start makes a burst wait this long (a start of a few seconds
# is cheaper to wait for than a spare replica is to hold).
RESERVE_MIN_START_S = 30.0
# An overload younger than this share of a start time orders one replica beyond the serving
# ones at a time (see decide): most bursts end before a replica ordered in their first
# seconds could serve.
YOUNG_OVERLOAD_SHARE = 1.0
# ... when a start takes minutes (a cloud GPU node: boot + load ~3 min, longer than a burst of
# a few minutes); the local cloud's ~1.5 min start is shorter than those bursts.
YOUNG_MIN_START_S = 120.0
# The forecast looks at least this far ahead even when the start time is unknown (0).
MIN_HORIZON_S = 10.0
# Reasons (short codes; logged, shown in metrics and in the simulator's output).
BURST = "burst"
UPSCALE = "upscale"
UPSCALE_WAIT = "upscale_wait"
SCALE_FROM_ZERO = "scale_from_zero"
DOWNSCALE = "downscale"
HOLD = "hold"
CANCEL_START = "cancel_start"
SCALE_TO_ZERO = "scale_to_zero"
RESERVE = "reserve"
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
    # Serve's max_ongoing_requests of one replica (its hard limit: beyond it requests queue).
    # None: unknown, every overload of a whole replica's target is a burst (the old rule).
    max_ongoing_requests: int | None = None
    # Mean the load over this long for the target, marginal overloads and downscales (0: the
    # raw signal); bursts always see the raw signal.
    smooth_s: float = 0.0
    # Start of a replica on a node the cluster still keeps up (its idle timeout), i.e. the
    # model load alone. None: unknown, a released replica costs a full start to get back.
    replica_restart_s: float | None = None
    # Burst memory: for this long after a burst, keep at least `reserve_replicas` (0: off).
    reserve_s: float = 0.0
    reserve_replicas: int = 0

    @property
    def hold_s(self) -> float:
        """How long the load must stay low before a replica is released: the start time a
        released replica costs to get back (a warm restart when its node stays up), at least
        the smoothing window, at most ``max(downscale_delay_s, replica_start_s)``."""
        full = max(self.downscale_delay_s, self.replica_start_s)
        if self.replica_restart_s is None:
            return full
        return min(full, max(self.replica_restart_s, self.smooth_s))

    @property
    def zero_hold_s(self) -> float:
        """How long there must be no request at all before the last replica is released."""
        if self.downscale_to_zero_delay_s is not None:
            return self.downscale_to_zero_delay_s
        # Not the warm-restart hold: the request that finds zero replicas waits a whole
        # start (and the policy would scale to zero between two requests of a quiet night).
        return max(self.downscale_delay_s, self.replica_start_s)


@dataclass(frozen=True)
class LoadSample:
    """What the policy sees on one tick."""

    now: float  # seconds (monotonic or simulated)
    current_replicas: int  # running + starting, as Serve counts them
    total_requests: float  # ongoing + queued, across replicas and handles
    running_replicas: int | None = None  # serving now (<= current); None: all of current


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


def _push_peak(peaks: list[list[float]], now: float, value: int) -> None:
    while peaks and peaks[-1][1] <= value:
        peaks.pop()
    peaks.append([now, value])


def _history(previous: list[list[float]], now: float, total: float,
             window_s: float) -> list[list[float]]:
    """The load over the last ``window_s``, one ``[t, total]`` per second at most (Serve
    ticks every 0.1 s; the state stays a few dozen entries)."""
    hist = [list(p) for p in previous if now - window_s - _EPS_S <= p[0] <= now]
    if not hist or now - hist[-1][0] + _EPS_S >= GROWTH_SAMPLE_S:
        hist.append([now, total])
    return hist


def smoothed_load(history: list[list[float]], now: float, total: float,
                  smooth_s: float) -> float:
    """The mean load over the last ``smooth_s`` (``total`` itself when 0)."""
    if smooth_s <= 0:
        return total
    values = [v for t, v in history if t >= now - smooth_s - _EPS_S]
    if not history or history[-1][0] != now:
        values.append(total)
    return sum(values) / len(values)


def _growth_start(history: list[list[float]], now: float) -> list[float] | None:
    recent = [p for p in history if p[0] >= now - GROWTH_WINDOW_S - _EPS_S]
    return recent[0] if recent else None


def growth_rate(history: list[list[float]], now: float, total: float) -> float:
    """Requests per second the load grew by over the last :data:`GROWTH_WINDOW_S` (0 when
    too short to tell)."""
    first = _growth_start(history, now)
    if first is None:
        return 0.0
    t0, v0 = first
    span = now - t0
    if span + _EPS_S < MIN_GROWTH_SPAN_S:
        return 0.0
    return (total - v0) / span


def _is_burst(total: float, current: int, config: PolicyConfig,
              history: list[list[float]], now: float) -> bool:
    """Whether an overload of the target must be answered at once (see the module docstring)."""
    target = config.target_ongoing_requests
    if config.max_ongoing_requests is None:
        return total - current * target >= target - 1e-9
    if total - current * target < target - 1e-9:
        # Not even one replica's target of excess: a wobble, whatever its slope (a 10 s
        # growth extrapolated over a start time of minutes reaches any limit).
        return False
    hard = current * config.max_ongoing_requests
    horizon = max(config.replica_start_s, MIN_HORIZON_S)
    first = _growth_start(history, now)
    grown = total - first[1] if first is not None else 0.0
    # Only a growth of at least one replica's target within the window is a trend; less is
    # the noise of Poisson arrivals around a level (it would buy a node per wobble).
    rate = growth_rate(history, now, total) if grown >= target - 1e-9 else 0.0
    if rate <= 0:
        return False
    return total + rate * horizon >= hard - 1e-9


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
    history = _history(state.get("hist", []), now, total,
                       max(GROWTH_WINDOW_S, config.smooth_s))
    # Scale-ups are judged on the raw signal (fast; a marginal overload must last
    # upscale_delay_s on it, which noise makes conservative); the hold before a downscale on
    # its mean over `smooth_s` (a 10 s mean of Poisson traffic wobbles over the target and
    # would hold a replica for every wobble).
    desired_now = desired_replicas(total, target)
    desired = desired_replicas(smoothed_load(history, now, total, config.smooth_s), target)

    since = float(state.get("since", now))
    # Sliding-window maximum of the desired count over the last `hold` seconds, as a
    # monotonic deque of [t, desired] (values strictly decreasing; at most max+1 entries
    # because the stored value is clamped to max_replicas).
    peaks: list[list[float]] = [list(p) for p in state.get("peaks", [])]
    _push_peak(peaks, now, min(desired, config.max_replicas))
    while peaks and peaks[0][0] < now - hold - _EPS_S:
        peaks.pop(0)
    window_peak = int(peaks[0][1]) if peaks else min(desired, config.max_replicas)
    zero_since = state.get("zero_since")
    zero_since = (zero_since if zero_since is not None else now) if total <= 0 else None
    over_since = state.get("over_since")
    over_start: float | None = None
    burst_at = state.get("burst_at")
    running_now = current if sample.running_replicas is None else sample.running_replicas
    if (config.max_ongoing_requests is not None and running_now > 0
            and total > running_now * config.max_ongoing_requests + 1e-9
            and growth_rate(history, now, total) > 0):
        # Requests wait beyond every serving replica's hard limit, more every second: a
        # burst happened (the backlog a cold start leaves shrinks; a forecast alone is not
        # one either).
        burst_at = now
    reserving = (config.replica_start_s >= RESERVE_MIN_START_S and burst_at is not None
                 and now - float(burst_at) < config.reserve_s)
    floor = min(config.max_replicas, config.reserve_replicas) if reserving else 0

    raw_over = desired_now > current
    if raw_over:
        over_start = float(state.get("over_start", now) if state.get("over_start") is not None
                           else now)
        if (current > 0 and config.max_ongoing_requests is not None
                and config.replica_start_s >= YOUNG_MIN_START_S
                and now - over_start + _EPS_S < YOUNG_OVERLOAD_SHARE * config.replica_start_s):
            # An overload younger than a start: replicas ordered now serve after it, when a
            # burst of a few minutes is over (the bench: replicas 4-6 of a 3-minute burst
            # never served a queued request). One replica beyond the serving ones at a time;
            # an overload that lasted a start gets the target's count.
            running = current if sample.running_replicas is None else sample.running_replicas
            desired_now = min(desired_now, max(current, running + 1))
            desired = min(desired, desired_now)

    if desired_now > current:
        if current == 0:
            proposed, reason, over_since = desired_now, SCALE_FROM_ZERO, None
        elif _is_burst(total, current, config, history, now):
            proposed, reason, over_since = desired_now, BURST, None
        else:
            over_since = over_since if over_since is not None else now
            # A marginal overload must also hold on the smoothed load: the 10 s mean of
            # Poisson traffic near a level crosses it for upscale_delay_s now and then, and a
            # replica ordered for a wobble is cancelled before it serves (its node billed
            # for the cluster's idle timeout all the same).
            if (now - over_since + _EPS_S >= config.upscale_delay_s
                    and desired > current):
                proposed, reason, over_since = desired, UPSCALE, None
            else:
                proposed, reason = current, UPSCALE_WAIT
        if proposed > current:  # what was just added is held like any peak
            _push_peak(peaks, now, min(proposed, config.max_replicas))

    elif raw_over:  # a young overload with one replica beyond the serving ones in flight
        proposed, reason = current, UPSCALE_WAIT
    elif desired < current and desired_now < current:
        over_since = over_start = None
        observed_long_enough = now - since + _EPS_S >= hold
        lower = max(window_peak, desired_now) if observed_long_enough else current
        zero_ok = (config.min_replicas == 0 and zero_since is not None
                   and now - zero_since + _EPS_S >= config.zero_hold_s
                   and now - since + _EPS_S >= config.zero_hold_s)
        if zero_ok:
            lower = 0
        else:
            lower = max(lower, 1, floor)  # the last replica waits for the zero delay
        running = current if sample.running_replicas is None else sample.running_replicas
        if lower < current:
            proposed = lower
            reason = SCALE_TO_ZERO if lower == 0 else DOWNSCALE
        elif (0 < running < current and max(desired, desired_now) <= running
              and max(running, floor) < current):
            # The need that ordered the starting replicas has passed before they serve: the
            # hold protects serving capacity, not starts (their nodes stay up for the idle
            # timeout anyway, so re-adding one soon costs only the model load).
            proposed, reason = max(running, floor), CANCEL_START
        else:
            proposed, reason = current, HOLD
    elif 0 < current < floor and total > 0:
        # Burst memory: the next burst finds a spare replica instead of a start time.
        over_since = over_start = None
        proposed, reason = floor, RESERVE
    else:
        over_since = over_start = None
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
                                 "over_since": over_since, "hist": history,
                                 "burst_at": burst_at, "over_start": over_start}
    return Decision(replicas=proposed, reason=reason), new_state
