"""Request and response schemas of /api/instances."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from control_api.schemas.enums import InstanceState

if TYPE_CHECKING:  # server-side only: the clients import these schemas without SQLAlchemy
    from core.models import BillingInterval, Instance, InstanceStateHistory


class InstanceOut(BaseModel):
    id: uuid.UUID
    launch_id: str
    cluster_name: str
    provider: str
    zone: str | None
    instance_type: str
    node_type: str | None
    provider_instance_id: str | None
    ray_node_id: str | None
    private_ip: str | None
    public_ip: str | None
    deployment_id: uuid.UUID | None
    state: InstanceState
    state_entered_at: datetime
    state_deadline_at: datetime | None
    error_code: str | None
    error_message: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, i: Instance) -> InstanceOut:
        return cls(**_instance_fields(i))


def _instance_fields(i: Instance) -> dict[str, Any]:
    return {
        "id": i.id, "launch_id": i.launch_id, "cluster_name": i.cluster_name,
        "provider": i.provider_code, "zone": i.zone_code, "instance_type": i.instance_type_name,
        "node_type": i.node_type, "provider_instance_id": i.provider_instance_id,
        "ray_node_id": i.ray_node_id, "private_ip": i.private_ip, "public_ip": i.public_ip,
        "deployment_id": i.deployment_id, "state": i.state, "state_entered_at": i.state_entered_at,
        "state_deadline_at": i.state_deadline_at, "error_code": i.error_code,
        "error_message": i.error_message, "created_at": i.created_at, "updated_at": i.updated_at,
    }


class InstanceList(BaseModel):
    items: list[InstanceOut]
    next_cursor: str | None


class HistoryOut(BaseModel):
    from_state: InstanceState | None
    to_state: InstanceState
    at: datetime
    reason: str | None
    error_code: str | None
    actor: str | None

    @classmethod
    def of(cls, h: InstanceStateHistory) -> HistoryOut:
        return cls(from_state=h.from_state, to_state=h.to_state, at=h.at, reason=h.reason,
                   error_code=h.error_code, actor=h.actor)


class BillingIntervalOut(BaseModel):
    id: int
    provider: str
    zone: str | None
    instance_type: str
    deployment_id: uuid.UUID | None
    started_at: datetime
    # Null while the VM still exists (the interval is open).
    ended_at: datetime | None

    @classmethod
    def of(cls, b: BillingInterval) -> BillingIntervalOut:
        return cls(id=b.id, provider=b.provider_code, zone=b.zone_code,
                   instance_type=b.instance_type_name, deployment_id=b.deployment_id,
                   started_at=b.started_at, ended_at=b.ended_at)


class InstanceDetail(InstanceOut):
    # State changes in the order they happened.
    history: list[HistoryOut]
    billing_intervals: list[BillingIntervalOut]

    @classmethod
    def of(cls, i: Instance) -> InstanceDetail:
        return cls(
            **_instance_fields(i),
            history=[HistoryOut.of(h) for h in i.history],
            billing_intervals=[BillingIntervalOut.of(b) for b in i.billing_intervals],
        )


class TerminateIn(BaseModel):
    """Why the instance is being terminated (kept in its history and the action log)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500)
