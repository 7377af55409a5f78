"""SQLAlchemy models: the whole persistent state of Inventiv Agents.

The control API is the only writer of these tables. Times are UTC-aware, money is ``Decimal`` EUR.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Enum,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from core.db import Base, JSONDoc, Money, UTCDateTime, new_id, utcnow
from core.states import (  # noqa: F401 - re-exported: the models' column types
    Availability,
    BudgetScope,
    BudgetState,
    InstanceState,
    Role,
)


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as plain strings (VARCHAR + CHECK), so adding a value is a cheap migration.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


# ---------------------------------------------------------------- identity


class Org(Base):
    __tablename__ = "orgs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(
        back_populates="org", cascade="all, delete-orphan"
    )


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_platform_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(
        back_populates="user", cascade="all, delete-orphan"
    )


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "org_id", name="uq_membership_user_org"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    role: Mapped[Role] = mapped_column(_enum(Role, "role"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user: Mapped[User] = relationship(back_populates="memberships")
    org: Mapped[Org] = relationship(back_populates="memberships")


class UserSession(Base):
    """A login session; the JWT names it (``sid``) so logout and password change revoke it."""

    __tablename__ = "sessions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))


class LoginAttempt(Base):
    """Failed logins, kept in the database so throttling holds across API workers."""

    __tablename__ = "login_attempts"
    __table_args__ = (
        Index("ix_login_attempts_account_at", "account", "at"),
        Index("ix_login_attempts_ip_at", "ip", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(254))
    ip: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    """An OpenAI-endpoint key. Only the SHA-256 of the secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    allowed_models: Mapped[list[str] | None] = mapped_column(JSONDoc)
    rpm_limit: Mapped[int | None] = mapped_column(Integer)
    tpm_limit: Mapped[int | None] = mapped_column(Integer)
    monthly_budget_eur: Mapped[Decimal | None] = mapped_column(Money)


class ServiceToken(Base):
    """A token for a data-plane component (node provider, ingress) calling internal endpoints."""

    __tablename__ = "service_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    component: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # What the token may call (``core.keys.SERVICE_SCOPES``); each internal route accepts only
    # its scopes. Null (a token created before scopes existed): nothing.
    scopes: Mapped[list[str] | None] = mapped_column(JSONDoc)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OrgInvitation(Base):
    """An org admin's invitation of a user into an org with a role; the membership exists only
    once the invited user accepts it."""

    __tablename__ = "org_invitations"
    __table_args__ = (UniqueConstraint("org_id", "user_id", name="uq_invitation_org_user"),
                      UniqueConstraint("org_id", "invited_username",
                                       name="uq_invitation_org_username"))

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    # NULL while the invited username names no active non-member user: the invitation is kept
    # anyway (so the org's pending list never tells which usernames exist) and binds to the
    # user who holds that username when they look at their invitations.
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    invited_username: Mapped[str | None] = mapped_column(String(64))
    role: Mapped[Role] = mapped_column(_enum(Role, "invitation_role"))
    invited_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# ---------------------------------------------------------------- catalog


class Provider(Base):
    __tablename__ = "providers"

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    # Billing rule: granularity in seconds and minimum billed seconds per interval.
    billing_granularity_seconds: Mapped[int] = mapped_column(Integer, default=60)
    billing_minimum_seconds: Mapped[int] = mapped_column(Integer, default=60)


