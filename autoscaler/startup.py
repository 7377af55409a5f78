"""How long a new replica takes to start: node boot + model load, learned from history.

Pure functions (no database, no Ray): the control API feeds them the node boot durations it
measured from the instance lifecycle history (``requested`` -> ``ready`` of recent instances of
the instance types a deployment runs on), and the policy (``autoscaler.serve_policy``) receives
the result as ``replica_start_s``.

Estimate:
- an explicit ``replica_start_s`` in the deployment YAML wins (it is the whole start time);
- node boot: the 75th percentile of the most recent boots (robust: a few slow boots or one
  outlier do not move it much; it leans pessimistic, which is the safe side for holding
  capacity); :data:`DEFAULT_NODE_BOOT_S` when there is no history yet;
- model load: :data:`DEFAULT_MODEL_LOAD_S` plus :data:`MODEL_LOAD_S_PER_GB` per GB of
  ``model_memory_gb`` when the YAML gives the model's size (weights read at a few hundred MB/s,
  then engine start-up);
- the sum is bounded to ``[MIN_REPLICA_START_S, MAX_REPLICA_START_S]`` and rounded UP to
  :data:`ROUND_TO_S`, so small changes of the history do not change the Serve config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# No history: a GPU VM on Scaleway is created, boots its image and joins Ray in ~2 minutes.
DEFAULT_NODE_BOOT_S = 120.0
# Model load without a size: vLLM start-up (imports, weights, KV cache, graphs) of a small
# model; measured ~80 s for the tiny model on 2 shared CPUs (FACTS.md), ~60 s on a GPU node.
DEFAULT_MODEL_LOAD_S = 60.0
MODEL_LOAD_S_PER_GB = 4.0
MIN_REPLICA_START_S = 5.0
MAX_REPLICA_START_S = 3600.0
ROUND_TO_S = 5.0
PERCENTILE = 0.75
# Only the most recent boots count: images, zones and the cloud's speed change over time.
MAX_SAMPLES = 50


@dataclass(frozen=True)
class StartupEstimate:
    """``seconds`` = node boot + model load (bounded, rounded); where each part came from."""

    seconds: float
    node_boot_s: float | None
    model_load_s: float | None
    source: str  # "spec" | "learned" | "default"
    samples: int


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) with linear interpolation between order statistics."""
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 1:
        raise ValueError("q must be within [0, 1]")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def model_load_estimate(model_memory_gb: float | None) -> float:
    """Default model load time, growing with the model's memory when it is known."""
    if model_memory_gb is None:
        return DEFAULT_MODEL_LOAD_S
    return DEFAULT_MODEL_LOAD_S + MODEL_LOAD_S_PER_GB * max(0.0, model_memory_gb)


def bound(seconds: float) -> float:
    """Clamp to the allowed range and round up to :data:`ROUND_TO_S`."""
    clamped = min(MAX_REPLICA_START_S, max(MIN_REPLICA_START_S, seconds))
    return min(MAX_REPLICA_START_S, math.ceil(clamped / ROUND_TO_S - 1e-9) * ROUND_TO_S)


def estimate_replica_start(boot_durations_s: Sequence[float], *,
                           spec_replica_start_s: float | None = None,
                           model_memory_gb: float | None = None,
                           needs_node: bool = True) -> StartupEstimate:
    """The replica start time of a deployment.

    ``boot_durations_s``: node boots (requested -> ready, seconds), most recent first; negative
    or non-finite values (clock skew, bad rows) are ignored. ``needs_node=False``: the replicas
    run on nodes that are always there (no node type to boot), only the model load counts.
    """
    if spec_replica_start_s is not None:
        return StartupEstimate(bound(spec_replica_start_s), None, None, "spec", 0)
    samples = [float(d) for d in boot_durations_s[:MAX_SAMPLES]
               if math.isfinite(d) and d >= 0]
    load = model_load_estimate(model_memory_gb)
    if not needs_node:
        return StartupEstimate(bound(load), 0.0, load, "default", 0)
    if samples:
        boot = percentile(samples, PERCENTILE)
        return StartupEstimate(bound(boot + load), boot, load, "learned", len(samples))
    return StartupEstimate(bound(DEFAULT_NODE_BOOT_S + load), DEFAULT_NODE_BOOT_S, load,
                           "default", 0)
