"""Weight downloads per node (imported by :mod:`core.models`): one row per (deployment, node),
the latest progress or error the node's replica reported (``POST /api/internal/weights/
progress``). A ``failed`` row stops the deployment's scale-up until it is applied again."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime, new_id, utcnow

WEIGHT_STATES = ("downloading", "verifying", "ready", "failed")


class WeightDownload(Base):
    __tablename__ = "weight_downloads"
    __table_args__ = (UniqueConstraint("deployment_id", "node_id",
                                       name="uq_weight_download_node"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    deployment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    node_id: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(1024))
    revision: Mapped[str | None] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(String(2000))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

