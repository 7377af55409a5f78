"""Our replica policy vs Ray Serve's default policy, on the shipped traces, in the simulator.

For each shipped trace (``configs/traces/*.csv``) and each deployment, the same trace is
replayed through both policies as Serve runs them (``autoscaler.simulator``): cost (EUR, the
FinOps ledger's arithmetic at catalog prices), GPU-hours, idle share and queue waits, and the
ratios ours / Ray's (below 1 is better for us, for every figure here). Deployments:

- ``gpu``: ``configs/deployments/examples/gpu-chat.yaml`` (Scaleway L4, 0..6 replicas, boot
  120 s + load 60 s);
- ``local``: ``configs/deployments/local.yaml``'s ``tiny-chat`` with ``min_replicas`` 0 and
  ``max_replicas`` 3 (the local cloud: boot 8 s, load 80 s as measured on these machines).

Also measured: the simulator's own speed (requests simulated per second of wall clock, the best
of ``--runs``) and the wall time of the one-hour trace. Prints one JSON object.

    python benchmarks/autoscaler_bench.py [--json] [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import configs  # noqa: E402
from autoscaler.simulator import (  # noqa: E402
    SimDeployment,
    SimOptions,
    SimResult,
    from_deployment_spec,
    load_catalog,
    simulate,
)
from autoscaler.traces import EXAMPLES, TRACES_DIR, load_trace  # noqa: E402
from core.spec import load_spec_file  # noqa: E402

RATIOS = ("cost_eur", "gpu_hours", "idle_share", "p50_wait_s", "p95_wait_s", "p99_wait_s",
          "mean_wait_s")
FIGURES = ("cost_eur", "gpu_hours", "idle_share", "p50_wait_s", "p95_wait_s", "p99_wait_s",
           "mean_wait_s", "max_wait_s", "rejected", "max_replicas", "nodes_created",
           "replica_seconds", "decisions")


def log(msg: str) -> None:
    sys.stderr.write(f"[autoscaler-bench] {msg}\n")
    sys.stderr.flush()


def deployments() -> dict[str, tuple[SimDeployment, SimOptions]]:
    gpu = load_spec_file(configs.path("deployments", "examples", "gpu-chat.yaml"))
    local = load_spec_file(configs.path("deployments", "local.yaml"))
    tiny = from_deployment_spec(next(d for d in local.deployments if d.name == "tiny-chat"))
    return {
        "gpu": (from_deployment_spec(gpu.deployments[0]), SimOptions()),
        # local.yaml pins tiny-chat to one replica; let it scale like a real deployment would.
        "local": (replace(tiny, min_replicas=0, max_replicas=3, max_queued_requests=2000),
                  SimOptions(model_load_s=80.0)),
    }


def ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None:
        return None
    fa, fb = float(a), float(b)
    if fb == 0:
        return 1.0 if fa == 0 else None
    return round(fa / fb, 4)


def timed(fn: Any, runs: int) -> tuple[SimResult, float]:
    best = float("inf")
    result = None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    assert result is not None
    return result, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="JSON only (the default output is "
                        "JSON too; kept for the house style)")
    parser.add_argument("--runs", type=int, default=3, help="timing runs per simulation")
    parser.add_argument("--quick", action="store_true", help="one run each (CI smoke)")
    args = parser.parse_args()
    runs = 1 if args.quick else max(1, args.runs)
    catalog = load_catalog()
    # Warm-up: import Ray's policy modules once, outside the timings.
    first_dep, first_opts = next(iter(deployments().values()))
    simulate(load_trace(TRACES_DIR / "bursty-chat.csv")[:50], first_dep, policy="ray",
             options=first_opts, catalog=catalog)
    out: dict[str, Any] = {"benchmark": "autoscaler_simulator", "runs": runs, "results": {}}
    speeds: list[float] = []
    for trace_name in sorted(EXAMPLES):
        trace = load_trace(TRACES_DIR / trace_name)
        per_trace: dict[str, Any] = {"requests": len(trace),
                                     "duration_s": round(trace[-1].arrival_s, 3)}
        for dep_name, (dep, opts) in deployments().items():
            sides: dict[str, dict[str, Any]] = {}
            for policy in ("inventiv", "ray"):
                result, secs = timed(lambda p=policy, d=dep, o=opts, t=trace: simulate(
                    t, d, policy=p, options=o, catalog=catalog), runs)
                j = result.to_json()
                sides[policy] = {k: j[k] for k in FIGURES} | {
                    "instance_type": j["instance_type"], "wall_s": round(secs, 4),
                    "requests_per_s": round(len(trace) / secs)}
                speeds.append(len(trace) / secs)
                log(f"{trace_name} {dep_name} {policy}: {j['cost_eur']} EUR, "
                    f"p95 {j['p95_wait_s']} s, {secs:.3f} s wall")
            per_trace[dep_name] = {
                "ours": sides["inventiv"], "ray_default": sides["ray"],
                "ratio_ours_over_ray": {k: ratio(sides["inventiv"][k], sides["ray"][k])
                                        for k in RATIOS},
            }
        out["results"][trace_name] = per_trace
    one_hour = out["results"]["bursty-chat.csv"]
    out["simulator_speed"] = {
        "requests_per_s_min": round(min(speeds)), "requests_per_s_max": round(max(speeds)),
        "one_hour_trace_wall_s_max": max(one_hour[d][s]["wall_s"] for d in ("gpu", "local")
                                         for s in ("ours", "ray_default")),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
