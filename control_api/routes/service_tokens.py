"""Routes under /api/service-tokens."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/service-tokens", tags=["service-tokens"])