class Region(Base):
    __tablename__ = "regions"

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    provider_code: Mapped[str] = mapped_column(ForeignKey("providers.code", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(100))


class Zone(Base):
    __tablename__ = "zones"

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    region_code: Mapped[str] = mapped_column(ForeignKey("regions.code", ondelete="CASCADE"))
    provider_code: Mapped[str] = mapped_column(ForeignKey("providers.code", ondelete="CASCADE"))


class InstanceType(Base):
    __tablename__ = "instance_types"
    __table_args__ = (UniqueConstraint("provider_code", "name", name="uq_instance_type_name"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    provider_code: Mapped[str] = mapped_column(ForeignKey("providers.code", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    gpu_count: Mapped[int] = mapped_column(Integer, default=0)
    gpu_model: Mapped[str | None] = mapped_column(String(64))
    gpu_vram_gb: Mapped[int] = mapped_column(Integer, default=0)
    vcpus: Mapped[int] = mapped_column(Integer, default=0)
    ram_gb: Mapped[int] = mapped_column(Integer, default=0)
    # Ray resources a node of this type offers, e.g. {"GPU": 1, "accelerator_type:L4": 1}.
    ray_resources: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)

    prices: Mapped[list[InstanceTypePrice]] = relationship(
        back_populates="instance_type",
        cascade="all, delete-orphan",
        order_by="InstanceTypePrice.effective_from",
    )
    availability: Mapped[list[ZoneAvailability]] = relationship(
        back_populates="instance_type", cascade="all, delete-orphan"
    )


class InstanceTypePrice(Base):
    """Hourly EUR price in force from ``effective_from`` until the next row's."""

    __tablename__ = "instance_type_prices"
    __table_args__ = (
        UniqueConstraint("instance_type_id", "effective_from", name="uq_price_effective"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    instance_type_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("instance_types.id", ondelete="CASCADE"), index=True
    )
    effective_from: Mapped[datetime] = mapped_column(UTCDateTime)
    hourly_eur: Mapped[Decimal] = mapped_column(Money)

    instance_type: Mapped[InstanceType] = relationship(back_populates="prices")


class ZoneAvailability(Base):
    __tablename__ = "zone_availability"
    __table_args__ = (
        UniqueConstraint("instance_type_id", "zone_code", name="uq_availability_type_zone"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    instance_type_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("instance_types.id", ondelete="CASCADE")
    )
    zone_code: Mapped[str] = mapped_column(ForeignKey("zones.code", ondelete="CASCADE"))
    availability: Mapped[Availability] = mapped_column(_enum(Availability, "availability"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    instance_type: Mapped[InstanceType] = relationship(back_populates="availability")


# ---------------------------------------------------------------- models and deployments


class Model(Base):
    __tablename__ = "models"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    source: Mapped[str] = mapped_column(String(500))
    task: Mapped[str] = mapped_column(String(32), default="chat")
    max_model_len: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Deployment(Base):
    """A model deployment; ``spec`` is the validated deployment YAML as JSON."""

    __tablename__ = "deployments"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    model_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL")
    )
    spec: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    version: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(32), default="pending")
    status_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# ---------------------------------------------------------------- instances


class Instance(Base):
    """A VM (or local node) through its lifecycle. ``launch_id`` is the intent, written first."""

    __tablename__ = "instances"
    __table_args__ = (
        Index("ix_instances_state", "state"),
        Index("ix_instances_cluster", "cluster_name"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    launch_id: Mapped[str] = mapped_column(String(64), unique=True)
    cluster_name: Mapped[str] = mapped_column(String(64))
    provider_code: Mapped[str] = mapped_column(ForeignKey("providers.code"))
    zone_code: Mapped[str | None] = mapped_column(String(32))
    instance_type_name: Mapped[str] = mapped_column(String(64))
    node_type: Mapped[str | None] = mapped_column(String(64))
    provider_instance_id: Mapped[str | None] = mapped_column(String(128), index=True)
    ray_node_id: Mapped[str | None] = mapped_column(String(128))
    private_ip: Mapped[str | None] = mapped_column(String(64))
    public_ip: Mapped[str | None] = mapped_column(String(64))
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("deployments.id", ondelete="SET NULL"), index=True
    )
    state: Mapped[InstanceState] = mapped_column(
        _enum(InstanceState, "instance_state"), default=InstanceState.REQUESTED
    )
    state_entered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    state_deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # Optimistic concurrency: every transition bumps it.
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    history: Mapped[list[InstanceStateHistory]] = relationship(
        back_populates="instance",
        cascade="all, delete-orphan",
        order_by="InstanceStateHistory.id",
    )
    billing_intervals: Mapped[list[BillingInterval]] = relationship(
        back_populates="instance", cascade="all, delete-orphan",
        order_by="BillingInterval.started_at",
    )


class InstanceStateHistory(Base):
    __tablename__ = "instance_state_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True
    )
    from_state: Mapped[InstanceState | None] = mapped_column(_enum(InstanceState, "history_from"))
    to_state: Mapped[InstanceState] = mapped_column(_enum(InstanceState, "history_to"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    reason: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    actor: Mapped[str | None] = mapped_column(String(64))

    instance: Mapped[Instance] = relationship(back_populates="history")


class BillingInterval(Base):
    """Provider-confirmed existence of a VM: opened at creation, closed when confirmed gone."""

    __tablename__ = "billing_intervals"
    __table_args__ = (
        Index("ix_billing_intervals_window", "started_at", "ended_at"),
        CheckConstraint("ended_at IS NULL OR ended_at >= started_at", name="ck_interval_order"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True
    )
    provider_code: Mapped[str] = mapped_column(String(32))
    zone_code: Mapped[str | None] = mapped_column(String(32))
    instance_type_name: Mapped[str] = mapped_column(String(64))
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # FinOps ledger sync (finops.spans): cost spans written for this interval, and for its
    # closed state. Only finops writes these two flags.
    ledger_spans: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    ledger_closed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    instance: Mapped[Instance] = relationship(back_populates="billing_intervals")


# ---------------------------------------------------------------- logs, usage, budgets


class ActionLog(Base):
    __tablename__ = "action_logs"
    __table_args__ = (
        Index("ix_action_logs_created", "created_at", "id"),
        Index("ix_action_logs_type_status", "type", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String(64))
    component: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # success | failure | info
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    instance_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    org_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("action_logs.id", ondelete="SET NULL"))
    details: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONDoc)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UsageRecord(Base):
    """One OpenAI-endpoint request; ``request_id`` is the idempotency key."""

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_org_at", "org_id", "at"),
        Index("ix_usage_deployment_at", "deployment", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128), unique=True)
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    org_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    model: Mapped[str] = mapped_column(String(128))
    deployment: Mapped[str | None] = mapped_column(String(128))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    ttft_ms: Mapped[float | None] = mapped_column()
    duration_ms: Mapped[float | None] = mapped_column()
    status: Mapped[str] = mapped_column(String(32))
    streamed: Mapped[bool] = mapped_column(Boolean, default=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Counted in ``usage_hourly`` already (finops.rollup); only finops writes it.
    rolled_up: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class ProcessedEvent(Base):
    """Idempotency keys of internal batches already applied (lifecycle events)."""

    __tablename__ = "processed_events"

    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Budget(Base):
    __tablename__ = "budgets"
    __table_args__ = (
        UniqueConstraint("scope", "target_id", name="uq_budget_scope_target"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    scope: Mapped[BudgetScope] = mapped_column(_enum(BudgetScope, "budget_scope"))
    # The org, deployment or api key this budget is for; ``org_id`` is its owning org.
    target_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    org_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("orgs.id", ondelete="CASCADE"), index=True
    )
    monthly_eur: Mapped[Decimal] = mapped_column(Money)
    warning_ratio: Mapped[Decimal] = mapped_column(Money, default=Decimal("0.8"))
    state: Mapped[BudgetState] = mapped_column(
        _enum(BudgetState, "budget_state"), default=BudgetState.OK
    )
    state_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Last evaluation by finops.budgets: month-to-date spend and when it was computed.
    spent_eur: Mapped[Decimal | None] = mapped_column(Money)
    evaluated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# ---------------------------------------------------------------- finops derived data

# Pending finops work is found through these partial indexes (normally (almost) empty).
LEDGER_PENDING = "NOT ledger_closed AND (NOT ledger_spans OR ended_at IS NOT NULL)"
Index("ix_billing_intervals_ledger_pending", BillingInterval.id,
      postgresql_where=text(LEDGER_PENDING), sqlite_where=text(LEDGER_PENDING))
Index("ix_billing_intervals_ended", BillingInterval.ended_at)
Index("ix_usage_records_unrolled", UsageRecord.at,
      postgresql_where=text("NOT rolled_up"), sqlite_where=text("NOT rolled_up"))


class CostSpan(Base):
    """The billed span of a billing interval, split at price changes (derived by finops.spans).

    Times are integer microseconds since the epoch and prices integer micro-EUR per hour, so a
    window's cost is an exact integer sum. While the interval is open (``is_open``) its billed
    span ends at ``interval_start_us`` + the billing rule applied to ``now``.
    """

    __tablename__ = "cost_spans"
    __table_args__ = (
        # Two-column so an overlap test filters inside the index, without heap visits.
        Index("ix_cost_spans_start", "start_us", "end_us"),
        Index("ix_cost_spans_end", "end_us", "start_us"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    interval_id: Mapped[int] = mapped_column(
        ForeignKey("billing_intervals.id", ondelete="CASCADE"), index=True)
    instance_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    provider_code: Mapped[str] = mapped_column(String(32))
    zone_code: Mapped[str | None] = mapped_column(String(32))
    instance_type_name: Mapped[str] = mapped_column(String(64))
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    interval_start_us: Mapped[int] = mapped_column(BigInteger)
    start_us: Mapped[int] = mapped_column(BigInteger)
    # Closed interval: the piece's billed end. Open: the next price change (NULL if none).
    end_us: Mapped[int | None] = mapped_column(BigInteger)
    is_open: Mapped[bool] = mapped_column(Boolean)
    granularity_us: Mapped[int] = mapped_column(BigInteger)
    minimum_us: Mapped[int] = mapped_column(BigInteger)
    price_micro: Mapped[int] = mapped_column(BigInteger)


class BigUnits(TypeDecorator[int]):
    """Exact big integers: NUMERIC(40, 0) on Postgres (summed in SQL), text on SQLite (no float)."""

    impl = String(48)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(40, 0))
        return dialect.type_descriptor(String(48))

    def process_bind_param(self, value: int | None, dialect: Any) -> Any:
        if value is None:
            return None
        return Decimal(int(value)) if dialect.name == "postgresql" else str(int(value))

    def process_result_value(self, value: Any, dialect: Any) -> int | None:
        return None if value is None else int(value)


class CostDaily(Base):
    """Cost of CLOSED cost spans per UTC day and dimensions, in ledger units (finops.spans).

    ``dims`` is the canonical text of the dimensions; the row with ``dims = ''`` holds the day's
    total. Open spans are never here (they grow with the clock); a window's cost is whole days
    from here plus the partial days and open spans from ``cost_spans``.
    """

    __tablename__ = "cost_daily"
    __table_args__ = (UniqueConstraint("day_us", "dims", name="uq_cost_daily_day_dims"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    day_us: Mapped[int] = mapped_column(BigInteger)
    dims: Mapped[str] = mapped_column(String(300))
    provider_code: Mapped[str | None] = mapped_column(String(32))
    zone_code: Mapped[str | None] = mapped_column(String(32))
    instance_type_name: Mapped[str | None] = mapped_column(String(64))
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    units: Mapped[int] = mapped_column(BigUnits)


Index("ix_cost_spans_open", CostSpan.start_us,
      postgresql_where=text("is_open"), sqlite_where=text("is_open"))


class UsageHourly(Base):
    """Usage records summed per UTC hour and dimensions (finops.rollup); exact integer sums.

    ``dims`` is the canonical text of the dimensions, so NULLs still make one row per group.
    """

    __tablename__ = "usage_hourly"
    __table_args__ = (
        UniqueConstraint("hour", "dims", name="uq_usage_hourly_hour_dims"),
        Index("ix_usage_hourly_deployment_hour", "deployment", "hour"),
        Index("ix_usage_hourly_org_hour", "org_id", "hour"),
        Index("ix_usage_hourly_key_hour", "api_key_id", "hour"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime)
    dims: Mapped[str] = mapped_column(String(400))
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    org_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    model: Mapped[str] = mapped_column(String(128))
    deployment: Mapped[str | None] = mapped_column(String(128))
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)


class FinopsState(Base):
    """Small key/value state of finops (e.g. the price and billing-rule fingerprint)."""

    __tablename__ = "finops_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


import core.models_finops  # noqa: E402,F401 - registers the FinOps tables beyond the ledger's
import core.models_secrets  # noqa: E402,F401 - stored secrets (write-only values)
import core.models_weights  # noqa: E402,F401 - weight downloads per node (progress, errors)
