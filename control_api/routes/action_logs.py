"""Routes under /api/action-logs."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/action-logs", tags=["action-logs"])
