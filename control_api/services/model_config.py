"""At deploy time, before anything is stored: pin the model's revision, read its
``config.json`` and check the fit (:mod:`core.fit`) against the candidate GPUs of the catalog.

- ``hf:<repo>[@rev]`` (or a bare ``org/repo``): the revision (default ``main``) is resolved to
  its commit through the Hub API (``GET {HF_ENDPOINT}/api/models/{repo}/revision/{rev}`` ->
  ``sha``); the stored spec holds ``hf:<repo>@<sha>`` (what every replica downloads), the
  revision asked for is kept beside it (:class:`core.models_weights.DeploymentSource`). A
  40-hex commit needs no resolution. The token is the stored secret ``model.hf_token`` names.
- ``s3://bucket/prefix``: ``<prefix>/config.json`` through boto3 (endpoint and region from
  ``model.s3``, its keys, else unsigned: the control API's own credentials are never lent to a
  deployment). Nothing to pin (a bucket has no revisions).
- a local path: ``<path>/config.json`` when it is on this host (else the fit is not checked).
- ``builtin:``: the package's own tiny CPU models; nothing to pin or check.

Refusals, 422 with a stable code, nothing stored: ``source_not_found`` (repo, revision, file,
bucket or key), ``source_unauthorized`` (no or a bad token; S3 keys refused),
``source_gated`` (a valid token without access to a gated repo), ``invalid_model_config``,
``no_gpu_fits`` (naming each candidate GPU with the numbers; ``details`` holds the estimate).

A remote that cannot be reached: only when it is surely the remote's fault (it answered 5xx or
429) is the write refused, 503 ``source_unreachable`` with ``Retry-After``: replicas would hit
the same outage. A transport failure (DNS, refused, timeout) may be this host's network (a
control plane without egress whose workers reach the Hub): the deploy goes on **unpinned**
(the source as written) with a warning saying the revision and the fit were not checked;
applying it again once the remote answers pins it.

``HF_ENDPOINT`` (environment, as for huggingface_hub) points at another Hub (tests: a fake).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_api.errors import ApiError, Unprocessable
from control_api.settings import Settings
from core.fit import EngineShape, FitError, check_gpus, estimate, refusal_message
from core.models import Deployment, InstanceType
from core.models_secrets import StoredSecret
from core.models_weights import DeploymentSource
from core.spec import DeploymentFile, DeploymentSpec, SecretRef, parse_source

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
TIMEOUT_S = 10.0
RETRY_AFTER_S = 30
COMMIT = re.compile(r"^[0-9a-f]{40}$")
HF_NOT_FOUND = ("RepoNotFound", "RevisionNotFound", "EntryNotFound")
S3_NOT_FOUND = ("NoSuchBucket", "NoSuchKey", "404", "NotFound")
S3_REFUSED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403",
              "InvalidToken", "ExpiredToken")


class SourceUnreachable(ApiError):
    """The model's source answered that it is failing (5xx, 429): retry later."""

    status_code = 503
    code = "source_unreachable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": str(RETRY_AFTER_S)})


class _NoAnswer(Exception):
    """A transport failure: no answer from the remote (maybe this host's network)."""


@dataclass
class Prepared:
    """One deployment as it is to be stored: the pinned source and ``model_memory_gb`` filled
    in ``spec``; what was asked (``requested_source``, ``revision_requested``), the pin
    (``revision``), the estimate and candidates (``fit``) and why something was not checked
    (``warnings``)."""

    spec: DeploymentSpec
    requested_source: str
    revision_requested: str | None = None
    revision: str | None = None
    fit: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    memory_filled_gb: float | None = None
    params: int | None = None  # the Hub's parameter count (safetensors total), if it gives one


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")


def _secret(db: Session, settings: Settings, ref: SecretRef | None) -> str | None:
    if ref is None:
        return None
    from control_api.services.secrets import box_for

    row = db.scalar(select(StoredSecret).where(StoredSecret.name == ref.secret))
    if row is None:
        return None  # refused earlier as unknown_secret
    return box_for(settings).open(row.name, row.ciphertext, row.key_id)


# ---------------------------------------------------------------- Hugging Face


