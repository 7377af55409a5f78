"""Routes under /api/internal."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/internal", tags=["internal"])
