"""The LiteLLM arm of benchmarks/serving_bench.py, without running it: the executable option
(skipped with a clear reason when absent), the full-stack accounting paths and the ratios.
The arm itself runs with the bench (heavy: a Ray cluster), never in the test suite."""

from __future__ import annotations

import importlib
import math
import os
import stat
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    # The bench sets Ray's env at import (it starts its own cluster): keep ours untouched.
    saved = dict(os.environ)
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module("serving_bench")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
        os.environ.clear()
        os.environ.update(saved)


def test_the_arm_is_skipped_with_a_reason_without_an_executable(
        bench: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("INVENTIV_BENCH_LITELLM", raising=False)
    path, why = bench.litellm_executable(None)
    assert path is None and "--litellm" in why and "1.108.7" in why
    missing = tmp_path / "litellm"
    path, why = bench.litellm_executable(str(missing))
    assert path is None and "not an executable" in why
    missing.write_text("#!/bin/sh\n")
    missing.chmod(missing.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("INVENTIV_BENCH_LITELLM", str(missing))
    assert bench.litellm_executable(None) == (str(missing), None)


def test_the_litellm_path_crosses_the_stock_server_too(bench: ModuleType) -> None:
    assert set(bench.STACKS["litellm"]) == {"litellm", "proxy", "baseline", "baseline_replica",
                                                  "replica"}
    assert set(bench.STACKS["ours"]) == {"ours", "proxy", "replica"}


def test_ratios_are_ours_over_litellm_and_none_when_unknown(bench: ModuleType) -> None:
    ours = {"ttft_p50_ms": 5.0, "ttft_p99_ms": 10.0, "full_stack_cpu_ms_per_request": 20.0,
            "tokens_per_s": 300.0}
    lite = {"ttft_p50_ms": 10.0, "ttft_p99_ms": 40.0, "full_stack_cpu_ms_per_request": 80.0,
            "tokens_per_s": 100.0}
    out = bench.compare_litellm(ours, lite)
    assert out == {"ttft_p50_ratio_ours_over_litellm": 0.5,
                   "ttft_p99_ratio_ours_over_litellm": 0.25,
                   "full_stack_cpu_ratio_ours_over_litellm": 0.25,
                   "tokens_per_s_ratio_ours_over_litellm": 3.0}
    lite["ttft_p50_ms"] = math.nan
    assert bench.compare_litellm(ours, lite)["ttft_p50_ratio_ours_over_litellm"] is None
