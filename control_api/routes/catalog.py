"""Routes under /api/catalog."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/catalog", tags=["catalog"])
