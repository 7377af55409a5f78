"""The reconciler: a level-triggered pass comparing the cloud's tagged VMs, Ray's nodes and the
database, so no VM leaks and no cost is lost.

Every pass, per cluster (``clouds`` maps a cluster name to its cloud adapter):

1. list the cloud's VMs tagged with the cluster (all pages, every zone) -- FIRST, so any VM listed
   was created before the database is read, and its intent row (written before the cloud call)
   is visible to the read that follows;
2. ask Ray which cloud instances it sees (``ray_nodes``; ``None`` = unknown);
3. read the database rows of the cluster that are not final, or still hold an open cost interval
   (and confirm, with one cloud call each, the absence of the VMs of rows the listing lacks);
4. plan (:mod:`~control_api.reconcile.planner`: pure, the rules are there), then apply
   (:mod:`~control_api.reconcile.applier`: one small transaction per action, each an action log
   child of the pass).

A listing that failed (5xx, timeout, HTML 502, pagination that kept changing) is never read as
"deleted": that cluster gets no deletion, no reap and no adoption this pass (only DB-only deadline
failures), and the report says so.

Single runner (:mod:`~control_api.reconcile.lock`): a pass that does not get the lock returns a
report with ``skipped="locked"`` at once. The control API runs a pass every
``INVENTIV_RECONCILE_INTERVAL_SECONDS`` as a periodic job (:mod:`control_api.background`) and on
``POST /api/reconcile/run``.
"""

from control_api.reconcile.lock import ADVISORY_LOCK_KEY, RunnerLock
from control_api.reconcile.report import (
    ClusterListing,
    ReconcileAction,
    ReconcileReport,
    ReconcileSettings,
)
from control_api.reconcile.runner import (
    Reconciler,
    ReconcilerNotWired,
    ReconcilerThread,
    no_ray,
    ray_gcs_nodes,
    reconcile_job,
    reconciler_from_settings,
    start_reconciler_thread,
)

__all__ = [
    "ADVISORY_LOCK_KEY", "ClusterListing", "ReconcileAction", "ReconcileReport",
    "ReconcileSettings", "Reconciler", "ReconcilerNotWired", "ReconcilerThread", "RunnerLock",
    "no_ray", "ray_gcs_nodes", "reconcile_job", "reconciler_from_settings",
    "start_reconciler_thread",
]
