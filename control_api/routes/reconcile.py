"""``/api/reconcile``: run a reconcile pass on demand (or a dry run) and read the last report.

The reconciler is ``app.state.reconciler`` (set by the app's lifespan when its periodic job
runs); without one, it is built once from the app's settings (``INVENTIV_RECONCILE_CLUSTERS``)
and its data plane's cloud adapters (see :func:`control_api.reconcile.reconciler_from_settings`).
The last report survives restarts through the ``reconcile.pass`` action log of each (non-dry)
pass.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from control_api.deps import AdminDep, SessionDep, access
from control_api.errors import Conflict, NotFound
from control_api.reconcile import Reconciler, reconciler_from_settings
from core.models import ActionLog

router = APIRouter(prefix="/api/reconcile", tags=["reconcile"])
_build_lock = threading.Lock()


class ReconcileRunRequest(BaseModel):
    """``POST /api/reconcile/run``."""

    model_config = ConfigDict(extra="forbid")

    dry_run: bool = False
    cluster: str | None = Field(default=None, min_length=1, max_length=64)


class ReconcilerNotConfigured(Conflict):
    code = "reconciler_not_configured"


def get_reconciler(request: Request) -> Reconciler:
    """The app's reconciler, built from its settings on first use if none was wired."""
    state = request.app.state
    rec = getattr(state, "reconciler", None)
    if rec is not None:
        return rec  # type: ignore[no-any-return]
    with _build_lock:
        rec = getattr(state, "reconciler", None)
        if rec is None:
            try:
                rec = reconciler_from_settings(state.sessionmaker, state.settings,
                                               state.plane.clouds)
            except ValueError as exc:
                raise ReconcilerNotConfigured(str(exc)) from None
            if rec is None:
                raise ReconcilerNotConfigured(
                    "no cluster to reconcile: set INVENTIV_RECONCILE_CLUSTERS")
            state.reconciler = rec
    return rec  # type: ignore[no-any-return]


@router.post("/run", openapi_extra=access("platform_admin"))
def run_reconcile(body: ReconcileRunRequest, request: Request, db: SessionDep,
                  _admin: AdminDep) -> dict[str, Any]:
    """Run one pass now (``dry_run``: report only, change nothing). A pass already running
    elsewhere makes this one answer ``skipped: "locked"``."""
    rec = get_reconciler(request)
    if body.cluster is not None and body.cluster not in rec.clouds:
        raise NotFound(f"cluster {body.cluster!r} is not reconciled here")
    # The pass writes through its own sessions: end the request's transaction first (on SQLite
    # every transaction takes the write lock up front, so holding it would block the pass).
    db.commit()
    return rec.run_once(dry_run=body.dry_run, cluster=body.cluster).to_dict()


@router.get("/last", openapi_extra=access("platform_admin"))
def last_report(request: Request, db: SessionDep, _admin: AdminDep) -> dict[str, Any]:
    """The last pass's report: this process's last run (dry runs included), else the last
    recorded pass in the action logs."""
    rec = getattr(request.app.state, "reconciler", None)
    if rec is not None and rec.last_report is not None:
        return rec.last_report.to_dict()  # type: ignore[no-any-return]
    entry = db.scalar(select(ActionLog).where(ActionLog.type == "reconcile.pass",
                                              ActionLog.status != "info")
                      .order_by(ActionLog.created_at.desc(), ActionLog.id.desc()).limit(1))
    if entry is None or not isinstance(entry.details, dict) or "report" not in entry.details:
        raise NotFound("no reconcile pass has run yet")
    return entry.details["report"]  # type: ignore[no-any-return]
