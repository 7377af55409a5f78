"""Routes under /api/internal for weight downloads (progress and errors per node)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
