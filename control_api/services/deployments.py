"""Deployments: validated specs stored as JSON, applied declaratively to Ray Serve.

This module reads and writes the ``deployments`` rows and orchestrates applying them: it gathers
what the Serve config is rendered from (the stored specs, Serve's state, the budget guard's caps,
the replica start estimates learned from the lifecycle history) and hands it to the data plane's
renderer (``DataPlane.render_serve_config``, i.e. :mod:`serve_apps.serve_config`), then PUTs
the result through :class:`~control_api.serve_client.ServeClient`.

Statuses: ``pending`` (stored, not applied yet; ``status_message`` says why, e.g. the dashboard
was unreachable, or no renderer is wired), ``applied`` (Serve accepted the config), ``failed``
(Serve refused it or the token was wrong; message), ``deleting`` (soft-deleted, still to be
removed from Serve), ``deleted`` (removed from Serve). The sync job then copies Serve's
application status: ``running`` once the app is RUNNING, ``unhealthy`` (with Serve's message)
when it failed to deploy or became unhealthy.

Visibility: platform admins see every deployment; other users see the deployments whose
``allowed_orgs`` is null (every org) or names one of their orgs (by name or id).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from autoscaler.startup import StartupEstimate, estimate_replica_start
from control_api.deps import Principal
from control_api.errors import Conflict, NotFound
from control_api.ports import DataPlane, RenderServeConfig
from control_api.serve_client import (
    LIVE_REPLICA_STATES,
    ServeClient,
    ServeError,
    ServeTarget,
    ServeUnreachable,
    app_status,
    live_replica_count,
    runs_config,
)
from control_api.services import model_config, weights
from core.db import utcnow
from core.models import (
    ActionLog,
    Deployment,
    Instance,
    InstanceState,
    InstanceStateHistory,
    InstanceType,
    Model,
    Org,
)
from core.serve_names import serve_application, serve_deployment_name
from core.spec import DeploymentFile, DeploymentSpec
from finops.attribution_db import ObservedReplica, record_placements
from finops.budgets import CAP_ENDED, CAP_STARTED, ScaleCap, current_scale_caps, scale_up_blocks

COMPONENT = "control_api"
# Why writes stay pending when the control API was built without the data plane.
NO_RENDERER = ("no Serve config renderer: this control API runs without the data plane "
               "(start it with `inventiv api serve` or `uvicorn --factory "
               "cli.compose:app_factory`)")


# ---------------------------------------------------------------- reads


def _visible(principal: Principal, session: Session, dep: Deployment) -> bool:
    if principal.is_platform_admin:
        return True
    allowed = dep.spec.get("allowed_orgs")
    if allowed is None:
        return True
    mine = _org_refs(session, principal)
    return any(ref in mine for ref in allowed)


def _org_refs(session: Session, principal: Principal) -> set[str]:
    ids = list(principal.roles)
    if not ids:
        return set()
    names = session.scalars(select(Org.name).where(Org.id.in_(ids)))
    return {str(i) for i in ids} | set(names)


def list_deployments(session: Session, principal: Principal, *,
                     include_deleted: bool = False) -> list[Deployment]:
    """Deployments visible to ``principal`` by name; deleted ones only while being removed
    (``deleting``) unless ``include_deleted``."""
    stmt = select(Deployment).order_by(Deployment.name)
    if not include_deleted:
        stmt = stmt.where(or_(Deployment.deleted_at.is_(None), Deployment.status == "deleting"))
    return [d for d in session.scalars(stmt) if _visible(principal, session, d)]


def get_deployment(session: Session, principal: Principal, ref: str) -> Deployment:
    """A deployment by name or id; 404 when unknown or not visible."""
    dep: Deployment | None
    try:
        dep = session.get(Deployment, uuid.UUID(ref))
    except ValueError:
        dep = session.scalar(select(Deployment).where(Deployment.name == ref))
    if dep is None or not _visible(principal, session, dep):
        raise NotFound("deployment not found")
    return dep


# ---------------------------------------------------------------- writes


@dataclass(frozen=True)
class UpsertResult:
    deployment: Deployment
    change: str  # created | updated | unchanged | retried (its failed weights are retried)


def upsert(session: Session, principal: Principal, spec: DeploymentFile,
           now: datetime | None = None) -> list[UpsertResult]:
    """Create or update each deployment of ``spec`` by name; ``version`` grows on a change (a
    soft-deleted one comes back as a new version)."""
    now = now or utcnow()
    results = []
    for item in spec.deployments:
        doc = item.model_dump(mode="json")
        dep = session.scalar(select(Deployment).where(Deployment.name == item.name)
                             .with_for_update())
        if dep is None:
            dep = Deployment(name=item.name, spec=doc, version=1, status="pending",
                             status_message="not applied yet", created_at=now, updated_at=now)
            # A concurrent create of the same name loses on the unique constraint: 409, not 500.
            try:
                with session.begin_nested():
                    session.add(dep)
                    session.flush()
            except IntegrityError:
                raise Conflict(f"deployment {item.name!r} is being created concurrently; retry",
                               code="concurrent_create") from None
            change = "created"
        elif dep.spec == doc and dep.deleted_at is None:
            if dep.model_id is None:  # stored before models were linked
                dep.model_id = _model_row(session, item).id
            if not weights.clear(session, dep.id):
                results.append(UpsertResult(dep, "unchanged"))
                continue
            # Its weights had failed (kept out of Serve): applying it again retries.
            dep.status, dep.status_message, dep.updated_at = "pending", "retrying", now
            change = "retried"
        else:
            weights.clear(session, dep.id)
            dep.spec = doc
            dep.version += 1
            dep.deleted_at = None
            dep.status = "pending"
            dep.status_message = "not applied yet"
            dep.updated_at = now
            change = "updated"
        dep.model_id = _model_row(session, item).id
        session.flush()
        session.add(ActionLog(type=f"deployment.{change}", component=COMPONENT, status="success",
                              user_id=principal.user_id, created_at=now,
                              details={"deployment_id": str(dep.id), "name": dep.name,
                                       "version": dep.version}))
        results.append(UpsertResult(dep, change))
    session.flush()
    return results


def _model_row(session: Session, item: DeploymentSpec) -> Model:
    """The ``models`` row of the served model name (created, or updated to this spec)."""
    model = session.scalar(select(Model).where(Model.name == item.model.name))
    if model is None:
        model = Model(name=item.model.name, source=item.model.source, task=item.model.task,
                      max_model_len=item.engine.max_model_len)
        try:
            with session.begin_nested():
                session.add(model)
                session.flush()
        except IntegrityError:
            # Created concurrently by another write of the same model: use that row.
            model = session.scalar(select(Model).where(Model.name == item.model.name))
            if model is None:
                raise Conflict(f"model {item.model.name!r} is being created concurrently; "
                               "retry", code="concurrent_create") from None
    else:
        model.source, model.task = item.model.source, item.model.task
        model.max_model_len = item.engine.max_model_len
    return model


def soft_delete(session: Session, principal: Principal, ref: str,
                now: datetime | None = None) -> Deployment:
    """Mark a deployment deleted (``deleting`` until Serve no longer runs it)."""
    now = now or utcnow()
    dep = get_deployment(session, principal, ref)
    if dep.deleted_at is not None:
        raise NotFound("deployment not found")
    dep.deleted_at = now
    dep.updated_at = now
    dep.status = "deleting"
    dep.status_message = "not removed from Serve yet"
    session.add(ActionLog(type="deployment.deleted", component=COMPONENT, status="success",
                          user_id=principal.user_id, created_at=now,
                          details={"deployment_id": str(dep.id), "name": dep.name,
                                   "version": dep.version}))
    session.flush()
    return dep


# ---------------------------------------------------------------- applying to Serve


def active_deployments(session: Session) -> list[Deployment]:
    return list(session.scalars(select(Deployment).where(Deployment.deleted_at.is_(None))
                                .order_by(Deployment.name)))


# ---------------------------------------------------------------- replica start time


def instance_types_of(session: Session, spec: DeploymentSpec) -> list[str] | None:
    """Instance types a deployment's replicas start nodes of; None: no node type to boot
    (CPU placement without custom resources runs on the nodes that are there).

    GPU: the catalog types whose GPU model is the accelerator type (or a candidate). CPU with
    custom resources (the local cloud's ``local_gpu_slot``): the types whose Ray resources
    offer them all."""
    pl = spec.placement
    if pl.accelerator_type is not None:
        gpus = [pl.accelerator_type, *getattr(pl, "accelerator_candidates", [])]
        return sorted(set(session.scalars(select(InstanceType.name)
                                          .where(InstanceType.gpu_model.in_(gpus)))))
    if not pl.resources:
        return None
    out = set()
    for name, resources in session.execute(select(InstanceType.name,
                                                  InstanceType.ray_resources)):
        if isinstance(resources, dict) and all(
                float(resources.get(k) or 0) >= v for k, v in pl.resources.items()):
            out.add(name)
    return sorted(out)


def boot_durations(session: Session, instance_types: list[str],
                   limit: int = 50) -> list[float]:
    """Seconds from ``requested`` to ``ready`` of the most recent instances of these types
    that became ready (most recent first), from the lifecycle state history."""
    if not instance_types:
        return []
    h = InstanceStateHistory
    recent = (select(Instance.id).where(Instance.instance_type_name.in_(instance_types))
              .order_by(Instance.created_at.desc()).limit(limit * 4).scalar_subquery())
    rows = session.execute(
        select(h.instance_id, h.to_state, func.min(h.at))
        .where(h.instance_id.in_(recent),
               h.to_state.in_((InstanceState.REQUESTED, InstanceState.READY)))
        .group_by(h.instance_id, h.to_state))
    requested: dict[uuid.UUID, datetime] = {}
    ready: dict[uuid.UUID, datetime] = {}
    for instance_id, state, at in rows:
        (ready if InstanceState(state) == InstanceState.READY else requested)[instance_id] = at
    done = sorted((at, (at - requested[i]).total_seconds()) for i, at in ready.items()
                  if i in requested)
    return [d for _, d in reversed(done)][:limit]


def replica_start(session: Session, spec: DeploymentSpec) -> StartupEstimate:
    """The replica start time of a deployment: the YAML's ``replica_start_s`` when set, else
    learned (node boots of its instance types, see :mod:`autoscaler.startup`)."""
    types = instance_types_of(session, spec)
    return estimate_replica_start(
        boot_durations(session, types) if types else [],
        spec_replica_start_s=getattr(spec.autoscaling, "replica_start_s", None),
        model_memory_gb=getattr(spec.placement, "model_memory_gb", None),
        needs_node=types is not None)


# ---------------------------------------------------------------- budget guard


def update_scale_caps(session: Session, details: dict[str, Any] | None, app_name: str,
                      now: datetime) -> dict[uuid.UUID, ScaleCap]:
    """Start or end deployments' scale-up caps from the budget states; returns the caps in
    force. A start records the live replica count Serve reports (``min_replicas`` when Serve
    does not report the deployment); the cap then stays at that count until it ends (re-reading
    it would let a crashed replica's gap lower it for good). Only changes are logged."""
    blocks = scale_up_blocks(session)
    caps = current_scale_caps(session)
    active = active_deployments(session)
    for gone in set(caps) - {d.id for d in active}:
        # Deleted while capped: close the cap so a re-created deployment starts clean.
        ended = caps.pop(gone)
        session.add(ActionLog(
            type=CAP_ENDED, component=COMPONENT, status="info", created_at=now,
            details={"deployment_id": str(gone), "replicas": ended.replicas,
                     "reason": "deployment deleted", "capped_since": ended.since.isoformat()}))
    for dep in active:
        cap, reason = caps.get(dep.id), blocks.get(dep.id)
        if reason is not None and cap is None:
            spec = spec_of(dep)
            count = live_replica_count(details, app_name, serve_deployment_name(spec.model.name))
            replicas = count if count is not None else spec.autoscaling.min_replicas
            caps[dep.id] = ScaleCap(replicas, reason, now)
            session.add(ActionLog(
                type=CAP_STARTED, component=COMPONENT, status="info", created_at=now,
                details={"deployment_id": str(dep.id), "name": dep.name, "replicas": replicas,
                         "reason": reason,
                         "replicas_from": "serve" if count is not None else "min_replicas"}))
        elif reason is None and cap is not None:
            del caps[dep.id]
            session.add(ActionLog(
                type=CAP_ENDED, component=COMPONENT, status="info", created_at=now,
                details={"deployment_id": str(dep.id), "name": dep.name,
                         "replicas": cap.replicas, "reason": cap.reason,
                         "capped_since": cap.since.isoformat()}))
    session.flush()
    return caps


# ---------------------------------------------------------------- the Serve config


def desired_config(session: Session, target: ServeTarget, render: RenderServeConfig,
                   details: dict[str, Any] | None = None,
                   caps: dict[uuid.UUID, ScaleCap] | None = None) -> dict[str, Any]:
    """The full Serve declarative config for the non-deleted deployments, rendered by
    ``render`` (see :mod:`serve_apps.serve_config`) from what is read here: the stored specs,
    the budget guard's caps (``caps``; read from the action log if None) and each deployment's
    replica start estimate. ``details`` (Serve's GET) is passed through: it tells the renderer
    which deployments already run and the ``replica_start_s`` they run with.

    A stored spec that no longer validates raises ``ValidationError`` before anything is read
    or rendered from it."""
    failed = weights.failed_deployment_ids(session)
    # A deployment whose weights failed is left out: Serve starts no replica of it.
    deps = [d for d in active_deployments(session) if d.id not in failed]
    specs = [d.spec for d in deps]
    capped: dict[str, int] = {}
    starts: dict[str, float] = {}
    if deps:
        items = DeploymentFile.model_validate({"version": 1, "deployments": specs}).deployments
        caps = current_scale_caps(session) if caps is None else caps
        capped = {item.name: caps[d.id].replicas
                  for d, item in zip(deps, items, strict=True) if d.id in caps}
        starts = {item.name: replica_start(session, item).seconds for item in items}
    return render(target, specs, details=details, caps=capped, replica_start_s=starts)


@dataclass(frozen=True)
class ApplyResult:
    ok: bool
    status: str  # applied | pending | failed
    message: str | None
    applications: list[str]


def apply_all(session: Session, serve_client: ServeClient | None,
              render: RenderServeConfig | None, now: datetime | None = None, *,
              trigger: str = "write", details: dict[str, Any] | None = None) -> ApplyResult:
    """PUT the desired state to Serve and record the outcome on every deployment.

    Serve's current state (``details``; fetched when not given) shapes the config (see
    :func:`desired_config`). Unreachable dashboard, no Serve configured or no renderer wired
    (``render`` None: the app was built without the data plane): deployments stay ``pending``
    with the reason; wrong token or refused config: ``failed`` with Serve's message. Never
    raises for Serve errors: a write that triggered it still succeeds.
    """
    now = now or utcnow()
    started = time.monotonic()
    ok, status, message = False, "pending", None
    names: list[str] = []
    if serve_client is None:
        message = "Serve is not configured (INVENTIV_RAY_DASHBOARD_URL)"
    elif render is None:
        message = NO_RENDERER
    else:
        try:
            if details is None:
                details = serve_client.get_applications()
            config = desired_config(session, serve_client.target, render, details)
            names = [a["name"] for a in config["applications"]]
            serve_client.put_applications(config)
            ok, status = True, "applied"
        except ValidationError as exc:
            # A stored spec the current schema refuses (schema changed since): nothing is sent.
            status, message = "failed", f"a stored spec no longer validates: {exc}"[:2000]
        except ServeUnreachable as exc:
            message = exc.reason
        except ServeError as exc:
            status, message = "failed", exc.reason
    failed = weights.failed_deployment_ids(session)
    for dep in session.scalars(select(Deployment).where(
            or_(Deployment.deleted_at.is_(None), Deployment.status == "deleting"))):
        if dep.id in failed and dep.deleted_at is None:
            continue  # keeps its "failed" status and the download's error
        if dep.deleted_at is not None:
            if ok:
                dep.status, dep.status_message = "deleted", None
            else:
                dep.status_message = f"{status}: {message}"
        else:
            dep.status = status
            dep.status_message = message
        dep.updated_at = now
    session.add(ActionLog(
        type="deployment.apply", component=COMPONENT,
        status="success" if ok else "failure",
        error_code=None if ok else f"serve_{status}", error_message=message,
        duration_ms=int((time.monotonic() - started) * 1000), created_at=now,
        details={"trigger": trigger, "applications": names,
                 "deployments": [d.name for d in active_deployments(session)]}))
    session.flush()
    return ApplyResult(ok, status, message, names)


def in_sync(session: Session, serve_client: ServeClient, render: RenderServeConfig,
            details: dict[str, Any] | None = None,
            caps: dict[uuid.UUID, ScaleCap] | None = None) -> bool:
    """Whether Serve runs exactly the desired applications with the desired arguments and
    per-deployment autoscaling configs (a budget cap that started or ended makes it False)."""
    if details is None:
        details = serve_client.get_applications()
    return runs_config(details, desired_config(session, serve_client.target, render, details,
                                               caps))


def record_serve_status(session: Session, details: dict[str, Any], app_name: str,
                        now: datetime) -> str | None:
    """Copy Serve's status of our application onto the applied deployments. "unhealthy" is not
    re-applied by the sync loop (the same config would not fix it); a new write or a fix of
    the cluster does."""
    status = app_status(details, app_name)
    if status is None:
        return None
    ours, message = status
    failed = weights.failed_deployment_ids(session)
    for dep in active_deployments(session):
        if dep.id not in failed and dep.status in ("applied", "running", "unhealthy") and (
                dep.status, dep.status_message) != (ours, message):
            dep.status, dep.status_message, dep.updated_at = ours, message, now
    session.flush()
    return ours


# ---------------------------------------------------------------- replica placement (FinOps)

_NOT_ACCELERATORS = {"CPU", "memory", "object_store_memory"}


def _accelerators(resources: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in resources.items()
            if k not in _NOT_ACCELERATORS and not k.startswith(("accelerator_type:", "node:"))
            and isinstance(v, int | float) and v > 0}


def replica_share_ppm(spec: DeploymentSpec | None, node_resources: dict[str, Any] | None,
                      gpu_count: int = 0) -> int:
    """A replica's share of its node's accelerator resources, in ppm (whole node when the node
    offers none of what the replica asks for, or either is unknown)."""
    cap = _accelerators(node_resources or {}) or ({"GPU": float(gpu_count)} if gpu_count else {})
    if spec is None or not cap:
        return 1_000_000
    ask = dict(_accelerators(dict(spec.placement.resources)))
    if spec.placement.accelerator_type is not None:
        ask.setdefault("GPU", 1.0)
    used = sum(min(v, cap[k]) for k, v in ask.items() if k in cap)
    total = sum(cap.values())
    if used <= 0 or total <= 0:
        return 1_000_000
    return max(1, min(1_000_000, round(1_000_000 * used / total)))


def observed_replicas(session: Session, details: dict[str, Any] | None,
                      app_name: str) -> list[ObservedReplica]:
    """The live replicas of our Serve application with their node (Serve's REST status gives
    each replica's ``node_id``; the node provider reported each node's Ray node id with its
    lifecycle, so ``instances.ray_node_id`` maps it to a VM)."""
    app = serve_application(details, app_name)
    deps_status = (app or {}).get("deployments") or {}
    if not isinstance(deps_status, dict) or not deps_status:
        return []
    by_serve_name: dict[str, tuple[Deployment, DeploymentSpec | None]] = {}
    for dep in session.scalars(select(Deployment)):
        try:
            spec: DeploymentSpec | None = spec_of(dep)
        except (ValidationError, KeyError, TypeError, ValueError):
            spec = None
        model = ((dep.spec or {}).get("model") or {}).get("name") if spec is None else \
            spec.model.name
        if model and (dep.deleted_at is None or model not in by_serve_name):
            by_serve_name[serve_deployment_name(model)] = (dep, spec)
    node_ids = {str(r.get("node_id")) for d in deps_status.values() if isinstance(d, dict)
                for r in d.get("replicas") or [] if isinstance(r, dict) and r.get("node_id")}
    nodes: dict[str, tuple[uuid.UUID, dict[str, Any] | None, int]] = {}
    if node_ids:
        for iid, rid, res, gpus in session.execute(
                select(Instance.id, Instance.ray_node_id, InstanceType.ray_resources,
                       InstanceType.gpu_count)
                .outerjoin(InstanceType, (InstanceType.provider_code == Instance.provider_code)
                           & (InstanceType.name == Instance.instance_type_name))
                .where(Instance.ray_node_id.in_(node_ids))
                .order_by(Instance.created_at)):
            nodes[rid] = (iid, res, int(gpus or 0))
    out = []
    for serve_name, dstat in deps_status.items():
        if not isinstance(dstat, dict):
            continue
        dep_spec = by_serve_name.get(serve_name)
        for r in dstat.get("replicas") or []:
            if not isinstance(r, dict) or r.get("state") not in LIVE_REPLICA_STATES \
                    or not r.get("node_id") or not r.get("replica_id"):
                continue
            node = nodes.get(str(r["node_id"]))
            started = r.get("start_time_s")
            out.append(ObservedReplica(
                replica_id=str(r["replica_id"])[:200],
                deployment_id=dep_spec[0].id if dep_spec else None,
                deployment=(dep_spec[0].name if dep_spec else serve_name)[:128],
                ray_node_id=str(r["node_id"])[:128], instance_id=node[0] if node else None,
                share_ppm=replica_share_ppm(dep_spec[1] if dep_spec else None,
                                            node[1] if node else None, node[2] if node else 0),
                started_at=datetime.fromtimestamp(float(started), UTC)
                if isinstance(started, int | float) and started > 0 else None))
    return out


def sync_placements(session: Session, details: dict[str, Any] | None, app_name: str,
                    now: datetime) -> dict[str, int] | dict[str, str]:
    """Record replica placements (in a savepoint: a failure here never undoes the sync)."""
    try:
        with session.begin_nested():
            return record_placements(session, observed_replicas(session, details, app_name),
                                     now)
    except Exception as exc:  # noqa: BLE001 - attribution data must not break the Serve sync
        return {"error": type(exc).__name__}


def serve_sync_job(serve_client: ServeClient | None,
                   plane: DataPlane) -> Callable[[Session, datetime], dict[str, Any]]:
    """A ``PeriodicJobs`` job: start or end budget caps (:func:`update_scale_caps`), then
    re-apply when Serve's applications differ from the desired state (Serve restarted, someone
    deployed by hand, a cap started or ended) or when a deployment is not applied yet
    (``pending``, ``failed``, ``deleting``); otherwise copy Serve's app status (``running``,
    ``unhealthy`` with Serve's message) onto the deployments. The config is rendered by
    ``plane.render_serve_config``; without one (no data plane wired) the job skips, and the
    writes stay ``pending`` with :data:`NO_RENDERER` as their message."""

    def job(session: Session, now: datetime) -> dict[str, Any]:
        if serve_client is None:
            return {"skipped": "Serve not configured"}
        render = plane.render_serve_config
        if render is None:
            return {"skipped": NO_RENDERER}
        failed = weights.failed_deployment_ids(session)
        unsettled = next((i for i in session.scalars(select(Deployment.id).where(
            Deployment.status.in_(("pending", "failed", "deleting"))))
            if i not in failed), None)
        try:
            details = serve_client.get_applications()
        except ServeError as exc:
            return {"error": exc.kind, "message": exc.reason}
        caps = update_scale_caps(session, details, serve_client.target.app_name, now)
        placements = sync_placements(session, details, serve_client.target.app_name, now)
        if in_sync(session, serve_client, render, details, caps) and unsettled is None:
            status = record_serve_status(session, details, serve_client.target.app_name, now)
            return {"in_sync": True, "serve_status": status, "placements": placements}
        result = apply_all(session, serve_client, render, now, trigger="sync", details=details)
        return {"in_sync": False, "applied": result.ok, "status": result.status,
                "placements": placements}

    return job


def spec_of(dep: Deployment) -> DeploymentSpec:
    """The stored spec as the model."""
    return DeploymentSpec.model_validate(dep.spec)


@dataclass(frozen=True)
class DeploymentView:
    """What the API shows of a deployment beyond its row: the cap in force, the start time."""

    deployment: Deployment
    scale_cap: ScaleCap | None
    replica_start: StartupEstimate | None
    weights: list[dict[str, Any]] | None = None
    source: dict[str, Any] | None = None  # the pin and fit (model_config.sources)


def views(session: Session, deps: list[Deployment]) -> list[DeploymentView]:
    """The deployments with their budget cap (None: not capped) and replica start estimate
    (None for deleted ones or a stored spec that no longer validates)."""
    caps = current_scale_caps(session) if deps else {}
    downloads = weights.downloads(session, [d.id for d in deps])
    pins = model_config.sources(session, [d.id for d in deps])
    out = []
    for d in deps:
        start = None
        if d.deleted_at is None:
            try:
                start = replica_start(session, spec_of(d))
            except ValidationError:
                start = None
        out.append(DeploymentView(d, caps.get(d.id) if d.deleted_at is None else None, start,
                                  downloads.get(d.id, []), pins.get(d.id)))
    return out
