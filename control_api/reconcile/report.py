"""What a reconcile pass is tuned by (:class:`ReconcileSettings`) and what it reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class ReconcileSettings:
    """Grace periods and safety limits of the reconciler.

    ``adopt_grace``: how old an orphan VM must be before it is adopted -- lifecycle events are
    spooled by the data plane while the control API is away, so a VM's intent row may arrive late.
    ``reap_grace``: how old an orphan that Ray does not see must be before it is deleted; longer
    than create + boot + join (a few minutes on Scaleway GPU types) plus the spool flush, so a VM
    still booting is never reaped. ``terminate_retry``: a ``terminating`` row whose VM is still
    listed this long after gets its terminate resent. ``max_reaps_per_pass``: a brake -- a pass
    that would delete more than this many VMs deletes only that many and reports the rest.
    ``volume_reap_interval``: detached volumes tagged with the cluster are deleted at most this
    often per cluster (the first pass of a runner always looks).
    """

    adopt_grace: timedelta = timedelta(minutes=2)
    reap_grace: timedelta = timedelta(minutes=15)
    terminate_retry: timedelta = timedelta(minutes=2)
    reap_when_ray_unknown: bool = False
    max_reaps_per_pass: int = 50
    # How often a cluster's detached SBS volumes are looked for (one listing per zone).
    volume_reap_interval: timedelta = timedelta(minutes=10)


@dataclass
class ReconcileAction:
    """One thing the pass did (or, in dry-run, would do)."""

    kind: str  # adopt | reap | close_interval | fail_stuck | advance | record | defer
    cluster: str
    provider_instance_id: str | None = None
    launch_id: str | None = None
    instance_id: str | None = None
    reason: str = ""
    applied: bool = False
    error: str | None = None


@dataclass
class ClusterListing:
    """How the pass went for one cluster."""

    cluster: str
    provider: str
    listing: str = "ok"  # ok | failed
    listed: int | None = None
    error: str | None = None
    deletions_skipped: bool = False
    ray: str = "unknown"  # ok | unknown
    rows: int = 0
    api_calls: int = 0


@dataclass
class ReconcileReport:
    """What one pass saw and did. ``skipped`` is set (``"locked"``) when another runner ran."""

    started_at: datetime
    dry_run: bool
    skipped: str | None = None
    finished_at: datetime | None = None
    duration_ms: int = 0
    api_calls: int = 0
    clusters: list[ClusterListing] = field(default_factory=list)
    adopted: list[ReconcileAction] = field(default_factory=list)
    reaped: list[ReconcileAction] = field(default_factory=list)
    closed_intervals: list[ReconcileAction] = field(default_factory=list)
    failed_stuck: list[ReconcileAction] = field(default_factory=list)
    advanced: list[ReconcileAction] = field(default_factory=list)
    recorded: list[ReconcileAction] = field(default_factory=list)
    deferred: list[ReconcileAction] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Detached SBS volumes of the clusters deleted this pass (clouds that can reap them).
    reaped_volumes: list[str] = field(default_factory=list)
    pass_log_id: int | None = None

    def add(self, action: ReconcileAction) -> None:
        """File ``action`` under its kind (and its error, if any, under ``errors``)."""
        bucket = {"adopt": self.adopted, "reap": self.reaped,
                  "close_interval": self.closed_intervals, "fail_stuck": self.failed_stuck,
                  "advance": self.advanced, "record": self.recorded,
                  "defer": self.deferred}[action.kind]
        bucket.append(action)
        if action.error:
            self.errors.append(f"{action.kind} {action.provider_instance_id or action.launch_id}:"
                               f" {action.error}")

    def counts(self) -> dict[str, int]:
        """How many actions of each kind (for logs and the parent action log)."""
        return {"adopted": len(self.adopted), "reaped": len(self.reaped),
                "closed_intervals": len(self.closed_intervals),
                "failed_stuck": len(self.failed_stuck), "advanced": len(self.advanced),
                "recorded": len(self.recorded), "deferred": len(self.deferred),
                "errors": len(self.errors)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO-8601 strings."""
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        data["counts"] = self.counts()
        return data
