"""Routes under /api/internal for weight downloads (progress and errors per node)."""

from __future__ import annotations

from fastapi import APIRouter

from control_api.deps import IngressDep, NowDep, SessionDep, access
from control_api.services import weights as service
from core.wire_weights import WeightProgress, WeightProgressResult

router = APIRouter(prefix="/api/internal/weights", tags=["internal"])


@router.post("/progress", response_model=WeightProgressResult, openapi_extra=access("service"))
def post_weight_progress(body: WeightProgress, db: SessionDep, now: NowDep,
                         caller: IngressDep) -> WeightProgressResult:
    """A node's download progress (or error) for one deployment; the latest per node is shown
    in ``GET /api/deployments/{name}``. A ``failed`` state (with ``error``) marks the
    deployment failed and stops its scale-up until it is applied again. 404 for an unknown
    deployment. Scope ``ingress`` (the replicas use the ingress's token)."""
    service.record_progress(db, body, now)
    return WeightProgressResult()
