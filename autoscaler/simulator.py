"""Trace-replay simulator: cost, GPU-hours, idle share and queue waits of a replica policy.

A discrete-event replay, in simulated time (no clock, no sleep), of a request trace
(:mod:`autoscaler.traces`) through the **same policy code** that runs in Serve:

- ``inventiv``: :func:`autoscaler.policy.decide`, called every control tick;
- ``ray``: Ray Serve's own default policy (``replica_queue_length_autoscaling_policy``), wrapped
  exactly as Serve wraps it (``_apply_autoscaling_config``: cold-start path, scaling factors,
  upscale/downscale delays) and bounded by ``[min_replicas, max_replicas]`` like Serve's
  ``apply_bounds``, fed real ``AutoscalingContext`` objects. Ray's delay logic reads
  ``time.time()``; the simulator lends it the simulated clock for the duration of the call.

Both policies see the same signal on the same tick (``tick_s``, 1 s by default; Serve's own
loop runs every 0.1 s but its metrics only move every few seconds): ongoing plus queued
requests, averaged over ``look_back_s`` (Serve's ``look_back_period_s``, 30 s by default) the
way Serve aggregates ``total_num_requests``.

The modelled world:

- A new replica needs a slot on a node. One replica per node (the node type is the smallest
  that fits one replica, see :func:`choose_instance_type`). A free slot on a live node is
  reused; otherwise a node is created: it bills from creation (Scaleway bills from VM
  creation), is ready after ``node_boot_s``, and the replica then loads the model for
  ``model_load_s`` before it serves.
- A serving replica runs up to ``max_ongoing_requests`` requests at once (Serve's limit; vLLM
  batches them); a request takes ``prompt/prefill_tokens_per_s + completion/decode_tokens_per_s``
  seconds (per-sequence rates, independent of the batch: a simplification). Requests beyond
  every replica's limit wait in one FIFO queue (Serve's handle queue); an arrival that finds
  ``max_queued_requests`` already waiting is rejected (Serve answers 429), and counted.
- Scale-down first cancels replicas that are not serving yet (newest first), then stops the
  serving replicas with the fewest ongoing requests: they take no new request and leave when
  their ongoing ones finish. A node without replica is deleted after ``idle_timeout_s``
  (the cluster YAML's ``idle_timeout_minutes``: 2 min on the local cloud, 10 on Scaleway)
  unless a new replica takes it first.
- The window is ``[0, end)`` with ``end`` the last arrival or completion (or ``until_s``);
  nodes still alive at ``end`` are closed there.

Cost is the FinOps ledger's own arithmetic (:mod:`finops.ledger`): each node is a billing
interval from creation to deletion, billed with the provider's rule (granularity, minimum) at
the catalog seed's hourly price, summed in exact integer units and converted to EUR once. The
node intervals are in :attr:`SimResult.nodes` (microseconds), so the same lifecycle can be
written to the database and costed by the control API: the test does, and the two are equal.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import yaml

import configs
from autoscaler.errors import AutoscalerError
from autoscaler.traces import TraceRequest
from core.catalog import (
    Catalog,
    CatalogError,
    CatalogInstanceType,
    CatalogProvider,
    default_catalog_path,
)
from core.catalog import load_catalog as _load_catalog
from finops.ledger import (
    US_PER_SECOND,
    BillingRule,
    PriceSchedule,
    interval_cost_units,
    units_to_eur,
)

if TYPE_CHECKING:  # the CLI parses the YAML; the simulator only reads the parsed spec
    from core.spec import DeploymentSpec

CATALOG_SEED = default_catalog_path()
PolicyName = Literal["inventiv", "ray"]
POLICIES: tuple[PolicyName, ...] = ("inventiv", "ray")

DEFAULT_TICK_S = 1.0
# Node boot (VM creation to Ray node joined), per provider. Local: measured 7.6 s (FACTS.md).
# Scaleway GPU: an estimate (create, boot the GPU image, cloud-init, ray start); override with
# --node-boot-s once the lifecycle history of your own cluster says better.
DEFAULT_NODE_BOOT_S = {"local": 8.0, "scaleway": 120.0}
FALLBACK_NODE_BOOT_S = 120.0
DEFAULT_MODEL_LOAD_S = 60.0
FALLBACK_IDLE_TIMEOUT_S = 120.0
# How long after the last arrival the simulation may run to finish queued work (guards a
# policy that never serves: those requests end as unserved rather than looping forever).
MAX_DRAIN_S = 86_400.0


class SimulationError(AutoscalerError, ValueError):
    """The simulation cannot run as asked (unknown instance type, unmappable placement...)."""


# ---------------------------------------------------------------- catalog


@dataclass(frozen=True)
class CatalogType:
    """One instance type of the catalog with the provider that sells it: a view over
    :mod:`core.catalog` (where the seed is parsed, once), with the provider's billing rule."""

    seller: CatalogProvider
    spec: CatalogInstanceType

    @property
    def provider(self) -> str:
        return self.seller.code

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def gpu_count(self) -> int:
        return self.spec.gpu_count

    @property
    def gpu_model(self) -> str | None:
        return self.spec.gpu_model

    @property
    def gpu_vram_gb(self) -> int:
        return self.spec.gpu_vram_gb

    @property
    def hourly_eur(self) -> Decimal:
        return self.spec.hourly_eur

    @property
    def ray_resources(self) -> Mapping[str, float]:
        return self.spec.ray_resources or {}

    @property
    def billing_rule(self) -> BillingRule:
        return BillingRule(self.seller.billing_granularity_seconds,
                           self.seller.billing_minimum_seconds)


