"""Deployments: validated specs stored as JSON, applied declaratively to Ray Serve.

Every non-deleted deployment goes into ONE Serve application (``ServeTarget.app_name``) whose
builder (``import_path``) receives ``args = {"spec": <DeploymentFile JSON>, "options":
<ingress options>}``. Serve's declarative API replaces the whole set of applications, so a
deleted deployment disappears from the next config, and the app itself disappears when no
deployment is left.

Statuses: ``pending`` (stored, not applied yet; ``status_message`` says why, e.g. the dashboard
was unreachable), ``applied`` (Serve accepted the config), ``failed`` (Serve refused it or the
token was wrong; message), ``deleting`` (soft-deleted, still to be removed from Serve),
``deleted`` (removed from Serve). The sync job then copies Serve's application status:
``running`` once the app is RUNNING, ``unhealthy`` (with Serve's message) when it failed to
deploy or became unhealthy.

Visibility: platform admins see every deployment; other users see the deployments whose
``allowed_orgs`` is null (every org) or names one of their orgs (by name or id).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml
from pydantic import ValidationError
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from autoscaler.serve_policy import serve_autoscaling_config
from autoscaler.startup import StartupEstimate, estimate_replica_start
from control_api.deps import Principal
from control_api.errors import Conflict, NotFound, Unprocessable
from control_api.serve_client import (
    ServeClient,
    ServeError,
    ServeTarget,
    ServeUnreachable,
)
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
from core.spec import DeploymentFile, DeploymentSpec, SpecError, SpecIssue, parse_spec
from finops.budgets import CAP_ENDED, CAP_STARTED, ScaleCap, current_scale_caps, scale_up_blocks

COMPONENT = "control_api"
INVALID = "invalid_deployment"


# ---------------------------------------------------------------- validation


def _raise_invalid(exc: SpecError) -> None:
    raise Unprocessable(str(exc), code=INVALID,
                        details=[{"field": i.field, "line": i.line, "message": i.message}
                                 for i in exc.issues]) from None


def parse_yaml_text(text: str) -> DeploymentFile:
    """Validate YAML text; 422 ``invalid_deployment`` naming each field and its line."""
    try:
        return parse_spec(text, source="<request>")
    except SpecError as exc:
        _raise_invalid(exc)
        raise AssertionError("unreachable") from None


def parse_mapping(data: dict[str, Any]) -> DeploymentFile:
    """Validate an already-parsed mapping (JSON body): fields are named, lines are unknown."""
    try:
        return DeploymentFile.model_validate(data)
    except ValidationError as exc:
        # Re-dump as YAML and parse it to reuse spec.py's messages and paths; the lines of a
        # synthetic document would mislead, so they are dropped.
        try:
            parse_spec(yaml.safe_dump(data, sort_keys=False), source="<request>")
        except SpecError as spec_exc:
            _raise_invalid(SpecError([SpecIssue(i.field, None, i.message)
                                      for i in spec_exc.issues], "<request>"))
        except yaml.YAMLError:
            pass
        raise Unprocessable(str(exc), code=INVALID) from None


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
    change: str  # created | updated | unchanged


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
            results.append(UpsertResult(dep, "unchanged"))
            continue
        else:
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


# Ray Serve LLM names each model's deployment ``LLMServer:<model id>`` with "/" and "." replaced
# (ray.llm._internal.serve.core.server.builder: name_prefix + _get_deployment_name).
LLM_DEPLOYMENT_PREFIX = "LLMServer:"
# Replica states that count as existing capacity (everything but STOPPING).
LIVE_REPLICA_STATES = {"STARTING", "UPDATING", "RECOVERING", "RUNNING", "PENDING_MIGRATION"}


def serve_deployment_name(model_name: str) -> str:
    """The Serve deployment Ray Serve LLM creates for a served model name."""
    return LLM_DEPLOYMENT_PREFIX + model_name.replace("/", "--").replace(".", "_")


def _serve_app(details: dict[str, Any] | None, app_name: str) -> dict[str, Any] | None:
    app = ((details or {}).get("applications") or {}).get(app_name)
    return app if isinstance(app, dict) else None


def serve_replica_count(details: dict[str, Any] | None, app_name: str,
                        deployment: str) -> int | None:
    """Live replicas of a Serve deployment per Serve's status; None when Serve does not say."""
    app = _serve_app(details, app_name)
    dep = ((app or {}).get("deployments") or {}).get(deployment)
    if not isinstance(dep, dict) or not isinstance(dep.get("replicas"), list):
        return None
    return sum(1 for r in dep["replicas"]
               if isinstance(r, dict) and r.get("state") in LIVE_REPLICA_STATES)


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
            count = serve_replica_count(details, app_name, serve_deployment_name(spec.model.name))
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


def _deployed_policy_kwargs(app: dict[str, Any] | None, name: str) -> dict[str, Any]:
    for d in ((app or {}).get("deployed_app_config") or {}).get("deployments") or []:
        if isinstance(d, dict) and d.get("name") == name:
            policy = (d.get("autoscaling_config") or {}).get("policy")
            if isinstance(policy, dict) and isinstance(policy.get("policy_kwargs"), dict):
                return policy["policy_kwargs"]  # type: ignore[no-any-return]
    return {}


