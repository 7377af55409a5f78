"""Routes under /api/secrets: stored secrets (write-only values)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
