"""The ingress's batched counters: increments summed per label set, recorded once per interval."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serve_apps.metrics import Counter


def capture(counter: Counter) -> list[tuple[float, dict[str, str]]]:
    calls: list[tuple[float, dict[str, str]]] = []

    def record(value: float, tags: dict[str, str] | None = None) -> None:
        calls.append((value, dict(tags or {})))

    counter._record = record  # type: ignore[method-assign]  # what Ray's inc records through
    return calls


def test_increments_on_a_loop_are_summed_per_label_set_then_recorded() -> None:
    counter = Counter("inventiv_test_batched", tag_keys=("model", "kind"), interval_s=0.05)
    calls = capture(counter)

    async def main() -> None:
        counter.inc(3, tags={"model": "m", "kind": "prompt"})
        counter.inc(2, tags={"kind": "prompt", "model": "m"})
        counter.inc(1, tags={"model": "m", "kind": "completion"})
        assert calls == []
        await asyncio.sleep(0.1)
        assert sorted(calls, key=lambda c: c[1]["kind"]) == [
            (1, {"model": "m", "kind": "completion"}), (5, {"model": "m", "kind": "prompt"})]
        counter.inc(1, tags={"model": "m", "kind": "prompt"})
        counter.flush()  # e.g. at shutdown
        assert calls[-1] == (1, {"model": "m", "kind": "prompt"})

    asyncio.run(main())


def test_off_a_loop_and_bad_values_behave_like_rays_counter() -> None:
    counter = Counter("inventiv_test_batched_2", tag_keys=("model",))
    calls = capture(counter)
    counter.inc(2, tags={"model": "m"})
    assert calls == [(2, {"model": "m"})]
    with pytest.raises(ValueError):
        counter.inc(0, tags={"model": "m"})
    bad: Any = "1"
    with pytest.raises(TypeError):
        counter.inc(bad, tags={"model": "m"})


def test_the_usage_clients_counters_are_recorded_as_they_grow() -> None:
    from serve_apps.metrics import IngressMetrics

    metrics = IngressMetrics()
    seen = {name: capture(getattr(metrics, name)) for name in (
        "usage_dropped", "spool_full", "spool_write_errors", "metering_unavailable")}
    metrics.client_stats(0, 0, 0, None, buffered=5, pending=0)
    assert all(calls == [] for calls in seen.values())
    metrics.client_stats(3, 1, 2, "ENOSPC", buffered=40, pending=2)
    metrics.client_stats(3, 1, 2, "ENOSPC", buffered=40, pending=2)  # no growth: nothing
    metrics.client_stats(4, 1, 3, "EROFS", buffered=41, pending=2)
    metrics.unavailable()
    assert seen["usage_dropped"] == [(3, {}), (1, {})]
    assert seen["spool_full"] == [(1, {})]
    assert seen["spool_write_errors"] == [(2, {"errno": "ENOSPC"}), (1, {"errno": "EROFS"})]
    assert seen["metering_unavailable"] == [(1, {})]
