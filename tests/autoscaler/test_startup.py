"""The replica start-time estimator (pure)."""

from __future__ import annotations

import math

import pytest

from autoscaler.startup import (
    DEFAULT_MODEL_LOAD_S,
    DEFAULT_NODE_BOOT_S,
    MAX_REPLICA_START_S,
    MAX_SAMPLES,
    MIN_REPLICA_START_S,
    bound,
    estimate_replica_start,
    percentile,
)


def test_percentile() -> None:
    assert percentile([40, 10, 30, 20], 0.75) == 32.5
    assert percentile([7], 0.75) == 7
    assert percentile([1, 2, 3], 0) == 1 and percentile([1, 2, 3], 1) == 3
    with pytest.raises(ValueError):
        percentile([], 0.5)
    with pytest.raises(ValueError):
        percentile([1], 1.5)


def test_learned_from_boots_plus_model_load() -> None:
    est = estimate_replica_start([10, 20, 30, 40])
    # p75 of boots 32.5 + 60 s of model load = 92.5, rounded up to 95.
    assert (est.seconds, est.node_boot_s, est.model_load_s, est.source, est.samples) == (
        95.0, 32.5, DEFAULT_MODEL_LOAD_S, "learned", 4)
    # Robust: one outlier among many boots barely moves it.
    assert estimate_replica_start([30] * 19 + [3000]).seconds == 90.0
    # The model's size lengthens the load: 60 + 4 x 20 GB.
    assert estimate_replica_start([30], model_memory_gb=20).model_load_s == 140.0


def test_defaults_spec_and_bounds() -> None:
    est = estimate_replica_start([])
    assert (est.seconds, est.source) == (DEFAULT_NODE_BOOT_S + DEFAULT_MODEL_LOAD_S, "default")
    # Bad samples are ignored (clock skew, NaN).
    assert estimate_replica_start([-5, math.nan, math.inf]).source == "default"
    # No node to boot (CPU replicas on the nodes that are there): the model load only.
    assert estimate_replica_start([500], needs_node=False).seconds == DEFAULT_MODEL_LOAD_S
    # The YAML's value wins, bounded and rounded.
    spec = estimate_replica_start([10], spec_replica_start_s=42)
    assert (spec.seconds, spec.source, spec.samples) == (45.0, "spec", 0)
    assert estimate_replica_start([], spec_replica_start_s=0.5).seconds == MIN_REPLICA_START_S
    assert estimate_replica_start([10**6]).seconds == MAX_REPLICA_START_S
    assert bound(60.0) == 60.0 and bound(60.01) == 65.0
    # Only the most recent samples count (most recent first).
    assert estimate_replica_start([10] * MAX_SAMPLES + [10**5] * 10).node_boot_s == 10
