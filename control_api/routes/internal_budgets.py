"""Routes under /api/internal for the ingress's budget admission (the budgets that apply to a
request's org, key and deployment, with what is already spent)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/internal", tags=["internal"])
