"""Request and response schemas of stored secrets. A value goes in (``SecretSet``) and never
comes out: no response model has a value field."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints

Description = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]


class SecretSet(BaseModel):
    """Set or replace a secret's value (write-only)."""

    model_config = ConfigDict(extra="forbid")

    value: SecretStr = Field(min_length=1, max_length=16 * 1024,
                             description="The value; stored encrypted, never returned.")
    description: Description | None = Field(
        default=None, description="What it is for (kept on a replace when omitted).")


class SecretOut(BaseModel):
    """A secret's metadata (never its value)."""

    name: str
    description: str | None
    created_at: datetime
    updated_at: datetime
    created_by: str | None = Field(description="Username of who created it (null: deleted).")
    updated_by: str | None = Field(description="Username of who last set it.")
    used_by: list[str] = Field(default_factory=list,
                               description="Stored deployments referencing it.")


class SecretList(BaseModel):
    items: list[SecretOut]
