"""Stored secrets (imported by :mod:`core.models`): values a deployment spec references as
``{secret: NAME}`` (Hugging Face tokens, S3 keys, env values). The value is write-only: stored
encrypted (AES-GCM, key held by the control API, never in the database), returned by no user
route; only the replicas of a deployment that references it get it, through the internal API."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, LargeBinary, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime, new_id, utcnow


class StoredSecret(Base):
    """One secret. ``ciphertext`` is nonce + AES-GCM output, bound to ``name``; ``key_id``
    fingerprints the key that sealed it (a changed server key is named, not a garbled value)."""

    __tablename__ = "secrets"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str | None] = mapped_column(String(500))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    key_id: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"))
    updated_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"))
