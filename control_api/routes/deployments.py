"""Routes under /api/deployments: model deployments, applied to Ray Serve after each write."""

from __future__ import annotations

from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from control_api.deps import AdminDep, NowDep, PrincipalDep, SessionDep, access
from control_api.errors import ErrorResponse, NotFound, Unprocessable
from control_api.ports import NO_DATA_PLANE, DataPlane, RenderServeConfig
from control_api.schemas.deployments import (
    MAX_YAML_CHARS,
    DeploymentOut,
    DeploymentWrite,
    ModelSourceOut,
    SourcedDeploymentList,
    SourcedDeploymentOut,
    SourcedDeploymentWriteResult,
    SourcedDeploymentWritten,
)
from control_api.serve_client import ServeClient, client_from_settings
from control_api.services import deployments as svc
from control_api.services import model_config
from control_api.services.secrets import spec_to_store
from core.spec import DeploymentFile, SpecError, SpecIssue, parse_spec

router = APIRouter(prefix="/api/deployments", tags=["deployments"])

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
INVALID = "invalid_deployment"
_WRITE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": DeploymentWrite.model_json_schema()},
            "application/yaml": {"schema": {"type": "string", "maxLength": MAX_YAML_CHARS}},
        },
    },
}


def serve_client_of(request: Request) -> ServeClient | None:
    """``app.state.serve_client`` when the app (or a test) set one, else one from the app's
    settings, created once (``None``: Serve not configured, writes stay pending)."""
    state = request.app.state
    if not hasattr(state, "serve_client"):
        state.serve_client = client_from_settings(state.settings)
    return state.serve_client  # type: ignore[no-any-return]


def renderer_of(request: Request) -> RenderServeConfig | None:
    """The data plane's Serve config renderer (``None``: the app was built without the data
    plane; writes then stay pending with the reason)."""
    plane: DataPlane = getattr(request.app.state, "plane", NO_DATA_PLANE)
    return plane.render_serve_config


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


async def _read_spec(request: Request) -> Any:
    body = await request.body()
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in YAML_TYPES:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise Unprocessable("the YAML body is not UTF-8", code=INVALID) from None
        if len(text) > MAX_YAML_CHARS:
            raise Unprocessable(f"the YAML body exceeds {MAX_YAML_CHARS} characters",
                                code=INVALID)
        return parse_yaml_text(text)
    try:
        write = DeploymentWrite.model_validate_json(body or b"null")
    except ValidationError as exc:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                  for e in exc.errors(include_url=False, include_context=False,
                                      include_input=False)]
        raise Unprocessable("invalid request body", details=errors) from None
    if write.yaml is not None:
        return parse_yaml_text(write.yaml)
    assert write.spec is not None
    return parse_mapping(write.spec)


@router.post("", response_model=SourcedDeploymentWriteResult,
             openapi_extra={**access("platform_admin"), **_WRITE_BODY},
             responses={503: {"model": ErrorResponse, "description": (
                 "source_unreachable: the model's source (Hub, Object Storage) answered that "
                 "it is failing; nothing was stored, retry after Retry-After")}})
