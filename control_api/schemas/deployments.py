"""Request and response schemas of /api/deployments."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from control_api.models import Deployment

MAX_YAML_CHARS = 256 * 1024


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


class DeploymentOut(BaseModel):
    id: uuid.UUID
    name: str
    version: int
    status: str
    status_message: str | None
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    @classmethod
    def of(cls, d: Deployment) -> DeploymentOut:
        return cls(id=d.id, name=d.name, version=d.version, status=d.status,
                   status_message=d.status_message, spec=d.spec, created_at=d.created_at,
                   updated_at=d.updated_at, deleted_at=d.deleted_at)


class DeploymentWritten(DeploymentOut):
    change: str = Field(description="created | updated | unchanged")


class DeploymentWriteResult(BaseModel):
    items: list[DeploymentWritten]


class DeploymentList(BaseModel):
    items: list[DeploymentOut]
