"""Routes under /api/orgs."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/orgs", tags=["orgs"])
