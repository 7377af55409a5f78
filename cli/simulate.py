"""`inventiv simulate`: replay a request trace through a replica policy, offline.

    inventiv simulate --trace configs/traces/bursty-chat.csv \\
        --deployment configs/deployments/examples/gpu-chat.yaml [--json]
    inventiv simulate ... --compare ray            # the same YAML under Ray Serve's default policy
    inventiv simulate ... --compare other.yaml     # another deployment file, side by side

Mounted in ``cli/main.py`` as ``app.command("simulate")(simulate.simulate)``. Nothing here
talks to a server: the catalog seed gives prices, the YAML the deployment, the flags the
modelled times (see ``autoscaler.simulator``).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer

from autoscaler.simulator import (
    POLICIES,
    ServiceModel,
    SimDeployment,
    SimOptions,
    SimResult,
    SimulationError,
    from_deployment_spec,
    load_catalog,
)
from autoscaler.simulator import (
    simulate as run_simulation,
)
from autoscaler.traces import TraceError, load_trace
from cli.output import JsonOpt, fail, print_json, print_table
from core.spec import SpecError, load_spec_file

# Figures compared side by side, in table order: (key, label).
FIGURES = [
    ("cost_eur", "cost (EUR)"), ("gpu_hours", "GPU-hours"), ("idle_share", "idle share"),
    ("p50_wait_s", "p50 queue wait (s)"), ("p95_wait_s", "p95 queue wait (s)"),
    ("p99_wait_s", "p99 queue wait (s)"), ("mean_wait_s", "mean queue wait (s)"),
    ("max_wait_s", "max queue wait (s)"), ("requests", "requests"), ("served", "served"),
    ("rejected", "rejected (queue full)"), ("unserved", "unserved at the end"),
    ("replica_seconds", "replica-seconds serving"), ("max_replicas", "max replicas"),
    ("nodes_created", "nodes created"), ("instance_type", "instance type"),
    ("hourly_eur", "EUR/h per node"), ("window_s", "window (s)"),
]
RATIO_KEYS = ("cost_eur", "gpu_hours", "idle_share", "p50_wait_s", "p95_wait_s",
              "p99_wait_s", "mean_wait_s", "replica_seconds")


def pick_deployment(path: Path, name: str | None) -> SimDeployment:
    """The deployment ``name`` of a YAML file (or its only one).

    Raises SpecError (invalid file) or SimulationError (no such deployment).
    """
    spec = load_spec_file(path)
    deps = spec.deployments
    if name is None:
        if len(deps) != 1:
            names = ", ".join(d.name for d in deps)
            raise SimulationError(f"{path} has {len(deps)} deployments ({names}); "
                                  "pass --deployment-name")
        return from_deployment_spec(deps[0])
    for d in deps:
        if d.name == name:
            return from_deployment_spec(d)
    names = ", ".join(d.name for d in deps)
    raise SimulationError(f"{path} has no deployment {name!r} (it has: {names})")


def ratio(a: Any, b: Any) -> float | None:
    """``a / b`` of two figures (None when undefined: a missing value or b == 0)."""
    if a is None or b is None:
        return None
    fa, fb = float(Decimal(str(a))), float(Decimal(str(b)))
    if fb == 0:
        return 1.0 if fa == 0 else None
    return round(fa / fb, 4)


def compare_json(a: SimResult, b: SimResult, label_a: str, label_b: str) -> dict[str, Any]:
    """The ``--compare --json`` object: both sides and the ratios a / b."""
    ja, jb = a.to_json(), b.to_json()
    return {"a": {"label": label_a, **ja}, "b": {"label": label_b, **jb},
            "ratios_a_over_b": {k: ratio(ja[k], jb[k]) for k in RATIO_KEYS}}


def simulate(
    trace: Annotated[Path, typer.Option("--trace", help="Trace CSV: "
                                        "arrival_s,prompt_tokens,completion_tokens.")],
    deployment: Annotated[Path, typer.Option("--deployment", "-f",
                                             help="Deployment YAML file.")],
    deployment_name: Annotated[str | None, typer.Option(
        "--deployment-name", help="Which deployment of the file (needed when it has several).")
    ] = None,
    policy: Annotated[str | None, typer.Option(
        "--policy", help="Override the YAML's autoscaling.policy: inventiv or ray.")] = None,
    compare: Annotated[str | None, typer.Option(
        "--compare", help="Side by side with a policy (inventiv|ray) or another deployment "
                          "YAML (same --deployment-name).")] = None,
    instance_type: Annotated[str | None, typer.Option(
        "--instance-type", help="Catalog instance type (name or provider/name) instead of the "
                                "one mapped from the placement.")] = None,
    node_boot_s: Annotated[float | None, typer.Option(
        "--node-boot-s", min=0, help="VM creation to node ready (default: 8 local, 120 "
                                     "scaleway).")] = None,
    model_load_s: Annotated[float | None, typer.Option(
        "--model-load-s", min=0, help="Replica model load on a ready node (default: "
                                      "replica_start_s - node boot, else 60).")] = None,
    idle_timeout_s: Annotated[float | None, typer.Option(
        "--idle-timeout-s", min=0, help="Idle node kept this long (default: the provider's "
                                        "cluster YAML).")] = None,
    prefill_tps: Annotated[float, typer.Option(
        "--prefill-tps", min=0.001, help="Prompt tokens/s per sequence.")] = 2000.0,
    decode_tps: Annotated[float, typer.Option(
        "--decode-tps", min=0.001, help="Completion tokens/s per sequence.")] = 25.0,
    tick_s: Annotated[float, typer.Option("--tick-s", min=0.01,
                                          help="Policy control tick.")] = 1.0,
    scale_up_cap: Annotated[int | None, typer.Option(
        "--scale-up-cap", min=0, help="Budget guard cap (inventiv policy).")] = None,
    until_s: Annotated[float | None, typer.Option(
        "--until-s", min=0, help="Window end (default: last arrival or completion).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Replay a request trace through the replica policy: cost, GPU-hours, idle share, waits."""
    if policy is not None and policy not in POLICIES:
        raise fail("invalid_argument", f"--policy must be one of {', '.join(POLICIES)}")
    options = SimOptions(
        tick_s=tick_s, node_boot_s=node_boot_s,
        model_load_s=model_load_s, idle_timeout_s=idle_timeout_s,
        service=ServiceModel(prefill_tps, decode_tps), scale_up_cap=scale_up_cap,
        until_s=until_s, instance_type=instance_type)
    try:
        requests = load_trace(trace)
        dep_a = pick_deployment(deployment, deployment_name)
        pol_a = policy or dep_a.policy
        catalog = load_catalog()
        result_a = run_simulation(requests, dep_a, policy=pol_a,  # type: ignore[arg-type]
                                  options=options, catalog=catalog)
        if compare is None:
            if json_out:
                print_json(result_a.to_json())
            else:
                _table([(f"{dep_a.name} ({pol_a})", result_a)], trace)
            return
        short_b = f"{dep_a.name} ({compare})"
        if compare in POLICIES and not Path(compare).exists():
            dep_b, pol_b, label_b = dep_a, compare, f"{deployment}:{dep_a.name} ({compare})"
        else:
            dep_b = pick_deployment(Path(compare), deployment_name or dep_a.name)
            pol_b = policy or dep_b.policy
            label_b = f"{compare}:{dep_b.name} ({pol_b})"
            short_b = f"{Path(compare).name}:{dep_b.name} ({pol_b})"
        result_b = run_simulation(requests, dep_b, policy=pol_b,  # type: ignore[arg-type]
                                  options=options, catalog=catalog)
    except TraceError as exc:
        raise fail("invalid_trace", str(exc)) from None
    except SpecError as exc:
        raise fail("invalid_deployment", str(exc)) from None
    except SimulationError as exc:
        raise fail("invalid_simulation", str(exc)) from None
    except OSError as exc:
        raise fail("unreadable_file", f"{exc.filename}: {exc.strerror}") from None
    label_a = f"{deployment}:{dep_a.name} ({pol_a})"
    if json_out:
        print_json(compare_json(result_a, result_b, label_a, label_b))
    else:
        _table([(f"{deployment.name}:{dep_a.name} ({pol_a})", result_a),
                (short_b, result_b)], trace)


def _table(sides: list[tuple[str, SimResult]], trace: Path) -> None:
    data = [r.to_json() for _, r in sides]
    rows: list[list[Any]] = [[label, *(d[key] for d in data)] for key, label in FIGURES]
    if len(data) == 2:
        headers = ["", f"a: {sides[0][0]}", f"b: {sides[1][0]}", "a / b"]
        for row, (key, _) in zip(rows, FIGURES, strict=True):
            row.append(ratio(data[0][key], data[1][key]) if key in RATIO_KEYS else "")
    else:
        headers = ["", sides[0][0]]
    print_table(f"simulate {trace}", headers, rows)