def catalog_types(catalog: Catalog) -> list[CatalogType]:
    """Every instance type of the catalog, in seed order."""
    return [CatalogType(p, t) for p, t in catalog.instance_types()]


def find_type(catalog: Catalog, name: str) -> CatalogType:
    """A type by ``name`` or ``provider/name``; raises SimulationError naming the choices."""
    prov, _, bare = name.rpartition("/")
    types = catalog_types(catalog)
    hits = [t for t in types if t.name == bare and (not prov or t.provider == prov)]
    if len(hits) == 1:
        return hits[0]
    known = ", ".join(sorted(f"{t.provider}/{t.name}" for t in types))
    if not hits:
        raise SimulationError(f"unknown instance type {name!r}; the catalog has: {known}")
    raise SimulationError(f"instance type {name!r} is ambiguous; use provider/name")


def load_catalog(path: Path | str | None = None) -> Catalog:
    """The catalog seed (``configs/catalog/seed.yaml`` by default) through
    :func:`core.catalog.load_catalog`; a seed that cannot be used is a SimulationError."""
    try:
        catalog = _load_catalog(path)
    except CatalogError as exc:
        raise SimulationError(str(exc)) from exc
    if not catalog.instance_types():
        raise SimulationError(f"{catalog.source}: no instance types in the catalog")
    return catalog


def choose_instance_type(catalog: Catalog, *, accelerator_type: str | None,
                         accelerator_candidates: Sequence[str] = (),
                         resources: dict[str, float] | None = None,
                         gpus_per_replica: int = 1,
                         model_memory_gb: float | None = None,
                         override: str | None = None) -> CatalogType:
    """The catalog instance type one replica of a deployment runs on.

    - ``override`` (``--instance-type``) wins.
    - Custom ``resources`` (e.g. ``local_gpu_slot``, the local cloud): the cheapest type whose
      ``ray_resources`` offer all of them (and the accelerator, when one is named).
    - A GPU placement: among ``accelerator_type`` and ``accelerator_candidates``, the cheapest
      cloud type (no custom resources) with enough GPUs for one replica
      (``tensor_parallel_size``) whose GPU memory holds ``model_memory_gb``.
    - A CPU placement without custom resources has no catalog counterpart: pass an override.
    """
    if override:
        return find_type(catalog, override)
    resources = resources or {}
    if resources:
        fits = [t for t in catalog_types(catalog)
                if all(t.ray_resources.get(k, 0) >= v for k, v in resources.items())
                and (accelerator_type is None or t.gpu_model == accelerator_type)]
        if not fits:
            raise SimulationError(f"no catalog instance type offers the resources {resources}"
                                  + (f" with a {accelerator_type} GPU" if accelerator_type
                                     else "") + "; pass --instance-type")
        return min(fits, key=lambda t: (t.hourly_eur, t.provider, t.name))
    if accelerator_type is None:
        raise SimulationError("a CPU placement without custom resources has no catalog "
                              "instance type; pass --instance-type")
    wanted = [accelerator_type, *accelerator_candidates]
    fits = [t for t in catalog_types(catalog)
            if t.gpu_model in wanted and not t.ray_resources and t.gpu_count >= gpus_per_replica
            and (model_memory_gb is None or t.gpu_vram_gb >= model_memory_gb)]
    if not fits:
        raise SimulationError(f"no catalog instance type has {gpus_per_replica} x "
                              f"{'/'.join(wanted)}"
                              + (f" with {model_memory_gb:g} GB" if model_memory_gb else "")
                              + "; pass --instance-type")
    return min(fits, key=lambda t: (t.hourly_eur, t.gpu_count, t.provider, t.name))


