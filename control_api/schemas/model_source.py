"""The pinned model source and fit estimate of a deployment, in the answers of
/api/deployments (``source``). Kept apart from :mod:`control_api.schemas.deployments` until it
is merged there: the ``Sourced*`` models are its answers plus ``source``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from control_api.schemas.deployments import DeploymentOut, DeploymentWritten


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
