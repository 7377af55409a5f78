"""Weight downloads per node (imported by :mod:`core.models`): one row per (deployment, node),
the latest progress or error the node's replica reported (``POST /api/internal/weights/
progress``). A ``failed`` row stops the deployment's scale-up until it is applied again."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, ForeignKey, String, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, JSONDoc, UTCDateTime, new_id, utcnow

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



class DeploymentSource(Base):
    """What a deployment's model source was pinned to at its last apply (one row per
    deployment): the source as written (``requested``, e.g. ``hf:org/m`` or ``hf:org/m@main``),
    the revision asked for (``revision_requested``; None: the default branch) and the commit it
    resolved to (``revision``; None: not pinned, ``warnings`` say why), the fit estimate with
    each candidate GPU (``fit``), and the ``placement.model_memory_gb`` the estimate filled in
    (``memory_filled_gb``; None: the user gave it, or there was no estimate). The stored spec
    holds the pinned source (``hf:org/m@<commit>``): that is what every replica downloads."""

    __tablename__ = "deployment_sources"

    deployment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True)
    requested: Mapped[str] = mapped_column(String(1024))
    revision_requested: Mapped[str | None] = mapped_column(String(255))
    revision: Mapped[str | None] = mapped_column(String(64))
    pinned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    fit: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    warnings: Mapped[list[str]] = mapped_column(JSONDoc, default=list)
    memory_filled_gb: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