async def put_deployments(request: Request, principal: AdminDep, db: SessionDep,
                          now: NowDep) -> SourcedDeploymentWriteResult:
    """Create or update (by name) every deployment of a deployment file, then apply the whole
    desired state to Serve (best effort: an unreachable dashboard leaves them ``pending``).

    Body: JSON ``{"spec": {...}}`` or ``{"yaml": "..."}``, or the YAML text itself with
    ``Content-Type: application/yaml``. Invalid files: 422 ``invalid_deployment`` whose
    ``details`` name each field and its line; a secret reference to no stored secret: 422
    ``unknown_secret``.

    Before anything is stored, each model source is checked (``control_api.services.
    model_config``): an ``hf:`` revision is pinned to its commit (``spec.model.source`` holds
    it, ``source.revision_requested`` what was asked), the model's ``config.json`` is read and
    the replica's GPU memory estimated; a GPU placement where no candidate fits is refused,
    422 ``no_gpu_fits`` naming each candidate with the numbers, and the estimate fills
    ``placement.model_memory_gb`` (which the cheapest-fitting-GPU choice filters on). A
    missing repo, revision, bucket or key: 422 ``source_not_found``; no or a bad token or
    refused keys: ``source_unauthorized``; a gated repo the token has no access to:
    ``source_gated``; a source answering 5xx/429: 503 ``source_unreachable``. A source that
    does not answer at all is stored unpinned, ``source.warnings`` says so.
    """
    spec = await _read_spec(request)
    serve_client, render = serve_client_of(request), renderer_of(request)
    settings = request.app.state.settings

    def write() -> SourcedDeploymentWriteResult:
        # `***` env values keep the stored ones; every secret reference must be stored.
        wanted = spec_to_store(db, spec)
        # Network reads (Hub, Object Storage) before any row is locked or written.
        prepared = model_config.prepare(db, settings, wanted)
        results = svc.upsert(db, principal, model_config.prepared_file(wanted, prepared), now)
        for r, item in zip(results, prepared, strict=True):
            model_config.record(db, r.deployment.id, item, now)
        if any(r.change != "unchanged" for r in results):
            svc.apply_all(db, serve_client, render, now)
        shown = svc.views(db, [r.deployment for r in results])
        return SourcedDeploymentWriteResult(items=[
            SourcedDeploymentWritten(**DeploymentOut.of_view(v).model_dump(), change=r.change,
                                     source=ModelSourceOut.of(v.source))
            for r, v in zip(results, shown, strict=True)])

    # Database work, the source checks and the Serve PUT (up to its timeout) block: keep them
    # off the event loop.
    return await run_in_threadpool(write)


@router.get("", response_model=SourcedDeploymentList, openapi_extra=access("user"))
def list_deployments(principal: PrincipalDep, db: SessionDep,
                     include_deleted: Annotated[bool, Query()] = False) -> SourcedDeploymentList:
    """Deployments by name. Platform admins see all; others those open to every org
    (``allowed_orgs: null``) or to one of theirs; a user in no org sees none. ``env`` values
    read ``***``. Deleted ones only while ``deleting`` unless ``include_deleted``."""
    if not (principal.is_platform_admin or principal.roles):
        return SourcedDeploymentList(items=[])  # in no org: "every org" does not include you
    deps = svc.list_deployments(db, principal, include_deleted=include_deleted)
    return SourcedDeploymentList(items=[SourcedDeploymentOut.of_view(v)
                                        for v in svc.views(db, deps)])


@router.get("/{ref}", response_model=SourcedDeploymentOut, openapi_extra=access("user"))
def show_deployment(ref: str, principal: PrincipalDep, db: SessionDep) -> SourcedDeploymentOut:
    """One deployment by name or id (404 if not visible to the caller), with ``scale_cap``
    (the budget guard's cap in force, or null), ``replica_start`` (the expected start time
    of a new replica the autoscaling policy holds capacity for), ``weights`` (the download
    per node) and ``source`` (the revision asked for, the commit it is pinned to, the fit)."""
    if not (principal.is_platform_admin or principal.roles):
        raise NotFound("deployment not found")
    dep = svc.get_deployment(db, principal, ref)
    return SourcedDeploymentOut.of_view(svc.views(db, [dep])[0])


@router.delete("/{ref}", response_model=DeploymentOut, openapi_extra=access("platform_admin"))
def delete_deployment(ref: str, request: Request, principal: AdminDep, db: SessionDep,
                      now: NowDep) -> DeploymentOut:
    """Soft-delete: ``deleted_at`` set, status ``deleting`` until Serve no longer runs it (the
    desired state is applied right away, best effort)."""
    dep = svc.soft_delete(db, principal, ref, now)
    svc.apply_all(db, serve_client_of(request), renderer_of(request), now)
    return DeploymentOut.of(dep)