def default_idle_timeout_s(provider: str) -> float:
    """The node idle timeout of the provider's shipped cluster YAML (``idle_timeout_minutes``)."""
    path = configs.path("clusters", f"{provider}.yaml")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}  # noqa: S506
        return float(data["autoscaler"]["idle_timeout_minutes"]) * 60.0
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return FALLBACK_IDLE_TIMEOUT_S


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ServiceModel:
    """Per-sequence service time of a replica (tokens per second)."""

    prefill_tokens_per_s: float = 2000.0
    decode_tokens_per_s: float = 25.0

    def service_s(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens / self.prefill_tokens_per_s
                + completion_tokens / self.decode_tokens_per_s)


@dataclass(frozen=True)
class SimDeployment:
    """What the simulator needs of one deployment (see :func:`from_deployment_spec`)."""

    name: str
    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float
    max_ongoing_requests: int
    max_queued_requests: int
    upscale_delay_s: float
    downscale_delay_s: float
    downscale_to_zero_delay_s: float | None = None
    initial_replicas: int | None = None
    replica_start_s: float | None = None  # YAML: expected node boot + model load
    policy: PolicyName = "inventiv"
    accelerator_type: str | None = None
    accelerator_candidates: tuple[str, ...] = ()
    resources: dict[str, float] = field(default_factory=dict)
    gpus_per_replica: int = 1
    model_memory_gb: float | None = None


def from_deployment_spec(dep: DeploymentSpec) -> SimDeployment:
    """A :class:`SimDeployment` from one parsed deployment of the YAML (core.spec)."""
    a, pl = dep.autoscaling, dep.placement
    return SimDeployment(
        name=dep.name, min_replicas=a.min_replicas, max_replicas=a.max_replicas,
        target_ongoing_requests=a.target_ongoing_requests,
        max_ongoing_requests=a.max_ongoing_requests, max_queued_requests=a.max_queued_requests,
        upscale_delay_s=a.upscale_delay_s, downscale_delay_s=a.downscale_delay_s,
        downscale_to_zero_delay_s=a.downscale_to_zero_delay_s,
        initial_replicas=a.initial_replicas, replica_start_s=a.replica_start_s, policy=a.policy,
        accelerator_type=pl.accelerator_type,
        accelerator_candidates=tuple(pl.accelerator_candidates),
        resources=dict(pl.resources),
        gpus_per_replica=dep.engine.tensor_parallel_size if pl.accelerator_type else 1,
        model_memory_gb=pl.model_memory_gb)


@dataclass(frozen=True)
class SimOptions:
    """Knobs of the modelled world; None means "the documented default"."""

    tick_s: float = DEFAULT_TICK_S
    node_boot_s: float | None = None  # None: DEFAULT_NODE_BOOT_S of the provider
    model_load_s: float | None = None  # None: replica_start_s - node boot, else 60 s
    idle_timeout_s: float | None = None  # None: the provider's cluster YAML
    service: ServiceModel = field(default_factory=ServiceModel)
    scale_up_cap: int | None = None  # the budget guard's cap (inventiv policy only)
    until_s: float | None = None  # window end; None: last arrival or completion
    instance_type: str | None = None  # catalog override


# ---------------------------------------------------------------- outputs


@dataclass(frozen=True)
class NodeInterval:
    """One simulated VM: created, ready (Ray node joined), deleted; microseconds from t=0."""

    node_id: int
    provider: str
    instance_type: str
    created_us: int
    ready_us: int | None
    deleted_us: int