def autoscaling_override(spec: DeploymentSpec, *, replica_start_s: float | None,
                         cap: ScaleCap | None, running: bool) -> dict[str, Any]:
    """The ``autoscaling_config`` the control API sets on a model's Serve deployment.

    Budget cap: ``max_replicas`` = the capped count (at least ``min_replicas``, and at least 1:
    Serve refuses 0), for both policies. Not ``policy_kwargs.scale_up_cap``: Serve hashes each
    deployment's ``policy`` (kwargs included) into the application's code version, so changing
    it rebuilds the app and restarts every replica; bounds are a lightweight update. For the
    same reason ``scale_up_cap`` stays null and ``replica_start_s`` only changes with a rebuild
    (see :func:`desired_config`). ``initial_replicas`` is dropped once Serve runs the
    deployment: with it set, Serve resets the replica target to it on every config change."""
    cfg = serve_autoscaling_config(spec.autoscaling, replica_start_s=replica_start_s)
    if cap is not None:
        cfg["max_replicas"] = max(1, cfg["min_replicas"], min(cfg["max_replicas"], cap.replicas))
    if running:
        cfg.pop("initial_replicas", None)
    return cfg


# `autoscaling` fields that reach Serve only through the per-deployment override (bounds and
# target: a lightweight update). The app is built from the spec with them neutralised, so
# `inventiv deploy` changing a model's replica bounds or target never changes `args`, which
# would rebuild the app and restart every replica of every model. `min_replicas` keeps whether
# it is 0 (the ingress holds requests for deployments that may sit at zero replicas).
def build_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec the Serve app is built from (``args.spec``): replica bounds neutralised."""
    deployments = []
    for dep in spec["deployments"]:
        auto = dict(dep.get("autoscaling") or {})
        auto.update(min_replicas=0 if auto.get("min_replicas", 1) == 0 else 1, max_replicas=1,
                    initial_replicas=None, target_ongoing_requests=1)
        deployments.append({**dep, "autoscaling": auto})
    return {**spec, "deployments": deployments}


def desired_config(session: Session, target: ServeTarget,
                   details: dict[str, Any] | None = None,
                   caps: dict[uuid.UUID, ScaleCap] | None = None) -> dict[str, Any]:
    """The full Serve declarative config for the non-deleted deployments.

    ``args`` (spec + ingress options) build the app; a per-deployment ``deployments`` section
    sets each model's ``autoscaling_config`` (the budget cap, the replica start time), which
    Serve applies without restarting replicas as long as ``args`` and each ``policy`` stay the
    same. ``details`` (Serve's GET) tells which deployments already run and the
    ``replica_start_s`` they run with: it is kept while ``args`` are unchanged (a new learned
    value would change ``policy`` and so restart every replica) and re-learned when the app is
    rebuilt anyway. ``caps``: the budget guard's caps (read from the action log if None).
    """
    deps = active_deployments(session)
    apps: list[dict[str, Any]] = []
    if deps:
        spec = {"version": 1, "deployments": [d.spec for d in deps]}
        # Round-trip through the model: a stored spec that no longer validates fails here,
        # not inside Serve.
        DeploymentFile.model_validate(spec)
        args = {"spec": build_spec(spec),
                "options": {**target.ingress_options, "app_name": target.app_name}}
        running = _serve_app(details, target.app_name)
        deployed = (running or {}).get("deployed_app_config") or {}
        same_build = (deployed.get("import_path"), deployed.get("args")) == (
            target.import_path, args)
        caps = current_scale_caps(session) if caps is None else caps
        overrides = []
        for d in deps:
            item = spec_of(d)
            name = serve_deployment_name(item.model.name)
            start = _deployed_policy_kwargs(running, name).get("replica_start_s") \
                if same_build else None
            if start is None:
                start = replica_start(session, item).seconds
            overrides.append({"name": name, "autoscaling_config": autoscaling_override(
                item, replica_start_s=start, cap=caps.get(d.id),
                running=name in ((running or {}).get("deployments") or {}))})
        app: dict[str, Any] = {
            "name": target.app_name,
            "route_prefix": target.route_prefix,
            "import_path": target.import_path,
            "args": args,
            "deployments": overrides,
        }
        if target.runtime_env:
            app["runtime_env"] = target.runtime_env
        apps.append(app)
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": target.http_host, "port": target.http_port},
        "applications": apps,
    }


@dataclass(frozen=True)
class ApplyResult:
    ok: bool
    status: str  # applied | pending | failed
    message: str | None
    applications: list[str]


def apply_all(session: Session, serve_client: ServeClient | None,
              now: datetime | None = None, *, trigger: str = "write",
              details: dict[str, Any] | None = None) -> ApplyResult:
    """PUT the desired state to Serve and record the outcome on every deployment.

    Serve's current state (``details``; fetched when not given) shapes the config (see
    :func:`desired_config`). Unreachable dashboard (or no Serve configured): deployments stay
    ``pending`` with the reason; wrong token or refused config: ``failed`` with Serve's
    message. Never raises for Serve errors: a write that triggered it still succeeds.
    """
    now = now or utcnow()
    started = time.monotonic()
    ok, status, message = False, "pending", None
    names: list[str] = []
    if serve_client is None:
        message = "Serve is not configured (INVENTIV_RAY_DASHBOARD_URL)"
    else:
        try:
            if details is None:
                details = serve_client.get_applications()
            config = desired_config(session, serve_client.target, details)
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
    for dep in session.scalars(select(Deployment).where(
            or_(Deployment.deleted_at.is_(None), Deployment.status == "deleting"))):
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


def _deployed_state(details: dict[str, Any], app_name: str) -> Any:
    app = _serve_app(details, app_name)
    if app is None:
        return None
    cfg = app.get("deployed_app_config") or {}
    return {"import_path": cfg.get("import_path"), "args": cfg.get("args"),
            "deployments": {d.get("name"): d.get("autoscaling_config")
                            for d in cfg.get("deployments") or [] if isinstance(d, dict)}}


def in_sync(session: Session, serve_client: ServeClient,
            details: dict[str, Any] | None = None,
            caps: dict[uuid.UUID, ScaleCap] | None = None) -> bool:
    """Whether Serve runs exactly the desired applications with the desired arguments and
    per-deployment autoscaling configs (a budget cap that started or ended makes it False)."""
    if details is None:
        details = serve_client.get_applications()
    desired = desired_config(session, serve_client.target, details, caps)
    running = set(details.get("applications") or {})
    wanted = {a["name"] for a in desired["applications"]}
    if running != wanted:
        return False
    for app in desired["applications"]:
        want = {"import_path": app["import_path"], "args": app["args"],
                "deployments": {d["name"]: d["autoscaling_config"] for d in app["deployments"]}}
        if _deployed_state(details, app["name"]) != want:
            return False
    return True


# Serve's application status -> ours, once Serve accepted the config. "unhealthy" is not
# re-applied by the sync loop (the same config would not fix it); a new write or a fix of the
# cluster does.
SERVE_STATUS = {"RUNNING": "running", "DEPLOYING": "applied", "NOT_STARTED": "applied",
                "DEPLOY_FAILED": "unhealthy", "UNHEALTHY": "unhealthy"}


def record_serve_status(session: Session, details: dict[str, Any], app_name: str,
                        now: datetime) -> str | None:
    """Copy Serve's status of our application onto the applied deployments."""
    app = (details.get("applications") or {}).get(app_name)
    if not isinstance(app, dict):
        return None
    serve_status = str(app.get("status") or "")
    ours = SERVE_STATUS.get(serve_status)
    if ours is None:
        return None
    message = _short(str(app.get("message") or "")) if ours == "unhealthy" else None
    for dep in active_deployments(session):
        if dep.status in ("applied", "running", "unhealthy") and (
                dep.status, dep.status_message) != (ours, message):
            dep.status, dep.status_message, dep.updated_at = ours, message, now
    session.flush()
    return ours


