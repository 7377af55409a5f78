"""Weight downloads per node: the progress and errors the replicas report, and what a failed
download does to its deployment.

A ``failed`` report makes the deployment ``failed`` (``status_message``: the node, the error
code and message) and takes it out of the Serve config the sync job renders
(:func:`failed_deployment_ids`), so Serve stops starting replicas of it and the node it would
have used is not held by it (the Ray autoscaler reclaims the idle node). Applying the deployment
again (``inventiv deploy -f``, even unchanged) clears its download rows and retries.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from control_api.errors import NotFound
from core.models import Deployment
from core.models_weights import WeightDownload
from core.wire_weights import WeightProgress

FAILED_PREFIX = "weights failed"


def record_progress(db: Session, report: WeightProgress, now: datetime) -> WeightDownload:
    """Upsert the (deployment, node) row; 404 ``deployment_not_found`` for an unknown or
    deleted deployment. A failure marks the deployment failed (see the module docstring)."""
    dep = db.scalar(select(Deployment).where(Deployment.name == report.deployment,
                                             Deployment.deleted_at.is_(None)))
    if dep is None:
        raise NotFound(f"deployment {report.deployment!r} not found",
                       code="deployment_not_found")
    row = db.scalar(select(WeightDownload).where(WeightDownload.deployment_id == dep.id,
                                                 WeightDownload.node_id == report.node_id)
                    .with_for_update())
    if row is None:
        row = WeightDownload(deployment_id=dep.id, node_id=report.node_id)
        db.add(row)
    row.source, row.revision, row.state = report.source, report.revision, report.state
    row.bytes_done, row.bytes_total = report.bytes_done, report.bytes_total
    row.error_code = report.error.code if report.error else None
    row.error_message = report.error.message if report.error else None
    row.updated_at = now
    if report.error is not None:
        dep.status = "failed"
        dep.status_message = (f"{FAILED_PREFIX} on node {report.node_id}: "
                              f"{report.error.code}: {report.error.message}")[:2000]
        dep.updated_at = now
    db.flush()
    return row


def failed_deployment_ids(db: Session) -> set[uuid.UUID]:
    """Deployments with a failed download: kept out of Serve until applied again."""
    return set(db.scalars(select(WeightDownload.deployment_id)
                          .where(WeightDownload.state == "failed")))


def clear(db: Session, deployment_id: uuid.UUID) -> bool:
    """Forget a deployment's downloads (it is applied again); True if one had failed."""
    failed = db.scalar(select(WeightDownload.id).where(
        WeightDownload.deployment_id == deployment_id,
        WeightDownload.state == "failed").limit(1)) is not None
    db.execute(delete(WeightDownload).where(WeightDownload.deployment_id == deployment_id))
    return failed


def downloads(db: Session, deployment_ids: list[uuid.UUID]
              ) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """Per deployment, its nodes' downloads as the API shows them (by node id)."""
    out: dict[uuid.UUID, list[dict[str, Any]]] = {d: [] for d in deployment_ids}
    if not deployment_ids:
        return out
    for row in db.scalars(select(WeightDownload)
                          .where(WeightDownload.deployment_id.in_(deployment_ids))
                          .order_by(WeightDownload.node_id)):
        out[row.deployment_id].append({
            "node_id": row.node_id, "state": row.state, "bytes_done": row.bytes_done,
            "bytes_total": row.bytes_total, "revision": row.revision,
            "error": None if row.error_code is None else {
                "code": row.error_code, "message": row.error_message or ""},
            "updated_at": row.updated_at})
    return out
