"""Request and response schemas of /api/deployments."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # the wire format loads no SQLAlchemy (see control_api.schemas)
    from core.models import Deployment

MAX_YAML_CHARS = 256 * 1024
# What an ``env`` value reads as in every answer: values are write-only (they hold secrets such
# as HF_TOKEN). Writing it back keeps the stored value.
SECRET_MASK = "***"  # noqa: S105 - the mask, not a secret


def masked_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The stored spec with every ``env`` value replaced by ``***`` (names are kept)."""
    env = spec.get("env")
    if not isinstance(env, dict) or not env:
        return spec
    return {**spec, "env": dict.fromkeys(env, SECRET_MASK)}


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
    spec: dict[str, Any] = Field(description="The stored spec; `env` values read `***`.")
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
