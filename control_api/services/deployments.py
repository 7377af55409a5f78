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
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_api.db import utcnow
from control_api.deps import Principal
from control_api.errors import Conflict, NotFound, Unprocessable
from control_api.models import ActionLog, Deployment, Org
from control_api.serve_client import (
    ServeClient,
    ServeError,
    ServeTarget,
    ServeUnreachable,
)
from serve_apps.spec import DeploymentFile, DeploymentSpec, SpecError, SpecIssue, parse_spec

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
        session.flush()
        session.add(ActionLog(type=f"deployment.{change}", component=COMPONENT, status="success",
                              user_id=principal.user_id, created_at=now,
                              details={"deployment_id": str(dep.id), "name": dep.name,
                                       "version": dep.version}))
        results.append(UpsertResult(dep, change))
    session.flush()
    return results


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


def desired_config(session: Session, target: ServeTarget) -> dict[str, Any]:
    """The full Serve declarative config for the non-deleted deployments."""
    deps = active_deployments(session)
    apps: list[dict[str, Any]] = []
    if deps:
        spec = {"version": 1, "deployments": [d.spec for d in deps]}
        # Round-trip through the model: a stored spec that no longer validates fails here,
        # not inside Serve.
        DeploymentFile.model_validate(spec)
        app: dict[str, Any] = {
            "name": target.app_name,
            "route_prefix": target.route_prefix,
            "import_path": target.import_path,
            "args": {"spec": spec, "options": {**target.ingress_options,
                                               "app_name": target.app_name}},
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
              now: datetime | None = None, *, trigger: str = "write") -> ApplyResult:
    """PUT the desired state to Serve and record the outcome on every deployment.

    Unreachable dashboard (or no Serve configured): deployments stay ``pending`` with the reason;
    wrong token or refused config: ``failed`` with Serve's message. Never raises for Serve
    errors: a write that triggered it still succeeds.
    """
    now = now or utcnow()
    started = time.monotonic()
    ok, status, message = False, "pending", None
    names: list[str] = []
    if serve_client is None:
        message = "Serve is not configured (INVENTIV_RAY_DASHBOARD_URL)"
    else:
        try:
            config = desired_config(session, serve_client.target)
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


def _deployed_args(details: dict[str, Any], app_name: str) -> Any:
    app = (details.get("applications") or {}).get(app_name)
    if not isinstance(app, dict):
        return None
    cfg = app.get("deployed_app_config") or {}
    return {"import_path": cfg.get("import_path"), "args": cfg.get("args")}


def in_sync(session: Session, serve_client: ServeClient,
            details: dict[str, Any] | None = None) -> bool:
    """Whether Serve runs exactly the desired applications with the desired arguments."""
    desired = desired_config(session, serve_client.target)
    if details is None:
        details = serve_client.get_applications()
    running = set(details.get("applications") or {})
    wanted = {a["name"] for a in desired["applications"]}
    if running != wanted:
        return False
    for app in desired["applications"]:
        if _deployed_args(details, app["name"]) != {"import_path": app["import_path"],
                                                     "args": app["args"]}:
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


def serve_sync_job(serve_client: ServeClient | None) -> Any:
    """A ``PeriodicJobs`` job: re-apply when Serve's applications differ from the desired state
    (Serve restarted, someone deployed by hand) or when a deployment is not applied yet
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
        if in_sync(session, serve_client, details) and unsettled is None:
            status = record_serve_status(session, details, serve_client.target.app_name, now)
            return {"in_sync": True, "serve_status": status}
        result = apply_all(session, serve_client, now, trigger="sync")
        return {"in_sync": False, "applied": result.ok, "status": result.status}

    return job


def spec_of(dep: Deployment) -> DeploymentSpec:
    """The stored spec as the model."""
    return DeploymentSpec.model_validate(dep.spec)
