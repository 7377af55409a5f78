"""Request and response schemas of /api/deployments. Its answers carry ``source``, the pinned
model source and fit estimate (the ``Sourced*`` models: the deployment answers plus ``source``)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from control_api.errors import Unprocessable
from core.spec import DeploymentFile, DeploymentSpec, SecretRef

if TYPE_CHECKING:  # the wire format loads no SQLAlchemy (see control_api.schemas)
    from core.models import Deployment

MAX_YAML_CHARS = 256 * 1024
# What a literal ``env`` value reads as in every answer: literal values are write-only (they may
# hold secrets an older spec put there in clear). Writing the mask back keeps the stored value.
# A reference to a stored secret (``{secret: NAME}``) holds no value and reads as itself.
SECRET_MASK = "***"  # noqa: S105 - the mask, not a secret


def _is_secret_ref(value: Any) -> bool:
    return (isinstance(value, Mapping) and set(value) == {"secret"}
            and isinstance(value["secret"], str))


def masked_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The stored spec with every literal ``env`` value replaced by ``***``; names are kept, and
    ``{secret: NAME}`` references stay visible as references (they name, never hold, a value).
    ``model.hf_token`` and ``model.s3`` credentials can only be references: shown as stored."""
    env = spec.get("env")
    if not isinstance(env, dict) or not env:
        return spec
    return {**spec, "env": {k: {"secret": v["secret"]} if _is_secret_ref(v) else SECRET_MASK
                            for k, v in env.items()}}


def restore_masked_env(dep: DeploymentSpec, stored: Mapping[str, Any] | None,
                       index: int = 0) -> DeploymentSpec:
    """``dep`` with each ``env`` value written back as ``***`` replaced by the value stored for
    that name: a literal stays a literal, a reference is rebuilt as a :class:`SecretRef` (not
    a bare dict, so the spec dumps and compares like a freshly parsed one). A ``***`` with no
    stored value is refused (422 ``invalid_deployment``, naming the field): storing the mask
    itself as a value would silently break the replica."""
    masked = [k for k, v in dep.env.items() if v == SECRET_MASK]
    if not masked:
        return dep
    old_env = (stored or {}).get("env") or {}
    missing = [k for k in masked if k not in old_env or old_env[k] == SECRET_MASK]
    if missing:
        fields = [f"deployments[{index}].env.{k}" for k in missing]
        raise Unprocessable(f"{', '.join(fields)}: `***` keeps a stored value, and "
                            f"{dep.name!r} has none for it", code="invalid_deployment",
                            details=[{"field": f, "line": None,
                                      "message": "`***` keeps a stored value; none is stored"}
                                     for f in fields])
    env: dict[str, str | SecretRef] = dict(dep.env)
    for k in masked:
        old = old_env[k]
        env[k] = SecretRef.model_validate(old) if _is_secret_ref(old) else str(old)
    return dep.model_copy(update={"env": env})


def keep_stored_secrets(spec: DeploymentFile,
                        stored: Mapping[str, Mapping[str, Any]]) -> DeploymentFile:
    """Every deployment of ``spec`` through :func:`restore_masked_env`, against ``stored``
    (deployment name -> its stored spec JSON)."""
    out = [restore_masked_env(dep, stored.get(dep.name), i)
           for i, dep in enumerate(spec.deployments)]
    return spec.model_copy(update={"deployments": out})


class DeploymentWrite(BaseModel):
    """``POST /api/deployments``: the deployment file either parsed (``spec``, a mapping with
    ``deployments: [...]``) or as YAML text (``yaml``, errors then carry line numbers)."""

    model_config = ConfigDict(extra="forbid")

    spec: dict[str, Any] | None = None
    yaml: str | None = Field(default=None, min_length=1, max_length=MAX_YAML_CHARS)

    @model_validator(mode="after")
    def _one(self) -> DeploymentWrite:
        if (self.spec is None) == (self.yaml is None):
            raise ValueError("give exactly one of `spec` or `yaml`")
        return self


class ScaleCapOut(BaseModel):
    """The budget guard's cap on a deployment's scale-up."""

    replicas: int = Field(description="At most this many replicas (the live count when the cap "
                                      "started; Serve's max_replicas is at least 1 and at "
                                      "least min_replicas).")
    reason: str = Field(description="Which budget is exceeded.")
    since: datetime


class ReplicaStartOut(BaseModel):
    """Expected start time of a new replica (node boot + model load)."""

    seconds: float
    source: str = Field(description="spec (the YAML's replica_start_s) | learned (node boots "
                                    "from the lifecycle history) | default (no history)")
    node_boot_s: float | None
    model_load_s: float | None
    samples: int = Field(description="Node boots the estimate is learned from.")


class WeightErrorOut(BaseModel):
    code: str
    message: str


class WeightDownloadOut(BaseModel):
    """One node's download of the deployment's weights (the latest report of its replica)."""

    node_id: str
    state: str = Field(description="downloading | verifying | ready | failed")
    bytes_done: int
    bytes_total: int
    revision: str | None
    error: WeightErrorOut | None
    updated_at: datetime


