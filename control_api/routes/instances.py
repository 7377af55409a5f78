"""Routes under /api/instances."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/instances", tags=["instances"])
