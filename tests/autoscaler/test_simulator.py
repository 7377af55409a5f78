"""The trace-replay simulator: its cost is the FinOps ledger's, its policies behave as in Serve.

The most important test writes a simulated lifecycle (every node's creation, readiness and
deletion) into a real Postgres database through the control API's own lifecycle-event path,
derives the cost spans with finops, and checks that the ledger's cost equals the simulator's
to the micro-euro (and to the integer unit).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from autoscaler.simulator import (
    NodeInterval,
    SimDeployment,
    SimOptions,
    SimResult,
    SimulationError,
    choose_instance_type,
    from_deployment_spec,
    load_catalog,
    percentile,
    simulate,
)
from autoscaler.traces import (
    EXAMPLES,
    TRACES_DIR,
    TraceError,
    TraceRequest,
    example_text,
    load_trace,
    parse_trace,
)
from control_api import bootstrap
from control_api.services.internal import apply_lifecycle_events
from core.db import make_engine, make_sessionmaker
from core.models import BillingInterval, InstanceState
from core.spec import load_spec_file
from core.wire import LifecycleEventIn
from finops.costs import window_costs_units
from finops.ledger import to_us, units_to_eur
from finops.spans import sync_spans
from tests.conftest import migrated_postgres_database

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
CATALOG = load_catalog()


def deployment(**changes: object) -> SimDeployment:
    """A GPU chat deployment (Scaleway L4: per-minute billing, one-minute minimum)."""
    base = SimDeployment(
        name="chat", min_replicas=0, max_replicas=4, target_ongoing_requests=4,
        max_ongoing_requests=8, max_queued_requests=10_000, upscale_delay_s=30,
        downscale_delay_s=60, downscale_to_zero_delay_s=90, accelerator_type="L4")
    return replace(base, **changes)  # type: ignore[arg-type]


def burst(at: float, n: int, spacing: float = 0.05, completion: int = 250) -> list[TraceRequest]:
    return [TraceRequest(round(at + k * spacing, 3), 200, completion) for k in range(n)]


# Fractional boot/load times, so node lifetimes fall between minutes and rounding matters.
OPTS = SimOptions(node_boot_s=47.3, model_load_s=31.9, idle_timeout_s=65.7)


# ---------------------------------------------------------------- cost = FinOps ledger


@pytest.fixture(scope="module")
def pg_sessions() -> Iterator[sessionmaker[Session]]:
    with migrated_postgres_database("inventiv_sim") as url:
        engine = make_engine(url)
        try:
            yield make_sessionmaker(engine)
        finally:
            engine.dispose()


def _event(node: NodeInterval, launch: str, state: InstanceState, us: int,
           exists: bool | None, origin: datetime) -> LifecycleEventIn:
    return LifecycleEventIn(
        event_id=uuid.uuid4().hex, launch_id=launch, cluster_name="sim", provider=node.provider,
        instance_type=node.instance_type, zone="fr-par-2", provider_instance_id=f"vm-{launch}",
        state=state, at=origin + timedelta(microseconds=us), cloud_exists=exists)


def _lifecycle_events(result: SimResult, origin: datetime) -> list[LifecycleEventIn]:
    """What the node provider would report for each simulated VM: created (the cloud confirms
    it exists: billing starts), ready, terminated (the cloud confirms it is gone)."""
    events = []
    for node in result.nodes:
        launch = f"sim-{node.node_id}-{uuid.uuid4().hex[:8]}"
        events.append(_event(node, launch, InstanceState.PROVISIONING, node.created_us, True,
                             origin))
        if node.ready_us is not None:
            events.append(_event(node, launch, InstanceState.READY, node.ready_us, None, origin))
        events.append(_event(node, launch, InstanceState.TERMINATED, node.deleted_us, False,
                             origin))
    return events


@pytest.mark.postgres
@pytest.mark.parametrize(("policy", "day"), [("inventiv", 0), ("ray", 10)])
def test_simulated_cost_equals_the_finops_ledger(pg_sessions: sessionmaker[Session],
                                                 policy: str, day: int) -> None:
    trace = [*burst(5.0, 40), *burst(400.0, 25), TraceRequest(700.0, 100, 20)]
    result = simulate(trace, deployment(), policy=policy,  # type: ignore[arg-type]
                      options=replace(OPTS, until_s=3600.0), catalog=CATALOG)
    # A real lifecycle: several nodes, all created, booted and deleted within the window.
    assert len(result.nodes) >= 3
    assert all(n.deleted_us < 3600 * 1_000_000 for n in result.nodes)
    assert any(n.deleted_us % 60_000_000 for n in result.nodes)  # not whole minutes

    with pg_sessions() as s, s.begin():
        bootstrap.seed_catalog(s, bootstrap.load_catalog())
        origin = T0 + timedelta(days=day)  # each run in its own days of the shared database
        outcome = apply_lifecycle_events(s, _lifecycle_events(result, origin),
                                         actor="simulator")
        assert outcome.rejected == [] and outcome.applied == 2 * len(result.nodes) + sum(
            1 for n in result.nodes if n.ready_us is not None)
    with pg_sessions() as s, s.begin():
        sync_spans(s)
        start, end = origin - timedelta(days=1), origin + timedelta(days=2)
        units = window_costs_units(s, [(to_us(start), to_us(end))], to_us(end))[0].get(None, 0)
        intervals = s.scalars(select(BillingInterval).where(
            BillingInterval.started_at >= origin, BillingInterval.started_at < end)).all()
    assert len(intervals) == len(result.nodes)
    assert units == result.cost_units
    assert units_to_eur(units) == result.cost_eur
    assert result.cost_eur > 0


def test_cost_bills_whole_minutes_from_creation_to_deletion() -> None:
    """The per-node arithmetic, by hand: Scaleway bills started minutes, at least one."""
    trace = burst(0.0, 3)
    r = simulate(trace, deployment(min_replicas=0, max_replicas=1), policy="inventiv",
                 options=replace(OPTS, until_s=10_000.0), catalog=CATALOG)
    assert len(r.nodes) == 1
    node = r.nodes[0]
    minutes = -(-(node.deleted_us - node.created_us) // 60_000_000)
    # 0.75 EUR/h = 0.0125 EUR per minute.
    assert str(r.cost_eur) == f"{minutes * 0.0125:.6f}"
    assert r.gpu_hours == pytest.approx((node.deleted_us - node.created_us) / 3.6e9)


# ---------------------------------------------------------------- policies through the simulator


# One replica up from the start (min_replicas 1); at t=100 s, 200 requests in 10 s, 20 s each:
# one replica (8 at a time) would need 500 s; new replicas pay node boot + model load (79.2 s).
BURST = [TraceRequest(0.5, 100, 10), *burst(100.0, 200, completion=500)]


def test_a_burst_adds_replicas_that_serve_after_boot_and_load() -> None:
    r = simulate(BURST, deployment(min_replicas=1), policy="inventiv", options=OPTS,
                 catalog=CATALOG)
    first, *added = r.nodes
    assert first.created_us == 0  # the min_replicas node, from the start
    assert len(added) == 3 and r.max_replicas == 4
    for node in added:
        # Our policy reacts within seconds (metrics pushed every 2 s), not after upscale_delay_s.
        assert 100_000_000 <= node.created_us <= 105_000_000
        assert node.ready_us == node.created_us + 47_300_000
    assert r.decisions.get("burst", 0) >= 1
    assert r.served == r.requests == 201 and r.unserved == 0


def test_ray_default_policy_waits_for_its_upscale_delay() -> None:
    dep = deployment(min_replicas=1)
    ours = simulate(BURST, dep, policy="inventiv", options=OPTS, catalog=CATALOG)
    ray = simulate(BURST, dep, policy="ray", options=OPTS, catalog=CATALOG)
    ray_added = [n.created_us for n in ray.nodes[1:]]
    # Serve's default: 10 s metric pushes, a 30 s mean, then upscale_delay_s (30 s) of
    # consecutive scale-up decisions.
    assert len(ray_added) == 3 and min(ray_added) >= 130_000_000
    assert ray.decisions.get("scale_up") == 1
    assert ours.p95_wait_s is not None and ray.p95_wait_s is not None
    assert ours.p95_wait_s < ray.p95_wait_s - 20


def test_idle_scales_to_zero_and_releases_the_nodes() -> None:
    r = simulate(burst(0.0, 10), deployment(), policy="inventiv",
                 options=replace(OPTS, until_s=2000.0), catalog=CATALOG)
    assert r.decisions.get("scale_to_zero") == 1
    # The first node serves 8 at once from 79.2 s (boot + load); the last 2 requests end at
    # 79.2 + 2 x 10.1 s. No request for downscale_to_zero_delay_s (90 s, seen through Serve's
    # 10 s max window and 2 s pushes), then the idle timeout (65.7 s), and the VMs are gone.
    last_completion = 79.2 + 2 * (200 / 2000 + 250 / 25)
    for node in r.nodes:
        assert node.deleted_us <= (last_completion + 10 + 2 + 90 + 1 + 65.7) * 1e6
    assert max(n.deleted_us for n in r.nodes) >= (last_completion + 90 + 65.7) * 1e6
    assert r.served == 10 and r.unserved == 0
    # The idle share counts boot, load and idle time as unused.
    assert 0.5 < r.idle_share < 1


def test_min_replicas_keeps_a_node_for_the_whole_window() -> None:
    r = simulate(burst(0.0, 2), deployment(min_replicas=1), policy="inventiv",
                 options=replace(OPTS, until_s=1800.0), catalog=CATALOG)
    assert r.nodes[0].created_us == 0 and r.nodes[0].deleted_us == 1800 * 1_000_000
    assert r.gpu_hours == pytest.approx(0.5)


def test_budget_cap_limits_replicas_and_raises_waits() -> None:
    dep = deployment(min_replicas=1)
    free = simulate(BURST, dep, policy="inventiv", options=OPTS, catalog=CATALOG)
    capped = simulate(BURST, dep, policy="inventiv", options=replace(OPTS, scale_up_cap=1),
                      catalog=CATALOG)
    assert free.max_replicas == 4 and capped.max_replicas == 1
    assert len(capped.nodes) == 1
    assert capped.decisions.get("budget_cap", 0) >= 1
    assert capped.p95_wait_s is not None and free.p95_wait_s is not None
    assert capped.p95_wait_s > 2 * free.p95_wait_s
    assert capped.gpu_hours < free.gpu_hours and capped.cost_eur < free.cost_eur


def test_queue_limit_rejects_and_counts() -> None:
    trace = burst(0.0, 50)
    r = simulate(trace, deployment(max_queued_requests=10, max_replicas=1), policy="inventiv",
                 options=OPTS, catalog=CATALOG)
    assert r.rejected == 40 and r.served == 10 and r.requests == 50


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([0.0, 1.0], 50) == 0.0
    assert percentile([float(k) for k in range(1, 101)], 95) == 95.0


def test_deterministic() -> None:
    trace = load_trace(TRACES_DIR / "bursty-chat.csv")[:400]
    a = simulate(trace, deployment(), policy="ray", options=OPTS, catalog=CATALOG)
    b = simulate(trace, deployment(), policy="ray", options=OPTS, catalog=CATALOG)
    assert a.to_json() == b.to_json() and a.nodes == b.nodes


# ---------------------------------------------------------------- mapping to the catalog


def test_instance_type_mapping() -> None:
    local = load_spec_file(ROOT / "configs" / "deployments" / "local.yaml").deployments[0]
    d = from_deployment_spec(local)
    assert choose_instance_type(CATALOG, accelerator_type=d.accelerator_type,
                                resources=d.resources).name == "local-L4"
    assert choose_instance_type(CATALOG, accelerator_type="L4").name == "L4-1-24G"
    # Two GPUs per replica (tensor parallel): the cheapest type that has them.
    assert choose_instance_type(CATALOG, accelerator_type="H100",
                                gpus_per_replica=2).name == "H100-2-80G"
    # Candidates: the cheapest whose memory holds the model.
    assert choose_instance_type(CATALOG, accelerator_type="L4", accelerator_candidates=["L40S"],
                                model_memory_gb=40).name == "L40S-1-48G"
    assert choose_instance_type(CATALOG, accelerator_type=None,
                                override="scaleway/H100-1-80G").name == "H100-1-80G"
    with pytest.raises(SimulationError, match="--instance-type"):
        choose_instance_type(CATALOG, accelerator_type=None)
    with pytest.raises(SimulationError, match="unknown instance type 'nope'"):
        choose_instance_type(CATALOG, accelerator_type="L4", override="nope")


def test_local_cloud_defaults_from_its_cluster_yaml() -> None:
    local = load_spec_file(ROOT / "configs" / "deployments" / "local.yaml").deployments[0]
    r = simulate(burst(0.0, 3), from_deployment_spec(local), catalog=CATALOG)
    model = r.to_json()["model"]
    assert r.instance_type == "local-L4" and r.provider == "local"
    assert model["node_boot_s"] == 8.0 and model["idle_timeout_s"] == 120.0
    assert r.to_json()["policy"] == "inventiv"


# ---------------------------------------------------------------- traces


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_shipped_traces_load_and_are_reproducible(name: str) -> None:
    path = TRACES_DIR / name
    assert path.read_text(encoding="utf-8") == example_text(name)
    trace = load_trace(path)
    assert len(trace) > 1000
    assert all(b.arrival_s >= a.arrival_s for a, b in zip(trace, trace[1:], strict=False))


HEADER = "arrival_s,prompt_tokens,completion_tokens\n"


@pytest.mark.parametrize(("text", "line", "needle"), [
    ("", None, "empty trace"),
    (HEADER, None, "no requests"),
    ("arrival,prompt,completion\n1,2,3\n", 1, "the header must be"),
    (HEADER + "1.0,10,5\n2.0,10\n", 3, "expected 3 fields"),
    (HEADER + "# a comment\n\nabc,10,5\n", 4, "arrival_s must be a number"),
    (HEADER + "-1,10,5\n", 2, "arrival_s must be between 0"),
    (HEADER + "nan,10,5\n", 2, "arrival_s must be between 0"),
    (HEADER + "5,10,5\n4,10,5\n", 3, "before the previous request's 5"),
    (HEADER + "1,0,5\n", 2, "prompt_tokens must be between 1"),
    (HEADER + "1,10,2.5\n", 2, "completion_tokens must be an integer"),
    (HEADER + "1,10,-1\n", 2, "completion_tokens must be between 0"),
])
def test_trace_validation_names_the_line(text: str, line: int | None, needle: str) -> None:
    with pytest.raises(TraceError) as info:
        parse_trace(text, source="t.csv")
    assert info.value.line == line
    assert needle in str(info.value)
    assert str(info.value).startswith(f"t.csv:{line}:" if line else "t.csv:")


def test_trace_parsing_accepts_comments_and_spaces(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("# from prod\n arrival_s , prompt_tokens,completion_tokens\n"
                    "0.5, 12 ,0\n0.5,1,7\n", encoding="utf-8")
    assert load_trace(path) == [TraceRequest(0.5, 12, 0), TraceRequest(0.5, 1, 7)]
    with pytest.raises(TraceError, match="no such file"):
        load_trace(tmp_path / "missing.csv")