def _hf_refusal(name: str, what: str, response: httpx.Response, token: bool) -> ApiError:
    code = response.headers.get("X-Error-Code", "")
    hub_msg = response.headers.get("X-Error-Message") or response.reason_phrase
    message = f"deployment {name!r}: {what}: the Hub answered {response.status_code} {hub_msg}"
    status = response.status_code
    if code in HF_NOT_FOUND or status in (404, 410):
        hint = (" (or it is private: set model.hf_token to a stored secret holding a token)"
                if status == 401 and not token else "")
        return Unprocessable(message + hint, code="source_not_found")
    if status == 401 or (status == 403 and not token):
        hint = ("set model.hf_token to a stored secret holding a valid token" if not token
                else "the token model.hf_token names is not valid")
        return Unprocessable(f"{message} ({hint})", code="source_unauthorized")
    if status == 403:
        return Unprocessable(message + " (the token has no access to this gated model: "
                             "request access on the model's page)", code="source_gated")
    if status >= 500 or status == 429:
        return SourceUnreachable(message + "; nothing was stored, deploy again later")
    return Unprocessable(message, code="source_not_found")


def _hf_get(client: httpx.Client, name: str, url: str, what: str, token: bool) -> httpx.Response:
    try:
        r = client.get(url)
    except httpx.TransportError as exc:
        raise _NoAnswer(f"{what}: no answer from the Hub at {hf_endpoint()} "
                        f"({type(exc).__name__})") from None
    if r.status_code != 200:
        raise _hf_refusal(name, what, r, token)
    return r


def _hf(db: Session, settings: Settings, dep: DeploymentSpec, repo: str,
        revision: str | None, out: Prepared, want_config: bool) -> dict[str, Any] | None:
    token = _secret(db, settings, dep.model.hf_token)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = hf_endpoint()
    rev = revision or "main"
    with httpx.Client(timeout=TIMEOUT_S, headers=headers, follow_redirects=True) as client:
        try:
            if COMMIT.match(rev):
                sha = rev
            else:
                info = _hf_get(client, dep.name, f"{base}/api/models/{repo}/revision/"
                               f"{quote(rev, safe='')}", f"revision {rev!r} of {repo}",
                               bool(token)).json()
                sha = str(info.get("sha") or "") if isinstance(info, dict) else ""
                out.params = _safetensors_total(info)
                if not COMMIT.match(sha):
                    raise SourceUnreachable(f"deployment {dep.name!r}: the Hub answered no "
                                            f"commit for {repo}@{rev}")
            out.revision = sha
            out.spec.model.source = f"hf:{repo}@{sha}"
            if not want_config:
                return None
            r = _hf_get(client, dep.name, f"{base}/{repo}/resolve/{sha}/config.json",
                        f"config.json of {repo}@{sha[:12]}", bool(token))
        except _NoAnswer as exc:
            if out.revision is None and not _keep_last_pin(db, dep, out, repo, str(exc)):
                out.warnings.append(f"revision not pinned: {exc}; replicas resolve "
                                    f"{rev!r} when they download (apply again to pin it)")
            if out.fit is None and want_config:
                out.warnings.append(f"fit not checked: {exc}")
            return None
    return _json(dep.name, r.content)


def _keep_last_pin(db: Session, dep: DeploymentSpec, out: Prepared, repo: str,
                   why: str) -> bool:
    """The Hub does not answer, and this same source was pinned at the last apply: keep that
    commit (a transient outage during a re-apply must not unpin running replicas). If the
    engine and placement are unchanged too, the estimate made then still holds: keep it."""
    row = db.scalar(select(DeploymentSource)
                    .join(Deployment, Deployment.id == DeploymentSource.deployment_id)
                    .where(Deployment.name == dep.name, Deployment.deleted_at.is_(None)))
    if row is None or row.revision is None or row.requested != out.requested_source:
        return False
    out.revision = row.revision
    out.spec.model.source = f"hf:{repo}@{row.revision}"
    out.warnings.append(f"{why}: kept the commit pinned at the last apply")
    stored = db.scalar(select(Deployment.spec).where(Deployment.name == dep.name)) or {}
    old_pl = dict(stored.get("placement") or {})
    new_pl = dep.placement.model_dump(mode="json")
    if row.fit is not None and stored.get("engine") == dep.engine.model_dump(mode="json") and \
            {**old_pl, "model_memory_gb": None} == {**new_pl, "model_memory_gb": None} and \
            new_pl.get("model_memory_gb") in (None, row.memory_filled_gb):
        out.fit, out.memory_filled_gb = row.fit, row.memory_filled_gb
        out.spec.placement.model_memory_gb = old_pl.get("model_memory_gb")
    return True