@dataclass(frozen=True)
class SimResult:
    """Figures of one simulated run (see :meth:`to_json` for the published shape)."""

    policy: PolicyName
    deployment: str
    instance_type: str
    provider: str
    hourly_eur: Decimal
    requests: int
    served: int
    rejected: int
    unserved: int
    cost_units: int
    cost_eur: Decimal
    gpu_hours: float
    idle_share: float
    p50_wait_s: float | None
    p95_wait_s: float | None
    p99_wait_s: float | None
    mean_wait_s: float | None
    max_wait_s: float | None
    replica_seconds: float
    max_replicas: int
    max_nodes: int
    window_s: float
    node_boot_s: float
    model_load_s: float
    idle_timeout_s: float
    tick_s: float
    decisions: dict[str, int]
    nodes: tuple[NodeInterval, ...]

    def to_json(self) -> dict[str, Any]:
        """The JSON object printed by ``inventiv simulate --json`` (money as a string)."""
        return {
            "policy": self.policy, "deployment": self.deployment,
            "instance_type": self.instance_type, "provider": self.provider,
            "hourly_eur": str(self.hourly_eur),
            "cost_eur": str(self.cost_eur), "gpu_hours": round(self.gpu_hours, 6),
            "idle_share": round(self.idle_share, 6),
            "p50_wait_s": _r(self.p50_wait_s), "p95_wait_s": _r(self.p95_wait_s),
            "p99_wait_s": _r(self.p99_wait_s), "mean_wait_s": _r(self.mean_wait_s),
            "max_wait_s": _r(self.max_wait_s),
            "requests": self.requests, "served": self.served, "rejected": self.rejected,
            "unserved": self.unserved,
            "replica_seconds": round(self.replica_seconds, 3),
            "max_replicas": self.max_replicas, "max_nodes": self.max_nodes,
            "nodes_created": len(self.nodes), "window_s": round(self.window_s, 3),
            "model": {"tick_s": self.tick_s, "node_boot_s": self.node_boot_s,
                      "model_load_s": self.model_load_s, "idle_timeout_s": self.idle_timeout_s},
            "decisions": dict(sorted(self.decisions.items())),
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    k = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[k - 1]


# ---------------------------------------------------------------- the policies, as Serve runs them


class _SimClock:
    """Stands in for the ``time`` module inside Ray's policy module during one call."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now


_RAY_CLOCK_LOCK = threading.Lock()
_AGGREGATE: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": lambda v: sum(v) / len(v), "max": max, "min": min}


class ServePolicyDriver:
    """One deployment's replica policy exactly as Serve's controller runs it (Ray 2.60).

    The Serve ``autoscaling_config`` comes from :func:`autoscaler.serve_policy.
    serve_autoscaling_config` (what the builder deploys): for ``ray``, Serve's default policy
    with the YAML's delays; for ``inventiv``, :class:`autoscaler.serve_policy.InventivPolicy`
    (which calls :func:`autoscaler.policy.decide`) with Serve's delays at 0 and ours in
    ``policy_kwargs``. The callable is resolved and wrapped by Serve's own functions
    (``_resolve_policy_callable``, ``_apply_autoscaling_config``: cold-start fast path, scaling
    factors, delays), the answer is rounded up and bounded like ``apply_bounds``, and each call
    gets a real ``AutoscalingContext``.

    The load signal follows the config too: ongoing + queued requests recorded every
    ``min(0.2 x look_back_period_s, metrics_interval_s)``, pushed every ``metrics_interval_s``
    (at once when a request waits at zero replicas: Serve's cold-start push), reduced over
    ``look_back_period_s`` with ``aggregation_function``.
    """

    def __init__(self, dep: SimDeployment, policy: PolicyName, *, replica_start_s: float,
                 scale_up_cap: int | None, replica_restart_s: float | None = None) -> None:
        from ray.serve import autoscaling_policy as ap
        from ray.serve.config import AutoscalingConfig, AutoscalingContext

        from autoscaler.serve_policy import AutoscalingFields, serve_autoscaling_config
        from core.ray_private import DeploymentID, resolve_policy_callable

        # SimDeployment has every field the protocol reads (frozen, hence "read-only" to mypy).
        fields = cast("AutoscalingFields", replace(dep, policy=policy))
        self.serve_config = serve_autoscaling_config(
            fields, replica_start_s=replica_start_s,
            scale_up_cap=scale_up_cap, replica_restart_s=replica_restart_s)
        self.config = AutoscalingConfig(**self.serve_config)
        self._module = ap
        self._context_cls = AutoscalingContext
        self._policy = ap._apply_autoscaling_config(resolve_policy_callable(self.config.policy))
        self._id = DeploymentID(name=dep.name, app_name="simulated")
        self._state: dict[str, Any] = {}
        self._clock = _SimClock()
        self._last_up: float | None = None
        self._last_down: float | None = None
        self.look_back_s = float(self.config.look_back_period_s)
        self.push_s = float(self.config.metrics_interval_s)
        self.record_s = min(0.2 * self.look_back_s, self.push_s)
        agg = self.config.aggregation_function
        self._aggregate = _AGGREGATE[str(getattr(agg, "value", agg)).lower()]
        self._samples: deque[tuple[float, float]] = deque()  # recorded at the replicas/handles
        self._next_record = 0.0
        self._next_push = self.push_s
        self._pushed_until = -math.inf
        self._seen = 0.0
        self.is_inventiv = policy == "inventiv"

    def observe(self, now: float, total: float, running: int, queued: int) -> None:
        """Record/push the load as Serve's replicas and handles would at ``now``."""
        if now + 1e-9 >= self._next_record:
            self._samples.append((now, total))
            self._next_record = now + self.record_s
        cold_push = running == 0 and queued > 0
        if cold_push and (not self._samples or self._samples[-1][0] != now):
            self._samples.append((now, total))
        if cold_push or now + 1e-9 >= self._next_push:
            self._pushed_until = now
            if not cold_push:
                self._next_push = now + self.push_s
        while self._samples and self._samples[0][0] <= self._pushed_until - self.look_back_s:
            self._samples.popleft()
        visible = [v for t, v in self._samples if t <= self._pushed_until]
        self._seen = self._aggregate(visible) if visible else 0.0

    def __call__(self, now: float, running: int, target: int) -> tuple[int, str]:
        """One control tick: the replica count Serve would target now, and why."""
        ctx = self._context_cls(
            deployment_id=self._id, deployment_name=self._id.name, app_name=self._id.app_name,
            current_num_replicas=running, target_num_replicas=target, running_replicas=[],
            total_num_requests=self._seen, total_queued_requests=None, aggregated_metrics={},
            raw_metrics={}, capacity_adjusted_min_replicas=self.config.min_replicas,
            capacity_adjusted_max_replicas=self.config.max_replicas,
            policy_state=dict(self._state), last_scale_up_time=self._last_up,
            last_scale_down_time=self._last_down, current_time=now, config=self.config)
        cold_start = running == 0 and self._seen > 0  # Serve answers without the policy
        self._clock.now = now
        with _RAY_CLOCK_LOCK:
            # Ray's delay logic reads time.time(); lend it the simulated clock for this call.
            real_time = self._module.time
            self._module.time = self._clock  # type: ignore[assignment]
            try:
                decision, self._state = self._policy(ctx)
            finally:
                self._module.time = real_time
        n = max(self.config.min_replicas, min(self.config.max_replicas, math.ceil(decision)))
        if n > target:
            self._last_up = now
        elif n < target:
            self._last_down = now
        if cold_start:
            reason = "serve_cold_start"
        elif self.is_inventiv:
            reason = str(self._state.get("reason", "steady"))
        else:
            reason = "scale_up" if n > target else "scale_down" if n < target else "steady"
        return n, reason


# ---------------------------------------------------------------- the event loop

_COMPLETE, _NODE_READY, _REPLICA_READY, _TICK, _RELEASE = range(5)
_STARTING, _RUNNING, _STOPPING = "starting", "running", "stopping"


class _Node:
    __slots__ = ("id", "created", "ready_at", "deleted", "replica", "idle_token", "busy_since",
                 "busy_s")

    def __init__(self, node_id: int, created: float, ready_at: float) -> None:
        self.id = node_id
        self.created = created
        self.ready_at = ready_at
        self.deleted: float | None = None
        self.replica: _Replica | None = None
        self.idle_token = 0
        self.busy_since: float | None = None
        self.busy_s = 0.0


class _Replica:
    __slots__ = ("id", "node", "state", "ongoing", "ready_at", "serving_since")

    def __init__(self, replica_id: int, node: _Node) -> None:
        self.id = replica_id
        self.node = node
        self.state = _STARTING
        self.ongoing = 0
        self.ready_at: float | None = None
        self.serving_since: float | None = None


def _us(t: float) -> int:
    return round(t * US_PER_SECOND)


class Simulation:
    """One replay; :func:`simulate` is the usual entry point."""

    # Run state, (re)initialised by run().
    _target: int
    _max_replicas: int
    _max_nodes: int
    _last_completion: float

    def __init__(self, trace: Sequence[TraceRequest], dep: SimDeployment, catalog: Catalog,
                 options: SimOptions, policy: PolicyName) -> None:
        if options.tick_s <= 0:
            raise SimulationError("tick_s must be positive")
        self.trace = trace
        self.dep = dep
        self.opts = options
        self.policy_name: PolicyName = policy
        self.itype = choose_instance_type(
            catalog, accelerator_type=dep.accelerator_type,
            accelerator_candidates=dep.accelerator_candidates, resources=dep.resources,
            gpus_per_replica=dep.gpus_per_replica, model_memory_gb=dep.model_memory_gb,
            override=options.instance_type)
        self.rule = self.itype.billing_rule
        self.boot_s = (options.node_boot_s if options.node_boot_s is not None
                       else DEFAULT_NODE_BOOT_S.get(self.itype.provider, FALLBACK_NODE_BOOT_S))
        if options.model_load_s is not None:
            self.load_s = options.model_load_s
        elif dep.replica_start_s is not None:
            self.load_s = max(0.0, dep.replica_start_s - self.boot_s)
        else:
            self.load_s = DEFAULT_MODEL_LOAD_S
        self.idle_s = (options.idle_timeout_s if options.idle_timeout_s is not None
                       else default_idle_timeout_s(self.itype.provider))
        if policy not in POLICIES:
            raise SimulationError(f"unknown policy {policy!r} (inventiv or ray)")
        # What the control API would learn from the lifecycle history: boot + load.
        self.replica_start_s = self.boot_s + self.load_s
        # A released replica's node stays up for the idle timeout: getting the replica back
        # within it costs the model load alone.
        restart = self.load_s if self.idle_s > 0 else None
        self.policy = ServePolicyDriver(dep, policy, replica_start_s=self.replica_start_s,
                                        scale_up_cap=options.scale_up_cap,
                                        replica_restart_s=restart)

    # -- bookkeeping helpers

    def _push(self, t: float, kind: int, obj: object) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, kind, self._seq, obj))

    def _set_busy(self, node: _Node, now: float, busy: bool) -> None:
        if busy and node.busy_since is None:
            node.busy_since = now
        elif not busy and node.busy_since is not None:
            node.busy_s += now - node.busy_since
            node.busy_since = None

    def _new_node(self, now: float) -> _Node:
        self._node_seq += 1
        node = _Node(self._node_seq, now, now + self.boot_s)
        self._nodes.append(node)
        self._push(node.ready_at, _NODE_READY, node)
        live = sum(1 for n in self._nodes if n.deleted is None)
        self._max_nodes = max(self._max_nodes, live)
        return node

    def _free_node(self, node: _Node, now: float) -> None:
        node.replica = None
        node.idle_token += 1
        # The autoscaler's idle timer runs from when the node is up and has nothing to do.
        self._push(max(now, node.ready_at) + self.idle_s, _RELEASE, (node, node.idle_token))

    def _add_replica(self, now: float) -> None:
        # Reuse a live node without replica (ready ones first: no boot to wait for).
        spare = [n for n in self._nodes if n.deleted is None and n.replica is None]
        node = min(spare, key=lambda n: (n.ready_at, n.id)) if spare else self._new_node(now)
        node.idle_token += 1  # cancels a pending release
        self._replica_seq += 1
        rep = _Replica(self._replica_seq, node)
        node.replica = rep
        self._replicas.append(rep)
        if node.ready_at <= now:
            rep.ready_at = now + self.load_s
            self._push(rep.ready_at, _REPLICA_READY, rep)
        # else: the node's READY event starts the model load.

    def _remove_replicas(self, count: int, now: float) -> None:
        starting = sorted((r for r in self._replicas if r.state == _STARTING),
                          key=lambda r: -r.id)
        for rep in starting[:count]:
            rep.state = _STOPPING
            self._replicas.remove(rep)
            self._free_node(rep.node, now)
            count -= 1
        if count <= 0:
            return
        running = sorted((r for r in self._replicas if r.state == _RUNNING),
                         key=lambda r: (r.ongoing, -r.id))
        for rep in running[:count]:
            rep.state = _STOPPING
            self._replica_seconds += now - (rep.serving_since or now)
            if rep.ongoing == 0:
                self._retire(rep, now)

    def _retire(self, rep: _Replica, now: float) -> None:
        self._replicas.remove(rep)
        self._free_node(rep.node, now)

    def _dispatch(self, now: float) -> None:
        """Start queued requests on serving replicas with a free slot (least loaded first)."""
        if not self._queue:
            return
        cap = self.dep.max_ongoing_requests
        open_reps = [r for r in self._replicas if r.state == _RUNNING and r.ongoing < cap]
        while self._queue and open_reps:
            rep = min(open_reps, key=lambda r: (r.ongoing, r.id))
            idx = self._queue.popleft()
            req = self.trace[idx]
            self._waits.append(now - req.arrival_s)
            if rep.ongoing == 0:
                self._set_busy(rep.node, now, True)
            rep.ongoing += 1
            self._ongoing += 1
            done = now + self.opts.service.service_s(req.prompt_tokens, req.completion_tokens)
            self._last_completion = max(self._last_completion, done)
            self._push(done, _COMPLETE, rep)
            if rep.ongoing >= cap:
                open_reps.remove(rep)

    def _tick(self, now: float) -> None:
        running = sum(1 for r in self._replicas if r.state == _RUNNING)
        target = sum(1 for r in self._replicas if r.state != _STOPPING)
        self.policy.observe(now, self._ongoing + len(self._queue), running, len(self._queue))
        wanted, reason = self.policy(now, running, self._target)
        self._decisions[reason] = self._decisions.get(reason, 0) + 1
        self._target = wanted
        if wanted > target:
            for _ in range(wanted - target):
                self._add_replica(now)
        elif wanted < target:
            self._remove_replicas(target - wanted, now)
        self._max_replicas = max(self._max_replicas,
                                 sum(1 for r in self._replicas if r.state != _STOPPING))

    # -- the loop

    def run(self) -> SimResult:
        self._events: list[tuple[float, int, int, Any]] = []
        self._seq = self._node_seq = self._replica_seq = 0
        self._nodes: list[_Node] = []
        self._replicas: list[_Replica] = []
        self._queue: deque[int] = deque()
        self._waits: list[float] = []
        self._ongoing = 0
        self._rejected = 0
        self._decisions: dict[str, int] = {}
        self._replica_seconds = 0.0
        self._max_replicas = 0
        self._max_nodes = 0
        self._last_completion = 0.0
        trace, n = self.trace, len(self.trace)
        last_arrival = trace[-1].arrival_s if n else 0.0
        hard_stop = (self.opts.until_s if self.opts.until_s is not None
                     else last_arrival + MAX_DRAIN_S)
        initial = self.dep.initial_replicas
        self._target = initial if initial is not None else self.dep.min_replicas
        for _ in range(self._target):
            self._add_replica(0.0)
        self._max_replicas = self._target
        self._push(0.0, _TICK, None)
        i = 0
        now = 0.0
        while True:
            t_arr = trace[i].arrival_s if i < n else math.inf
            t_ev = self._events[0][0] if self._events else math.inf
            if i >= n and not self._queue and self._ongoing == 0 and (
                    self.opts.until_s is None or t_ev > self.opts.until_s):
                break  # all work done (and the asked window reached)
            if min(t_arr, t_ev) > hard_stop:
                break
            # Completions and readiness before an arrival at the same instant; ticks after.
            if t_ev < t_arr or (t_ev == t_arr and self._events[0][1] < _TICK):
                now, kind, _, obj = heapq.heappop(self._events)
                if kind == _COMPLETE:
                    rep: _Replica = obj
                    rep.ongoing -= 1
                    self._ongoing -= 1
                    if rep.ongoing == 0:
                        self._set_busy(rep.node, now, False)
                        if rep.state == _STOPPING:
                            self._retire(rep, now)
                    self._dispatch(now)
                elif kind == _NODE_READY:
                    node: _Node = obj
                    if node.deleted is None and node.replica is not None:
                        node.replica.ready_at = now + self.load_s
                        self._push(node.replica.ready_at, _REPLICA_READY, node.replica)
                elif kind == _REPLICA_READY:
                    rep = obj
                    if rep.state == _STARTING and rep.node.replica is rep:
                        rep.state = _RUNNING
                        rep.serving_since = now
                        self._dispatch(now)
                elif kind == _TICK:
                    self._tick(now)
                    self._push(now + self.opts.tick_s, _TICK, None)
                else:  # _RELEASE
                    node, token = obj
                    if node.deleted is None and node.replica is None and token == node.idle_token:
                        node.deleted = now
            else:
                now = t_arr
                if len(self._queue) >= self.dep.max_queued_requests:
                    self._rejected += 1
                else:
                    self._queue.append(i)
                    self._dispatch(now)
                i += 1
        end = self.opts.until_s if self.opts.until_s is not None else max(
            last_arrival, self._last_completion if self._waits else 0.0)
        return self._result(end, unserved=len(self._queue) + (n - i))

    def _result(self, end: float, unserved: int) -> SimResult:
        prices = PriceSchedule([(0, self.itype.hourly_eur)])
        intervals: list[NodeInterval] = []
        units = 0
        node_s = busy_s = 0.0
        for node in self._nodes:
            if node.created > end:
                continue
            deleted = node.deleted if node.deleted is not None and node.deleted <= end else end
            if node.busy_since is not None:
                node.busy_s += max(0.0, min(deleted, end) - node.busy_since)
                node.busy_since = None
            c_us, d_us = _us(node.created), _us(deleted)
            ready = _us(node.ready_at) if node.ready_at <= deleted else None
            intervals.append(NodeInterval(node.id, self.itype.provider, self.itype.name,
                                          c_us, ready, d_us))
            units += interval_cost_units(c_us, d_us, self.rule, prices,
                                         (0, 2**62), d_us)
            node_s += (d_us - c_us) / US_PER_SECOND
            busy_s += node.busy_s
        for rep in self._replicas:
            if rep.state == _RUNNING and rep.serving_since is not None:
                self._replica_seconds += max(0.0, end - rep.serving_since)
        waits = sorted(self._waits)
        gpus = max(1, self.itype.gpu_count)
        return SimResult(
            policy=self.policy_name, deployment=self.dep.name, instance_type=self.itype.name,
            provider=self.itype.provider, hourly_eur=self.itype.hourly_eur,
            requests=len(self.trace), served=len(waits), rejected=self._rejected,
            unserved=unserved, cost_units=units, cost_eur=units_to_eur(units),
            gpu_hours=node_s * gpus / 3600.0,
            idle_share=(1.0 - busy_s / node_s) if node_s > 0 else 0.0,
            p50_wait_s=percentile(waits, 50), p95_wait_s=percentile(waits, 95),
            p99_wait_s=percentile(waits, 99),
            mean_wait_s=sum(waits) / len(waits) if waits else None,
            max_wait_s=waits[-1] if waits else None, replica_seconds=self._replica_seconds,
            max_replicas=self._max_replicas, max_nodes=self._max_nodes, window_s=end,
            node_boot_s=self.boot_s, model_load_s=self.load_s, idle_timeout_s=self.idle_s,
            tick_s=self.opts.tick_s, decisions=self._decisions, nodes=tuple(intervals))


def simulate(trace: Sequence[TraceRequest], dep: SimDeployment, *,
             policy: PolicyName | None = None, options: SimOptions | None = None,
             catalog: Catalog | None = None) -> SimResult:
    """Replay ``trace`` through ``policy`` (default: the deployment's own) and measure it."""
    import ray.serve.autoscaling_policy  # noqa: F401 - Ray sets its loggers' levels on import

    serve_log = logging.getLogger("ray.serve")
    level = serve_log.level
    # The policies log every change of replica count for the controller log; thousands of
    # simulated changes are not news (the result counts them under `decisions`).
    serve_log.setLevel(logging.WARNING)
    try:
        sim = Simulation(trace, dep, catalog or load_catalog(), options or SimOptions(),
                         policy or dep.policy)
        return sim.run()
    finally:
        serve_log.setLevel(level)