def _short(text: str, limit: int = 2000) -> str | None:
    """Serve's messages are often tracebacks: keep the first line and the end (the error)."""
    text = text.strip()
    if len(text) <= limit:
        return text or None
    first = text.splitlines()[0][:200]
    return f"{first} ... {text[-(limit - len(first) - 5):]}"


def serve_sync_job(serve_client: ServeClient | None, plane: Any = None) -> Any:
    """A ``PeriodicJobs`` job: start or end budget caps (:func:`update_scale_caps`), then
    re-apply when Serve's applications differ from the desired state (Serve restarted, someone
    deployed by hand, a cap started or ended) or when a deployment is not applied yet
    (``pending``, ``failed``, ``deleting``); otherwise copy Serve's app status (``running``,
    ``unhealthy`` with Serve's message) onto the deployments."""

    def job(session: Session, now: datetime) -> object:
        if serve_client is None:
            return {"skipped": "Serve not configured"}
        unsettled = session.scalar(select(Deployment.id).where(
            Deployment.status.in_(("pending", "failed", "deleting"))).limit(1))
        try:
            details = serve_client.get_applications()
        except ServeError as exc:
            return {"error": exc.kind, "message": exc.reason}
        caps = update_scale_caps(session, details, serve_client.target.app_name, now)
        if in_sync(session, serve_client, details, caps) and unsettled is None:
            status = record_serve_status(session, details, serve_client.target.app_name, now)
            return {"in_sync": True, "serve_status": status}
        result = apply_all(session, serve_client, now, trigger="sync", details=details)
        return {"in_sync": False, "applied": result.ok, "status": result.status}

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


def views(session: Session, deps: list[Deployment]) -> list[DeploymentView]:
    """The deployments with their budget cap (None: not capped) and replica start estimate
    (None for deleted ones or a stored spec that no longer validates)."""
    caps = current_scale_caps(session) if deps else {}
    out = []
    for d in deps:
        start = None
        if d.deleted_at is None:
            try:
                start = replica_start(session, spec_of(d))
            except ValidationError:
                start = None
        out.append(DeploymentView(d, caps.get(d.id) if d.deleted_at is None else None, start))
    return out
