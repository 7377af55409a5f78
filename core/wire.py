"""Wire format of /api/internal: what the data plane (node provider, ingress) sends and receives.

These models are shared by the server routes and by :mod:`control_api.client.internal`, so the
format lives in one place. Request models forbid unknown fields; every batch carries its own
idempotency keys (``event_id`` for lifecycle events, ``request_id`` for usage records), which is
what makes every internal POST safe to retry.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from core.states import InstanceState

MAX_LIFECYCLE_EVENTS = 1000
MAX_USAGE_RECORDS = 5000
# Token counts are stored in 32-bit integer columns.
MAX_TOKENS = 2**31 - 1

UsageStatus = Literal["completed", "aborted", "error", "rejected"]
USAGE_STATUSES: tuple[str, ...] = ("completed", "aborted", "error", "rejected")

Id128 = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
Name64 = Annotated[str, Field(min_length=1, max_length=64)]
Millis = Annotated[float, Field(ge=0, le=1e10, allow_inf_nan=False)]


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        # e.g. 0001-01-01T00:00+01:00 or 9999-12-31T23:00-05:00 have no UTC equivalent
        raise ValueError("datetime out of range") from None


# Timezone-aware, normalised to UTC (naive datetimes are refused).
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # Postgres text cannot hold NUL; refuse it here rather than fail in the database.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


# ---------------------------------------------------------------- lifecycle events


class LifecycleEventIn(_Request):
    """One observation of an instance by the data plane (usually the node provider).

    ``cloud_exists`` is the cloud's word on the VM: ``True`` it exists (billing runs), ``False``
    it is confirmed gone, ``None``/absent unknown (e.g. a transient API error: never a close).
    """

    event_id: Id128
    launch_id: Name64
    cluster_name: Name64
    provider: Annotated[str, Field(min_length=1, max_length=32)]
    instance_type: Name64
    zone: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    node_type: Name64 | None = None
    provider_instance_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    ray_node_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    private_ip: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    public_ip: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    deployment_id: uuid.UUID | None = None
    state: InstanceState
    at: UtcDatetime
    error_code: Name64 | None = None
    error_message: Annotated[str, Field(max_length=4000)] | None = None
    reason: Annotated[str, Field(max_length=1000)] | None = None
    cloud_exists: bool | None = None
    # When the cloud created the VM (Scaleway bills from creation): the cost interval starts
    # there rather than at the event's time, so a late or adopted report loses no minutes.
    cloud_created_at: UtcDatetime | None = None


class LifecycleEventsRequest(_Request):
    events: Annotated[list[LifecycleEventIn], Field(max_length=MAX_LIFECYCLE_EVENTS)]


class EventRejection(BaseModel):
    """Why one event of a batch was not applied; the rest of the batch was.

    Codes: ``unknown_provider``, ``unknown_deployment``, ``launch_id_mismatch``,
    ``invalid_transition``, ``missing_error_code``, ``stale`` (older than the current state and
    moving backwards), ``concurrent_modification`` (lost a race several times in a row).
    """

    event_id: str
    code: str
    message: str


class LifecycleEventsResult(BaseModel):
    applied: int
    duplicates: int
    rejected: list[EventRejection] = Field(default_factory=list)


# ---------------------------------------------------------------- usage


class UsageRecordIn(_Request):
    """One OpenAI-endpoint request as metered by the ingress; ``request_id`` is its identity."""

    request_id: Id128
    api_key_id: uuid.UUID | None = None
    org_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    model: Annotated[str, Field(min_length=1, max_length=128)]
    deployment: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    prompt_tokens: Annotated[int, Field(ge=0, le=MAX_TOKENS)]
    completion_tokens: Annotated[int, Field(ge=0, le=MAX_TOKENS)]
    ttft_ms: Millis | None = None
    duration_ms: Millis | None = None
    status: UsageStatus
    streamed: bool = False
    at: UtcDatetime


class UsageRequest(_Request):
    records: Annotated[list[UsageRecordIn], Field(max_length=MAX_USAGE_RECORDS)]


class UsageRejection(BaseModel):
    """A usage record refused: ``unknown_api_key``, ``key_org_mismatch`` (the key is not in the
    record's org) or ``org_without_key``. Refused records are not stored (a retry is refused
    again)."""

    request_id: str
    code: str


class UsageResult(BaseModel):
    inserted: int
    duplicates: int
    rejected: list[UsageRejection] = Field(default_factory=list)


# ---------------------------------------------------------------- key verification


class KeyVerifyRequest(_Request):
    """The SHA-256 (hex) of an API key; the key itself never leaves the ingress."""

    key_hash: Annotated[str, Field(min_length=64, max_length=64, pattern=r"^[0-9a-fA-F]{64}$")]

    @field_validator("key_hash")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()


class KeyVerifyResult(BaseModel):
    """The principal behind a valid key. Unknown, revoked and expired keys get a 404 error
    (codes ``invalid_api_key``, ``revoked_api_key``, ``expired_api_key``, ``disabled_api_key``),
    which the ingress maps to an OpenAI-style 401."""

    valid: bool = True
    api_key_id: uuid.UUID
    org_id: uuid.UUID
    # The org's name, so ``allowed_orgs`` given by name matches at the ingress too.
    org_name: str | None = None
    user_id: uuid.UUID | None
    name: str
    allowed_models: list[str] | None
    rpm_limit: int | None
    tpm_limit: int | None
    monthly_budget_eur: Decimal | None
    spent_this_month_eur: Decimal
    budget_left_eur: Decimal | None
    expires_at: datetime | None
