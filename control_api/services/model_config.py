"""At deploy time: where the model's ``config.json`` comes from, the revision pin, and the fit
check (:mod:`core.fit`) against the candidate GPUs of the catalog.

- ``hf:<repo>[@rev]`` (or a bare ``org/repo``): the revision (default ``main``) is resolved to
  its commit through the Hub API (``GET {HF_ENDPOINT}/api/models/{repo}/revision/{rev}`` ->
  ``sha``) and the stored spec holds ``hf:<repo>@<sha>``; ``config.json`` is read at that
  commit. The token is the stored secret ``model.hf_token`` names. Refusals (422): 401 ->
  ``hf_unauthorized``, 403 -> ``hf_gated``, an unknown repo, revision or file -> ``not_found``.
  A Hub that cannot be reached -> 503 ``source_unreachable`` (nothing stored: a revision cannot
  be pinned; deploy again, or pin it yourself with ``@<40-hex commit>``, which needs no
  resolution: then only the fit check is skipped).
- ``s3://bucket/prefix``: ``<prefix>/config.json`` through boto3 (endpoint and region from
  ``model.s3``); missing bucket/key -> ``not_found``, refused credentials -> ``s3_forbidden``;
  unreachable endpoint: the fit check is skipped (a note says so).
- a local path: ``<path>/config.json`` if it is on this host; else the fit check is skipped.
- ``builtin:``: the package's own tiny models (CPU); the fit check is skipped.

``HF_ENDPOINT`` (environment, as for huggingface_hub) points at another Hub (tests: a fake).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_api.errors import ApiError, Unprocessable
from control_api.settings import Settings
from core.fit import EngineShape, FitError, check_gpus, estimate, refusal_message
from core.models import InstanceType
from core.models_secrets import StoredSecret
from core.spec import DeploymentFile, DeploymentSpec, SecretRef, parse_source

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
TIMEOUT_S = 10.0
COMMIT = re.compile(r"^[0-9a-f]{40}$")


class SourceUnreachable(ApiError):
    status_code = 503
    code = "source_unreachable"


@dataclass
class Prepared:
    """A deployment as it is stored: pinned source, ``model_memory_gb`` filled; and notes."""

    spec: DeploymentSpec
    requested_source: str
    fit: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


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


def _hf_refusal(name: str, what: str, response: httpx.Response) -> ApiError:
    code = response.headers.get("X-Error-Code", "")
    hub_msg = response.headers.get("X-Error-Message") or response.reason_phrase
    message = f"deployment {name!r}: {what}: {response.status_code} {hub_msg}"
    if code in ("RepoNotFound", "RevisionNotFound", "EntryNotFound") or \
            response.status_code == 404:
        return Unprocessable(message, code="not_found")
    if response.status_code == 401:
        return Unprocessable(message + " (set model.hf_token to a stored secret with a valid "
                             "token)", code="hf_unauthorized")
    if response.status_code == 403:
        return Unprocessable(message + " (the token has no access: request it on the model's "
                             "page)", code="hf_gated")
    return SourceUnreachable(message)


def _hf_get(client: httpx.Client, name: str, url: str, what: str) -> httpx.Response:
    try:
        r = client.get(url)
    except httpx.HTTPError as exc:
        raise SourceUnreachable(f"deployment {name!r}: {what}: the Hub is unreachable "
                                f"({type(exc).__name__}); deploy again later") from None
    if r.status_code != 200:
        raise _hf_refusal(name, what, r)
    return r


def _hf(db: Session, settings: Settings, dep: DeploymentSpec, repo: str,
        revision: str | None, out: Prepared) -> tuple[dict[str, Any] | None, int | None]:
    token = _secret(db, settings, dep.model.hf_token)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = hf_endpoint()
    rev = revision or "main"
    with httpx.Client(timeout=TIMEOUT_S, headers=headers, follow_redirects=True) as client:
        params: int | None = None
        if COMMIT.match(rev):
            sha = rev
        else:
            info = _hf_get(client, dep.name, f"{base}/api/models/{repo}/revision/"
                           f"{quote(rev, safe='')}", f"revision {rev!r} of {repo}").json()
            sha = str(info.get("sha") or "")
            if not COMMIT.match(sha):
                raise SourceUnreachable(f"deployment {dep.name!r}: the Hub answered no commit "
                                        f"for {repo}@{rev}")
            total = (info.get("safetensors") or {}).get("total") \
                if isinstance(info.get("safetensors"), dict) else None
            params = total if isinstance(total, int) and total > 0 else None
        out.spec.model.source = f"hf:{repo}@{sha}"
        try:
            r = _hf_get(client, dep.name, f"{base}/{repo}/resolve/{sha}/config.json",
                        f"config.json of {repo}@{sha[:12]}")
        except SourceUnreachable as exc:
            if revision is not None and COMMIT.match(revision):
                out.notes.append(f"fit check skipped: {exc.message}")
                return None, None
            raise
        return _json(dep.name, r.content), params


def _json(name: str, data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        raise Unprocessable(f"deployment {name!r}: config.json is not JSON",
                            code="invalid_model_config") from None
    if not isinstance(doc, dict):
        raise Unprocessable(f"deployment {name!r}: config.json is not an object",
                            code="invalid_model_config")
    return doc


def _s3(db: Session, settings: Settings, dep: DeploymentSpec, bucket: str, prefix: str,
        out: Prepared) -> dict[str, Any] | None:
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        out.notes.append("fit check skipped: boto3 is not installed on the control API")
        return None
    s3 = dep.model.s3
    client = boto3.client(
        "s3", endpoint_url=s3.endpoint_url if s3 else None,
        region_name=s3.region if s3 else None,
        aws_access_key_id=_secret(db, settings, s3.access_key_id if s3 else None),
        aws_secret_access_key=_secret(db, settings, s3.secret_access_key if s3 else None))
    key = f"{prefix}/config.json"
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        msg = f"deployment {dep.name!r}: s3://{bucket}/{key}: {code}"
        if code in ("NoSuchBucket", "NoSuchKey", "404", "NotFound"):
            raise Unprocessable(msg, code="not_found") from None
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            raise Unprocessable(msg + " (check model.s3's stored keys)",
                                code="s3_forbidden") from None
        out.notes.append(f"fit check skipped: {msg}")
        return None
    except BotoCoreError as exc:
        out.notes.append(f"fit check skipped: s3://{bucket}/{key}: {type(exc).__name__}")
        return None
    return _json(dep.name, body)


def gpu_memory(db: Session, gpus: list[str]) -> dict[str, float]:
    """GPU model -> memory per GPU (GB), from the catalog."""
    rows = db.execute(select(InstanceType.gpu_model, func.max(InstanceType.gpu_vram_gb))
                      .where(InstanceType.gpu_model.in_(gpus))
                      .group_by(InstanceType.gpu_model))
    return {str(m): float(v) for m, v in rows if v}


def prepare(db: Session, settings: Settings, spec: DeploymentFile) -> list[Prepared]:
    """Pin revisions, read configs, check the fit; raise the refusals (see the module)."""
    out = []
    for dep in spec.deployments:
        item = Prepared(dep.model_copy(deep=True), requested_source=dep.model.source)
        src = parse_source(dep.model.source)
        config: dict[str, Any] | None = None
        params: int | None = None
        if src.kind == "hf":
            assert src.repo is not None
            config, params = _hf(db, settings, dep, src.repo, src.revision, item)
        elif src.kind == "s3":
            assert src.bucket is not None and src.prefix is not None
            config = _s3(db, settings, dep, src.bucket, src.prefix, item)
        elif src.kind == "local":
            path = Path(str(src.path)) / "config.json"
            if path.is_file():
                config = _json(dep.name, path.read_bytes())
            else:
                item.notes.append(f"fit check skipped: {path} is not on the control API host")
        pl = dep.placement
        if config is not None and pl.accelerator_type is not None:
            try:
                est = estimate(config, EngineShape.of(dep.engine), params)
            except FitError as exc:
                item.notes.append(f"fit check skipped: {exc}")
            else:
                candidates = [pl.accelerator_type, *pl.accelerator_candidates]
                report = check_gpus(est, candidates, gpu_memory(db, candidates))
                item.fit = {**est.as_dict(), "candidates": [
                    {"gpu": g.gpu, "gpu_memory_gb": g.gpu_memory_gb, "fits": g.fits}
                    for g in report.gpus]}
                if pl.model_memory_gb is None:
                    if not report.fitting:
                        raise Unprocessable(refusal_message(dep.name, report),
                                            code="no_gpu_fits", details=item.fit)
                    item.spec.placement.model_memory_gb = est.gpu_memory_gb
        out.append(item)
    return out
