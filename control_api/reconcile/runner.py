"""One reconcile pass: read (cloud listing, Ray's view, database rows), plan, apply -- under the
single-runner lock -- and what runs it: the control API's periodic jobs, or ``POST
/api/reconcile/run``."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from control_api.background import Job, PeriodicJobs
from control_api.errors import ControlPlaneError
from control_api.ports import CloudsFactory
from control_api.reconcile.applier import COMPONENT, Applier, short_error
from control_api.reconcile.lock import RunnerLock
from control_api.reconcile.planner import (
    FINAL,
    ClusterView,
    RowView,
    confirmation_needed,
    match,
    plan_cluster,
)
from control_api.reconcile.report import ClusterListing, ReconcileReport, ReconcileSettings
from control_api.settings import Settings
from core.clouds import Cloud, CloudError, CloudInstance
from core.clouds import NotFound as CloudNotFound
from core.db import utcnow
from core.models import ActionLog, BillingInterval, Instance
from core.ray_private import GcsProbe

log = logging.getLogger(__name__)

RayNodes = Callable[[str], "set[str] | None"]


# ------------------------------------------------------------------------------ Ray


def ray_gcs_nodes(gcs_address: str, timeout_s: float = 5.0) -> RayNodes:
    """A ``ray_nodes`` source asking the Ray GCS (``host:port``) for its ALIVE nodes.

    Returns their cloud instance ids (each raylet's ``RAY_CLOUD_INSTANCE_ID``: the launch id
    our provider sets, or a VM id); ``None`` when the GCS cannot be asked -- unknown, never "no
    nodes". One GCS serves one cluster, so the cluster name is not used. Needs the cluster's
    Ray token in the environment (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN[_PATH]``).
    """
    probe = GcsProbe(gcs_address, timeout_s)

    def nodes(_cluster: str) -> set[str] | None:
        try:
            return set(probe.alive_instance_ids())
        except Exception as exc:  # noqa: BLE001 - Ray unreachable = unknown
            # The exception's type only: its text may carry the address's credentials.
            log.warning("reconciler: Ray GCS %s unavailable: %s", gcs_address,
                        type(exc).__name__)
            return None

    return nodes


def no_ray(_cluster: str) -> set[str] | None:
    """The ``ray_nodes`` source when Ray is not wired in: always unknown."""
    return None


# ------------------------------------------------------------------------------ the pass


def _provider_code(cloud: Cloud) -> str:
    return str(getattr(cloud, "provider_code", None) or cloud.name)


def _api_calls(cloud: Cloud) -> int:
    stats = getattr(cloud, "stats", None)
    try:
        return int(sum(stats.values())) if stats is not None else 0
    except (AttributeError, TypeError):
        return 0


def _row_view(inst: Instance, open_ids: set[uuid.UUID]) -> RowView:
    return RowView(inst.id, inst.launch_id, inst.state, inst.provider_instance_id,
                   inst.zone_code, inst.private_ip, inst.public_ip, inst.state_entered_at,
                   inst.state_deadline_at, inst.created_at, inst.id in open_ids)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Reconciler:
    """Compares cloud, Ray and database for each configured cluster; see
    :mod:`control_api.reconcile`."""

    def __init__(self, sessionmaker: sessionmaker[Session], clouds: Mapping[str, Cloud],
                 ray_nodes: RayNodes = no_ray, clock: Callable[[], datetime] = utcnow,
                 settings: ReconcileSettings | None = None) -> None:
        self.sessionmaker = sessionmaker
        self.clouds = dict(clouds)
        self.ray_nodes = ray_nodes
        self.clock = clock
        self.settings = settings or ReconcileSettings()
        engine = sessionmaker.kw.get("bind")
        if not isinstance(engine, Engine):
            raise ValueError("the sessionmaker must be bound to an Engine")
        self.lock = RunnerLock(engine)
        self.last_report: ReconcileReport | None = None
        self._volumes_reaped_at: dict[str, datetime] = {}

    def run_once(self, dry_run: bool = False, cluster: str | None = None) -> ReconcileReport:
        """One pass over every cluster (or only ``cluster``). Never raises for a cloud error."""
        report = ReconcileReport(started_at=self.clock(), dry_run=dry_run)
        t0 = time.perf_counter()
        with self.lock.hold() as got:
            if not got:
                report.skipped = "locked"
                report.finished_at = self.clock()
                return report
            if not dry_run:
                report.pass_log_id = self._open_pass_log(report)
            reaps_left = self.settings.max_reaps_per_pass
            for name, cloud in self.clouds.items():
                if cluster is not None and name != cluster:
                    continue
                try:
                    reaps_left -= self._reconcile_cluster(name, cloud, report, reaps_left)
                except SQLAlchemyError as exc:  # a DB hiccup aborts this cluster, not the pass
                    log.exception("reconciler: cluster %s aborted", name)
                    report.errors.append(f"cluster {name}: database error {short_error(exc)}")
            report.finished_at = self.clock()
            report.duration_ms = int((time.perf_counter() - t0) * 1000)
            report.api_calls = sum(c.api_calls for c in report.clusters)
            if not dry_run and report.pass_log_id is not None:
                self._close_pass_log(report)
        self.last_report = report
        log.info("reconciler pass%s: %s", " (dry run)" if dry_run else "", report.counts())
        return report

    def _open_pass_log(self, report: ReconcileReport) -> int:
        with self.sessionmaker.begin() as s:
            entry = ActionLog(type="reconcile.pass", component=COMPONENT, status="info",
                              created_at=report.started_at,
                              details={"clusters": sorted(self.clouds)})
            s.add(entry)
            s.flush()
            return entry.id

    def _close_pass_log(self, report: ReconcileReport) -> None:
        with self.sessionmaker.begin() as s:
            entry = s.get(ActionLog, report.pass_log_id)
            if entry is None:
                return
            entry.status = "failure" if report.errors else "success"
            entry.duration_ms = report.duration_ms
            summary = report.to_dict()
            entry.details = {"counts": report.counts(), "api_calls": report.api_calls,
                             "clusters": summary["clusters"], "errors": report.errors[:50],
                             "report": summary}

    def _reconcile_cluster(self, name: str, cloud: Cloud, report: ReconcileReport,
                           reaps_left: int) -> int:
        """Read, plan and apply one cluster; returns how many reaps it planned."""
        provider = _provider_code(cloud)
        status = ClusterListing(cluster=name, provider=provider)
        report.clusters.append(status)
        calls_before = _api_calls(cloud)
        # The listing FIRST: any VM listed was created before the rows are read, so its intent
        # row (written before the cloud call) is visible to the read that follows.
        vms: list[CloudInstance] | None
        try:
            vms = [vm for vm in cloud.list_instances(name) if vm.cluster_name in (None, name)]
            status.listed = len(vms)
        except Exception as exc:  # noqa: BLE001 - any failure is "unknown", never "deleted"
            vms = None
            status.listing = "failed"
            status.error = short_error(exc)
            status.deletions_skipped = True
            report.errors.append(f"cluster {name}: listing failed, deletions skipped "
                                 f"({status.error})")
        ray: set[str] | None = None
        if vms is not None:
            try:
                ray = self.ray_nodes(name)
            except Exception as exc:  # noqa: BLE001
                log.warning("reconciler: ray_nodes(%s) failed: %s", name, exc)
                ray = None
        status.ray = "ok" if ray is not None else "unknown"
        now = self.clock()
        rows = self._load_rows(name, provider)
        status.rows = len(rows)
        view = ClusterView(name, vms, frozenset(ray) if ray is not None else None, rows)
        if vms is not None:
            matching = match(vms, rows)
            stale = self._load_stale_rows(matching.unmatched) if matching.unmatched else {}
            view = ClusterView(
                name, vms, view.ray, rows,
                stale={vm.provider_instance_id: found for vm in matching.unmatched
                       if (found := stale.get(vm.provider_instance_id)
                           or stale.get(f"launch:{vm.launch_id}")) is not None},
                vm_exists=self._confirm(cloud, name, matching.unseen, now, report))
        plan = plan_cluster(view, now, self.settings, reaps_left)
        Applier(self.sessionmaker, cloud, cluster=name, provider=provider, report=report,
                now=now).apply_all(plan.actions)
        last = self._volumes_reaped_at.get(name)
        if vms is not None and not report.dry_run and (
                last is None or now - last >= self.settings.volume_reap_interval):
            self._volumes_reaped_at[name] = now
            self._reap_detached(name, cloud, report)
        status.api_calls = _api_calls(cloud) - calls_before
        return plan.reaps

    @staticmethod
    def _reap_detached(name: str, cloud: Cloud, report: ReconcileReport) -> None:
        """Delete the cluster's detached volumes (VMs deleted while nobody kept calling the
        provider leave them billed). Optional: only clouds with ``reap_detached_volumes``."""
        reap = getattr(cloud, "reap_detached_volumes", None)
        if reap is None:
            return
        try:
            report.reaped_volumes.extend(reap(name))
        except CloudError as exc:
            report.errors.append(f"cluster {name}: reaping detached volumes failed "
                                 f"({short_error(exc)})")

    def _confirm(self, cloud: Cloud, cluster: str, unseen: Sequence[RowView], now: datetime,
                 report: ReconcileReport) -> dict[uuid.UUID, bool]:
        """Ask the cloud whether the VMs of rows it did not list exist (only where it matters);
        a failed lookup is reported and leaves the row unjudged this pass."""
        out: dict[uuid.UUID, bool] = {}
        for row in unseen:
            lookup = confirmation_needed(row, now, self.settings)
            if lookup == "get":
                assert row.provider_instance_id is not None and row.zone is not None
                try:
                    cloud.get(row.provider_instance_id, row.zone)
                    out[row.id] = True
                except CloudNotFound:
                    out[row.id] = False
                except CloudError as exc:
                    report.errors.append(f"confirm {row.provider_instance_id}: "
                                         f"{short_error(exc)}")
            elif lookup == "launch":
                try:
                    out[row.id] = cloud.find_by_launch_id(cluster, row.launch_id) is not None
                except CloudError as exc:
                    report.errors.append(f"confirm launch {row.launch_id}: {short_error(exc)}")
        return out

    def _load_rows(self, cluster: str, provider: str) -> list[RowView]:
        """Rows of the cluster not final, plus final rows still holding an open interval."""
        with self.sessionmaker() as s:
            open_ids = set(s.scalars(
                select(BillingInterval.instance_id).join(Instance).where(
                    Instance.cluster_name == cluster, Instance.provider_code == provider,
                    BillingInterval.ended_at.is_(None))))
            insts = s.scalars(select(Instance).where(
                Instance.cluster_name == cluster, Instance.provider_code == provider,
                Instance.state.notin_(list(FINAL)))).all()
            rows = [_row_view(i, open_ids) for i in insts]
            known = {r.id for r in rows}
            extra = [i for i in open_ids if i not in known]
            for chunk in _chunks(extra, 500):
                rows.extend(_row_view(i, open_ids) for i in s.scalars(
                    select(Instance).where(Instance.id.in_(chunk))))
            return rows

    def _load_stale_rows(self, vms: list[CloudInstance]) -> dict[str, RowView]:
        """Rows naming these VMs (by id, or ``launch:<id>``): the VM outlived its row, or is a
        second VM of a launch."""
        out: dict[str, RowView] = {}
        pids = [v.provider_instance_id for v in vms]
        launches = [v.launch_id for v in vms if v.launch_id]
        with self.sessionmaker() as s:
            for chunk in _chunks(pids, 500):
                for inst in s.scalars(select(Instance).where(
                        Instance.provider_instance_id.in_(chunk))):
                    out.setdefault(inst.provider_instance_id or "", _row_view(inst, set()))
            for chunk in _chunks(launches, 500):
                for inst in s.scalars(select(Instance).where(Instance.launch_id.in_(chunk))):
                    out[f"launch:{inst.launch_id}"] = _row_view(inst, set())
        return out


# ------------------------------------------------------------------------------ wiring


class ReconcilerNotWired(ControlPlaneError, ValueError):
    """Clusters are configured but the control API was built without cloud adapters (still a
    ``ValueError``: a setting that cannot be honoured)."""

    code = "reconciler_not_wired"


def reconciler_from_settings(maker: sessionmaker[Session], settings: Settings,
                             clouds: CloudsFactory | None) -> Reconciler | None:
    """A reconciler for ``settings.reconcile_clusters`` (``INVENTIV_RECONCILE_CLUSTERS``) with
    the adapters ``clouds`` builds, Ray's view from ``settings.reconcile_ray_gcs``; ``None``
    when no cluster is configured. Raises ``ValueError`` for a bad cluster setting and
    :class:`ReconcilerNotWired` when no ``clouds`` factory was given."""
    if not settings.reconcile_clusters:
        return None
    if clouds is None:
        raise ReconcilerNotWired(
            "clusters to reconcile are configured (INVENTIV_RECONCILE_CLUSTERS) but this control"
            " API has no cloud adapters wired: start it through cli.compose (`inventiv api"
            " serve`)")
    gcs = settings.reconcile_ray_gcs
    return Reconciler(maker, clouds(settings.reconcile_clusters),
                      ray_nodes=ray_gcs_nodes(gcs) if gcs else no_ray)


def reconcile_job(rec: Reconciler) -> Job:
    """A periodic job running one pass of ``rec`` (which keeps its own sessions and clock)."""
    def job(_session: Session, _now: datetime) -> object:
        return rec.run_once().counts()

    return job


@dataclass
class ReconcilerThread:
    """A reconciler run by its periodic job; ``stop()`` ends it after the current pass."""

    reconciler: Reconciler
    jobs: PeriodicJobs
    thread: threading.Thread

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current pass (waiting up to ``timeout`` seconds for it)."""
        self.jobs.stop(timeout)


def start_reconciler_thread(target: Reconciler | sessionmaker[Session],
                            clouds: Mapping[str, Cloud] | None = None, *,
                            interval_s: float = 60.0, ray_nodes: RayNodes = no_ray,
                            clock: Callable[[], datetime] = utcnow,
                            settings: ReconcileSettings | None = None) -> ReconcilerThread:
    """Run a pass at once, then every ``interval_s`` seconds, until stopped.

    ``target``: a :class:`Reconciler`, or a ``sessionmaker`` to build one for ``clouds``. Several
    API workers may each run one: the single-runner lock makes all but one skip each pass.
    """
    if isinstance(target, Reconciler):
        rec = target
    else:
        if clouds is None:
            raise ValueError("clouds are required unless a Reconciler is given")
        rec = Reconciler(target, clouds, ray_nodes=ray_nodes, clock=clock, settings=settings)
    jobs = PeriodicJobs(rec.sessionmaker, {"reconcile": reconcile_job(rec)}, interval_s,
                        run_at_start=True, thread_name="inventiv-reconciler")
    return ReconcilerThread(rec, jobs, jobs.start())