def _safetensors_total(info: Any) -> int | None:
    """The parameter count the Hub lists (``safetensors.total``): exact for any architecture,
    where :func:`core.fit.count_params` knows decoder-only transformers."""
    st = info.get("safetensors") if isinstance(info, dict) else None
    total = st.get("total") if isinstance(st, dict) else None
    return total if isinstance(total, int) and not isinstance(total, bool) and total > 0 \
        else None


def _json(name: str, data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        raise Unprocessable(f"deployment {name!r}: the model's config.json is not JSON",
                            code="invalid_model_config") from None
    if not isinstance(doc, dict):
        raise Unprocessable(f"deployment {name!r}: the model's config.json is not an object",
                            code="invalid_model_config")
    return doc


# ---------------------------------------------------------------- Object Storage


def _s3(db: Session, settings: Settings, dep: DeploymentSpec, bucket: str, prefix: str,
        out: Prepared) -> dict[str, Any] | None:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = dep.model.s3
    key_id = _secret(db, settings, s3.access_key_id if s3 else None)
    secret = _secret(db, settings, s3.secret_access_key if s3 else None)
    config = Config(connect_timeout=5, read_timeout=TIMEOUT_S,
                    retries={"max_attempts": 1, "mode": "standard"},
                    signature_version=None if key_id and secret else UNSIGNED)
    client = boto3.client(
        "s3", endpoint_url=s3.endpoint_url if s3 else None,
        region_name=(s3.region if s3 else None) or "us-east-1", config=config,
        aws_access_key_id=key_id, aws_secret_access_key=secret)
    key = f"{prefix}/config.json"
    where = f"s3://{bucket}/{key}"
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        msg = f"deployment {dep.name!r}: {where}: {code or status} {err.get('Message') or ''}"
        if code in S3_NOT_FOUND or status == 404:
            raise Unprocessable(msg.rstrip(), code="source_not_found") from None
        if code in S3_REFUSED or status in (401, 403):
            raise Unprocessable(msg.rstrip() + " (check the keys model.s3 names)",
                                code="source_unauthorized") from None
        if status >= 500 or status == 429 or code in ("SlowDown", "ServiceUnavailable"):
            raise SourceUnreachable(msg.rstrip() + "; nothing was stored, deploy again "
                                    "later") from None
        raise Unprocessable(msg.rstrip(), code="source_not_found") from None
    except BotoCoreError as exc:
        out.warnings.append(f"fit not checked: {where}: no answer from the endpoint "
                            f"({type(exc).__name__})")
        return None
    return _json(dep.name, body)


# ---------------------------------------------------------------- the fit


def gpu_memory(db: Session, gpus: list[str]) -> dict[str, float]:
    """GPU model -> memory per GPU (GB), from the catalog (the largest of its types)."""
    rows = db.execute(select(InstanceType.gpu_model, func.max(InstanceType.gpu_vram_gb))
                      .where(InstanceType.gpu_model.in_(gpus))
                      .group_by(InstanceType.gpu_model))
    return {str(m): float(v) for m, v in rows if v}


def _filled_before(db: Session, name: str) -> float | None:
    """The ``model_memory_gb`` the estimate filled in at the last apply of ``name``: a spec
    read back (``GET``) and written again carries it, and it must not pass for the user's."""
    return db.scalar(select(DeploymentSource.memory_filled_gb)
                     .join(Deployment, Deployment.id == DeploymentSource.deployment_id)
                     .where(Deployment.name == name))


def _fit(db: Session, dep: DeploymentSpec, config: dict[str, Any], item: Prepared) -> None:
    pl = dep.placement
    assert pl.accelerator_type is not None
    try:
        est = estimate(config, EngineShape.of(dep.engine), item.params)
    except FitError as exc:
        item.warnings.append(f"fit not checked: {exc}")
        return
    candidates = [pl.accelerator_type, *pl.accelerator_candidates]
    report = check_gpus(est, candidates, gpu_memory(db, candidates))
    item.fit = {**est.as_dict(), "candidates": [
        {"gpu": g.gpu, "gpu_memory_gb": g.gpu_memory_gb,
         "usable_gb": None if g.usable_gb is None else round(g.usable_gb, 2), "fits": g.fits}
        for g in report.gpus]}
    given = pl.model_memory_gb
    if given is not None and given != _filled_before(db, dep.name):
        # The user's own number wins (the estimate errs on the safe side); say so if they differ.
        item.fit["model_memory_gb_from"] = "spec"
        if not report.fitting:
            why = refusal_message(dep.name, report)
            item.warnings.append(f"{why}; placement.model_memory_gb {given:g} is given: kept")
        return
    if not report.fitting:
        raise Unprocessable(refusal_message(dep.name, report), code="no_gpu_fits",
                            details=item.fit)
    item.fit["model_memory_gb_from"] = "estimate"
    item.spec.placement.model_memory_gb = est.gpu_memory_gb
    item.memory_filled_gb = est.gpu_memory_gb


def prepare_one(db: Session, settings: Settings, dep: DeploymentSpec) -> Prepared:
    """Pin, read the config, check the fit of one deployment (see the module)."""
    item = Prepared(dep.model_copy(deep=True), requested_source=dep.model.source)
    src = parse_source(dep.model.source)
    gpu = dep.placement.accelerator_type is not None
    config: dict[str, Any] | None = None
    if src.kind == "hf":
        assert src.repo is not None
        item.revision_requested = src.revision or "main"  # what is resolved
        config = _hf(db, settings, dep, src.repo, src.revision, item, want_config=gpu)
    elif not gpu:
        return item  # nothing to pin, nothing to check on a CPU placement
    elif src.kind == "s3":
        assert src.bucket is not None and src.prefix is not None
        config = _s3(db, settings, dep, src.bucket, src.prefix, item)
    elif src.kind == "local":
        path = Path(str(src.path)) / "config.json"
        if path.is_file():
            config = _json(dep.name, path.read_bytes())
        else:
            item.warnings.append(f"fit not checked: {path} is not on the control API's host")
    else:
        item.warnings.append("fit not checked: builtin models are tiny CPU models")
    if config is not None and gpu:
        _fit(db, dep, config, item)
    return item


def prepare(db: Session, settings: Settings, spec: DeploymentFile) -> list[Prepared]:
    """Every deployment of ``spec`` prepared; raises the first refusal (nothing stored)."""
    return [prepare_one(db, settings, dep) for dep in spec.deployments]


def prepared_file(spec: DeploymentFile, items: list[Prepared]) -> DeploymentFile:
    """``spec`` with each deployment replaced by its prepared (pinned) spec."""
    return spec.model_copy(update={"deployments": [i.spec for i in items]})


# ---------------------------------------------------------------- what is kept and shown


def record(db: Session, deployment_id: Any, item: Prepared, now: datetime) -> None:
    """Keep what was asked, the pin and the fit of one stored deployment (latest apply)."""
    row = db.get(DeploymentSource, deployment_id)
    if row is None:
        row = DeploymentSource(deployment_id=deployment_id, requested=item.requested_source)
        db.add(row)
    if item.revision is not None and (row.revision != item.revision or row.pinned_at is None):
        row.pinned_at = now
    elif item.revision is None:
        row.pinned_at = None
    row.requested, row.revision_requested = item.requested_source, item.revision_requested
    row.revision, row.fit, row.warnings = item.revision, item.fit, list(item.warnings)
    row.memory_filled_gb, row.updated_at = item.memory_filled_gb, now
    db.flush()


def sources(db: Session, deployment_ids: list[Any]) -> dict[Any, dict[str, Any]]:
    """Per deployment id, its source as ``GET /api/deployments/{name}`` shows it."""
    if not deployment_ids:
        return {}
    return {r.deployment_id: {
        "requested": r.requested, "revision_requested": r.revision_requested,
        "revision": r.revision, "pinned": r.revision is not None, "pinned_at": r.pinned_at,
        "fit": r.fit, "warnings": list(r.warnings or [])}
        for r in db.scalars(select(DeploymentSource).where(
            DeploymentSource.deployment_id.in_(deployment_ids)))}
