"""Request and response schemas of /api/action-logs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from control_api.schemas.fields import DEFAULT_LIMIT, MAX_CURSOR_LENGTH, MAX_LIMIT, UtcDatetime

if TYPE_CHECKING:  # server-side only: the clients import these schemas without SQLAlchemy
    from control_api.services.action_logs import LogFilters
    from core.models import ActionLog


class ActionLogQuery(BaseModel):
    """Query parameters of ``GET /api/action-logs``; unknown parameters are refused (typos)."""

    model_config = ConfigDict(extra="forbid")

    type: str | None = Field(default=None, min_length=1, max_length=64)
    status: str | None = Field(default=None, min_length=1, max_length=16)
    component: str | None = Field(default=None, min_length=1, max_length=64)
    instance_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    org_id: uuid.UUID | None = None
    since: UtcDatetime | None = Field(default=None, description="inclusive, timezone required")
    until: UtcDatetime | None = Field(default=None, description="exclusive, timezone required")
    limit: int = Field(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    cursor: str | None = Field(default=None, min_length=1, max_length=MAX_CURSOR_LENGTH)

    @model_validator(mode="after")
    def _range(self) -> ActionLogQuery:
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError("since must not be after until")
        return self

    def filters(self) -> LogFilters:
        from control_api.services.action_logs import LogFilters  # the server's, see above

        return LogFilters(type=self.type, status=self.status, component=self.component,
                          instance_id=self.instance_id, user_id=self.user_id, org_id=self.org_id,
                          since=self.since, until=self.until)


class ActionLogOut(BaseModel):
    id: int
    type: str
    component: str
    status: str
    error_code: str | None
    error_message: str | None
    instance_id: uuid.UUID | None
    user_id: uuid.UUID | None
    org_id: uuid.UUID | None
    duration_ms: int | None
    parent_id: int | None
    metadata: dict[str, Any] | None
    created_at: datetime

    @classmethod
    def of(cls, a: ActionLog) -> ActionLogOut:
        return cls(id=a.id, type=a.type, component=a.component, status=a.status,
                   error_code=a.error_code, error_message=a.error_message,
                   instance_id=a.instance_id, user_id=a.user_id, org_id=a.org_id,
                   duration_ms=a.duration_ms, parent_id=a.parent_id, metadata=a.details,
                   created_at=a.created_at)


class ActionLogList(BaseModel):
    items: list[ActionLogOut]
    next_cursor: str | None
    # Number of matching logs per status, over all pages.
    counts: dict[str, int]
