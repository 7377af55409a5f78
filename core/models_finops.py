"""FinOps tables beyond the ledger's (imported by :mod:`core.models`, so ``Base.metadata``
holds them).

- ``replica_placements``: which Serve replica ran on which node, when (recorded by the control
  API's Serve sync from Serve's REST status); :mod:`finops.attribution` splits each worker node's
  cost across the deployments it hosted.
- ``budget_webhooks``: where budget threshold notifications go (generic JSON or Slack).
- ``budget_threshold_events``: one row per (budget, period, threshold) fired, so a threshold
  fires once per period.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime, new_id, utcnow
from core.models import CostDaily

# The summary's whole-day totals (``dims = ''``, one row a day) without scanning the per-dims rows.
Index("ix_cost_daily_totals", CostDaily.day_us,
      postgresql_where=text("dims = ''"), sqlite_where=text("dims = ''"))


class ReplicaPlacement(Base):
    """A Serve replica on a node from ``started_at`` to ``ended_at`` (open while it runs).

    ``share_ppm``: the part of the node's accelerator resources the replica holds, in parts
    per million (1_000_000 = the whole node).
    """

    __tablename__ = "replica_placements"
    __table_args__ = (
        Index("ix_replica_placements_instance", "instance_id", "started_at"),
        Index("ix_replica_placements_open", "ended_at"),
        UniqueConstraint("replica_id", "ray_node_id", "started_at",
                         name="uq_replica_placement"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    replica_id: Mapped[str] = mapped_column(String(200))
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    deployment: Mapped[str] = mapped_column(String(128))
    ray_node_id: Mapped[str] = mapped_column(String(128))
    instance_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    share_ppm: Mapped[int] = mapped_column(Integer, default=1_000_000)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class BudgetWebhook(Base):
    """A budget notification target: ``kind`` generic (JSON) or slack; HMAC-signed with
    ``secret``. ``org_id`` None: platform-wide (every budget)."""

    __tablename__ = "budget_webhooks"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    kind: Mapped[str] = mapped_column(String(16), default="generic")
    secret: Mapped[str] = mapped_column(String(200))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BudgetThresholdEvent(Base):
    """A budget threshold crossed in a period (fires once: unique per budget/period/pct)."""

    __tablename__ = "budget_threshold_events"
    __table_args__ = (
        UniqueConstraint("budget_id", "period_start", "threshold_pct",
                         name="uq_budget_threshold_once"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    budget_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("budgets.id", ondelete="CASCADE"), index=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    threshold_pct: Mapped[int] = mapped_column(Integer)
    spent_eur: Mapped[str] = mapped_column(String(40))
    fired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