class DeploymentOut(BaseModel):
    id: uuid.UUID
    name: str
    version: int
    status: str
    status_message: str | None
    spec: dict[str, Any] = Field(description="The stored spec; literal `env` values read "
                                             "`***`, `{secret: NAME}` references read as "
                                             "themselves (never a value).")
    model_id: uuid.UUID | None = Field(
        default=None, description="The `models` row of the served model name (spec.model.name).")
    scale_cap: ScaleCapOut | None = Field(
        default=None, description="Set while a budget caps scale-up: existing replicas keep "
                                  "serving, no more are added.")
    replica_start: ReplicaStartOut | None = None
    weights: list[WeightDownloadOut] = Field(
        default_factory=list, description="Weight downloads per node (progress, errors).")
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    @classmethod
    def of(cls, d: Deployment, scale_cap: Any = None, replica_start: Any = None,
           weights: list[dict[str, Any]] | None = None) -> DeploymentOut:
        """From the row, the cap in force (``finops.budgets.ScaleCap``) and the start
        estimate (``autoscaler.startup.StartupEstimate``)."""
        return cls(
            id=d.id, name=d.name, version=d.version, status=d.status,
            status_message=d.status_message, spec=masked_spec(d.spec), model_id=d.model_id,
            scale_cap=None if scale_cap is None else ScaleCapOut(
                replicas=scale_cap.replicas, reason=scale_cap.reason, since=scale_cap.since),
            replica_start=None if replica_start is None else ReplicaStartOut(
                seconds=replica_start.seconds, source=replica_start.source,
                node_boot_s=replica_start.node_boot_s, model_load_s=replica_start.model_load_s,
                samples=replica_start.samples),
            weights=[WeightDownloadOut.model_validate(w) for w in weights or []],
            created_at=d.created_at, updated_at=d.updated_at, deleted_at=d.deleted_at)

    @classmethod
    def of_view(cls, v: Any) -> DeploymentOut:
        """From ``control_api.services.deployments.DeploymentView``."""
        return cls.of(v.deployment, v.scale_cap, v.replica_start,
                      getattr(v, "weights", None))


class DeploymentWritten(DeploymentOut):
    change: str = Field(description="created | updated | unchanged | retried (unchanged, "
                                    "but its failed weight download is retried)")


class DeploymentWriteResult(BaseModel):
    items: list[DeploymentWritten]


class DeploymentList(BaseModel):
    items: list[DeploymentOut]


# ---------------------------------------------------------------- the pinned source and fit


class FitCandidateOut(BaseModel):
    gpu: str
    gpu_memory_gb: float | None = Field(description="Per GPU, from the catalog (null: the "
                                                    "catalog has no type with this GPU).")
    usable_gb: float | None = Field(description="gpu_memory_gb x gpu_memory_utilization.")
    fits: bool


class FitOut(BaseModel):
    """One replica's memory per GPU (GB, 10^9 bytes), estimated from config.json and the
    engine args (see core.fit)."""

    params: int
    dtype: str
    weights_gb: float
    kv_cache_gb: float
    overhead_gb: float
    need_gb: float
    gpu_memory_gb: float = Field(description="The GPU size that holds it (need / "
                                             "gpu_memory_utilization).")
    gpu_memory_utilization: float
    tensor_parallel_size: int
    model_memory_gb_from: str | None = Field(
        default=None, description="estimate (placement.model_memory_gb filled from it) | "
                                  "spec (the spec's own value kept)")
    candidates: list[FitCandidateOut] = Field(default_factory=list)


class ModelSourceOut(BaseModel):
    """What ``model.source`` was pinned to at the last apply."""

    requested: str = Field(description="The source as written (e.g. hf:org/model).")
    revision_requested: str | None = Field(description="The revision asked for (`main` when "
                                                       "the source names none); null: a "
                                                       "source without revisions.")
    revision: str | None = Field(description="The commit it resolved to (spec.model.source "
                                             "holds it); null: not pinned (see warnings).")
    pinned: bool
    pinned_at: datetime | None = None
    fit: FitOut | None = None
    warnings: list[str] = Field(default_factory=list)

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> ModelSourceOut | None:
        return None if data is None else cls.model_validate(data)


class SourcedDeploymentOut(DeploymentOut):
    source: ModelSourceOut | None = Field(
        default=None, description="The pinned source and the fit estimate (null: not applied "
                                  "since sources were pinned).")

    @classmethod
    def of_view(cls, v: Any) -> SourcedDeploymentOut:
        base = DeploymentOut.of_view(v)
        return cls(**dict(base), source=ModelSourceOut.of(getattr(v, "source", None)))


class SourcedDeploymentWritten(DeploymentWritten):
    source: ModelSourceOut | None = None


class SourcedDeploymentList(BaseModel):
    items: list[SourcedDeploymentOut]


class SourcedDeploymentWriteResult(BaseModel):
    items: list[SourcedDeploymentWritten]
