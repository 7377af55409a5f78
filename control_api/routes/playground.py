"""Routes under /api/playground: the console's chat playground."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
