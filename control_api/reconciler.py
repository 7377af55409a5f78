"""The reconciler: a level-triggered pass comparing the cloud's tagged VMs, Ray's nodes and the
database, so no VM leaks and no cost is lost.

Every pass, per cluster (``clouds`` maps a cluster name to its cloud adapter):

1. list the cloud's VMs tagged with the cluster (all pages, every zone) -- FIRST, so any VM listed
   was created before the database is read, and its intent row (written before the cloud call)
   is visible to the read that follows;
2. ask Ray which cloud instances it sees (``ray_nodes``; ``None`` = unknown);
3. read the database rows of the cluster that are not final, or still hold an open cost interval;
4. compare, then act -- one small transaction per action, each an action log child of the pass:

- VM matched to a live row (by provider instance id, else launch id): record the facts the cloud
  gives (id, zone, IPs) and open the cost interval from the VM's creation (Scaleway bills from
  creation); a row before ``ready`` whose VM Ray already sees is moved to ``ready`` (the node
  joined even if the provider died before saying so); a row past its state deadline is failed
  (``deadline_exceeded``) and, before ``ready`` or while ``terminating``, its VM is reaped; a
  ``terminating`` row whose VM is still there after ``terminate_retry`` gets its terminate resent.
- VM with no live row (an orphan: intent never written or lost, or a row already failed/ended):
  older than ``adopt_grace``, seen by Ray, and with no failed row -> ADOPT (a row in ``ready`` /
  ``booting``, cost interval from the VM's creation); older than ``reap_grace`` and not seen by
  Ray -> REAP (a row in ``terminating`` with the interval from creation is written BEFORE the
  terminate call, so a crash never loses the cost; the interval closes when the VM is confirmed
  gone). When Ray's view is unknown only VMs that cannot be Ray nodes (stopped) are reaped,
  unless ``reap_when_ray_unknown``. A VM tagged ``inventiv-node-type=head`` is never reaped.
- live row (or failed row with an open interval) whose VM the cloud did not list: only if that
  cluster's listing succeeded completely; the absence is confirmed by ``get`` (``NotFound``) or,
  with no provider id, by ``find_by_launch_id``; then the interval is closed at the observed time
  and the row ends (``terminated``; ``failed``/``vm_lost`` before ``ready``). A row in
  ``requested``/``provisioning`` with no VM is only judged past its deadline: ``launch_lost``.
- a listing that failed (5xx, timeout, HTML 502, pagination that kept changing) is never read as
  "deleted": that cluster gets no deletion, no reap and no adoption this pass (only DB-only
  deadline failures), and the report says so.

Single runner: on Postgres a session-level ``pg_try_advisory_lock`` held on a dedicated
connection for the whole pass; on SQLite (the one-process laptop default) a process-wide lock per
database plus an ``flock`` on ``<db file>.reconcile.lock`` for other processes. A pass that does
not get the lock returns a report with ``skipped="locked"`` at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from control_api.errors import InvalidTransition
from control_api.lifecycle import (
    close_billing_interval,
    deadline_for,
    open_billing_interval,
    transition,
)
from core.clouds import Cloud, CloudError, CloudInstance, InstanceStatus
from core.clouds import NotFound as CloudNotFound
from core.db import utcnow
from core.models import (
    ActionLog,
    BillingInterval,
    Instance,
    InstanceState,
    InstanceStateHistory,
)

log = logging.getLogger(__name__)
S = InstanceState

COMPONENT = "reconciler"
# The advisory-lock key of the reconciler (any fixed 64-bit value unique in this database).
ADVISORY_LOCK_KEY = 0x1A7E_4EC0_0000_0001
PRE_READY = frozenset({S.REQUESTED, S.PROVISIONING, S.BOOTING, S.JOINING})
NOT_LAUNCHED = frozenset({S.REQUESTED, S.PROVISIONING})
FINAL = frozenset({S.TERMINATED, S.ARCHIVED})
HEAD_NODE_TYPES = frozenset({"head", "ray-head", "ray.head.default"})

RayNodes = Callable[[str], "set[str] | None"]


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
    """

    adopt_grace: timedelta = timedelta(minutes=2)
    reap_grace: timedelta = timedelta(minutes=15)
    terminate_retry: timedelta = timedelta(minutes=2)
    reap_when_ray_unknown: bool = False
    max_reaps_per_pass: int = 50


# ------------------------------------------------------------------------------ report


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
    pass_log_id: int | None = None

    def add(self, action: ReconcileAction) -> None:
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


# ------------------------------------------------------------------------------ single runner


_PROCESS_LOCKS: dict[str, threading.Lock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


class RunnerLock:
    """At most one reconcile pass at a time per database (see the module docstring)."""

    def __init__(self, engine: Engine, key: int = ADVISORY_LOCK_KEY) -> None:
        self.engine = engine
        self.key = key

    @contextlib.contextmanager
    def hold(self) -> Iterator[bool]:
        """Yield True with the lock held for the block, False (at once) if another holds it."""
        if self.engine.dialect.name == "postgresql":
            with self._hold_postgres() as got:
                yield got
        else:
            with self._hold_local() as got:
                yield got

    @contextlib.contextmanager
    def _hold_postgres(self) -> Iterator[bool]:
        # Session-level lock on a dedicated connection: it lasts as long as the connection, and
        # a runner that dies loses it with its connection (no stale lock to clean up).
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                    {"k": self.key}).scalar())
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        finally:
            conn.close()

    @contextlib.contextmanager
    def _hold_local(self) -> Iterator[bool]:
        url = self.engine.url.render_as_string(hide_password=True)
        with _PROCESS_LOCKS_GUARD:
            lock = _PROCESS_LOCKS.setdefault(url, threading.Lock())
        if not lock.acquire(blocking=False):
            yield False
            return
        try:
            path = self.engine.url.database
            if not path or path == ":memory:":
                yield True
                return
            import fcntl

            with open(f"{path}.reconcile.lock", "a+") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    yield False
                    return
                try:
                    yield True
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        finally:
            lock.release()


# ------------------------------------------------------------------------------ Ray


def ray_gcs_nodes(gcs_address: str, timeout_s: float = 5.0) -> RayNodes:
    """A ``ray_nodes`` source asking the Ray GCS (``host:port``) for its ALIVE nodes.

    Returns their cloud instance ids (each raylet's ``RAY_CLOUD_INSTANCE_ID``: the launch id
    our provider sets, or a VM id); ``None`` when the GCS cannot be asked -- unknown, never "no
    nodes". One GCS serves one cluster, so the cluster name is not used. Needs the cluster's
    Ray token in the environment (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN[_PATH]``).
    """
    holder: dict[str, Any] = {}

    def nodes(_cluster: str) -> set[str] | None:
        try:
            from ray._raylet import GcsClient  # type: ignore[attr-defined]
            from ray.core.generated import gcs_pb2

            client = holder.get("client")
            if client is None:
                client = holder["client"] = GcsClient(address=gcs_address)
            infos = client.get_all_node_info(timeout=timeout_s)
            alive = gcs_pb2.GcsNodeInfo.ALIVE  # type: ignore[attr-defined]
            return {info.instance_id for info in infos.values()
                    if info.state == alive and info.instance_id}
        except Exception as exc:  # noqa: BLE001 - Ray unreachable = unknown
            holder.pop("client", None)
            log.warning("reconciler: Ray GCS %s unavailable: %s", gcs_address,
                        type(exc).__name__)
            return None

    return nodes


def no_ray(_cluster: str) -> set[str] | None:
    """The ``ray_nodes`` source when Ray is not wired in: always unknown."""
    return None


# ------------------------------------------------------------------------------ the reconciler


def _provider_code(cloud: Cloud) -> str:
    return str(getattr(cloud, "provider_code", None) or cloud.name)


def _api_calls(cloud: Cloud) -> int:
    stats = getattr(cloud, "stats", None)
    try:
        return int(sum(stats.values())) if stats is not None else 0
    except (AttributeError, TypeError):
        return 0


def _short(exc: BaseException) -> str:
    return f"{getattr(exc, 'code', type(exc).__name__)}: {exc}"[:500]


@dataclass
class _Row:
    """A snapshot of an instance row taken after the listing (never written back)."""

    id: uuid.UUID
    launch_id: str
    state: InstanceState
    provider_instance_id: str | None
    zone: str | None
    private_ip: str | None
    public_ip: str | None
    state_entered_at: datetime
    deadline: datetime | None
    created_at: datetime
    has_open_interval: bool

    @classmethod
    def of(cls, inst: Instance, open_ids: set[uuid.UUID]) -> _Row:
        return cls(inst.id, inst.launch_id, inst.state, inst.provider_instance_id,
                   inst.zone_code, inst.private_ip, inst.public_ip, inst.state_entered_at,
                   inst.state_deadline_at, inst.created_at, inst.id in open_ids)


class Reconciler:
    """Compares cloud, Ray and database for each configured cluster; see the module docstring."""

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
        self._reaps_left = self.settings.max_reaps_per_pass

    # -------------------------------------------------------------- pass

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
            self._reaps_left = self.settings.max_reaps_per_pass
            for name, cloud in self.clouds.items():
                if cluster is not None and name != cluster:
                    continue
                try:
                    self._reconcile_cluster(name, cloud, report)
                except SQLAlchemyError as exc:  # a DB hiccup aborts this cluster, not the pass
                    log.exception("reconciler: cluster %s aborted", name)
                    report.errors.append(f"cluster {name}: database error {_short(exc)}")
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

    # -------------------------------------------------------------- one cluster

    def _reconcile_cluster(self, name: str, cloud: Cloud, report: ReconcileReport) -> None:
        provider = _provider_code(cloud)
        status = ClusterListing(cluster=name, provider=provider)
        report.clusters.append(status)
        calls_before = _api_calls(cloud)
        vms: list[CloudInstance] | None
        try:
            vms = [vm for vm in cloud.list_instances(name) if vm.cluster_name in (None, name)]
            status.listed = len(vms)
        except Exception as exc:  # noqa: BLE001 - any failure is "unknown", never "deleted"
            vms = None
            status.listing = "failed"
            status.error = _short(exc)
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
        ctx = _Ctx(self, name, cloud, provider, report, now, ray)

        rows = self._load_rows(name, provider)
        status.rows = len(rows)
        if vms is None:
            # Nothing is known about the cloud: only DB-only facts (deadlines) are acted on.
            for stuck in rows:
                if stuck.deadline is not None and stuck.deadline <= now and \
                        stuck.state != S.FAILED:
                    ctx.fail_stuck(stuck, None)
            status.api_calls = _api_calls(cloud) - calls_before
            return

        by_pid = {r.provider_instance_id: r for r in rows if r.provider_instance_id}
        by_launch = {r.launch_id: r for r in rows}
        matched: set[uuid.UUID] = set()
        unmatched: list[CloudInstance] = []
        # A launch id must never have two VMs: the oldest one (or the recorded one) is kept.
        seen_launch: set[str] = set()
        row: _Row | None
        for vm in sorted(vms, key=lambda v: (v.provider_instance_id not in by_pid,
                                             v.created_at is None, v.created_at,
                                             v.provider_instance_id)):
            row = by_pid.get(vm.provider_instance_id)
            if row is None and vm.launch_id and vm.launch_id not in seen_launch:
                cand = by_launch.get(vm.launch_id)
                if cand is not None and cand.provider_instance_id in (None,
                                                                      vm.provider_instance_id):
                    row = cand
            if vm.launch_id:
                seen_launch.add(vm.launch_id)
            if row is None or row.id in matched:
                unmatched.append(vm)
                continue
            matched.add(row.id)
            if row.state == S.FAILED:
                ctx.vm_of_failed_row(vm, row)
            else:
                ctx.vm_of_live_row(vm, row)

        if unmatched:
            stale = self._load_stale_rows(name, unmatched)
            for vm in unmatched:
                ctx.orphan(vm, stale.get(vm.provider_instance_id)
                           or stale.get(f"launch:{vm.launch_id}"))

        for unseen in rows:
            if unseen.id not in matched:
                ctx.row_without_vm(unseen)
        status.api_calls = _api_calls(cloud) - calls_before

    def _load_rows(self, cluster: str, provider: str) -> list[_Row]:
        """Rows of the cluster not final, plus final rows still holding an open interval."""
        with self.sessionmaker() as s:
            open_ids = set(s.scalars(
                select(BillingInterval.instance_id).join(Instance).where(
                    Instance.cluster_name == cluster, Instance.provider_code == provider,
                    BillingInterval.ended_at.is_(None))))
            insts = s.scalars(select(Instance).where(
                Instance.cluster_name == cluster, Instance.provider_code == provider,
                Instance.state.notin_(list(FINAL)))).all()
            rows = [_Row.of(i, open_ids) for i in insts]
            known = {r.id for r in rows}
            extra = [i for i in open_ids if i not in known]
            for chunk in _chunks(extra, 500):
                rows.extend(_Row.of(i, open_ids) for i in s.scalars(
                    select(Instance).where(Instance.id.in_(chunk))))
            return rows

    def _load_stale_rows(self, cluster: str, vms: list[CloudInstance]) -> dict[str, _Row]:
        """Final rows naming these VMs (by id, or ``launch:<id>``): the VM outlived its row."""
        out: dict[str, _Row] = {}
        pids = [v.provider_instance_id for v in vms]
        launches = [v.launch_id for v in vms if v.launch_id]
        with self.sessionmaker() as s:
            for chunk in _chunks(pids, 500):
                for inst in s.scalars(select(Instance).where(
                        Instance.provider_instance_id.in_(chunk))):
                    out.setdefault(inst.provider_instance_id or "", _Row.of(inst, set()))
            for chunk in _chunks(launches, 500):
                for inst in s.scalars(select(Instance).where(Instance.launch_id.in_(chunk))):
                    out[f"launch:{inst.launch_id}"] = _Row.of(inst, set())
        return out


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class _Ctx:
    """The actions of one cluster in one pass (shares the report, clock, dry-run flag)."""

    def __init__(self, rec: Reconciler, cluster: str, cloud: Cloud, provider: str,
                 report: ReconcileReport, now: datetime, ray: set[str] | None) -> None:
        self.rec = rec
        self.cluster = cluster
        self.cloud = cloud
        self.provider = provider
        self.report = report
        self.now = now
        self.ray = ray
        self.dry = report.dry_run
        self.settings = rec.settings

    # -------------------------------------------------------------- helpers

    def ray_sees(self, vm: CloudInstance, *, by_launch_id: bool = True) -> bool | None:
        """Whether Ray has a node for this VM (its raylet's cloud instance id is the VM id or
        the launch id); ``None`` when Ray's view is unknown."""
        if self.ray is None:
            return None
        if vm.provider_instance_id in self.ray:
            return True
        return by_launch_id and bool(vm.launch_id) and vm.launch_id in self.ray

    def age(self, vm: CloudInstance) -> timedelta | None:
        return self.now - vm.created_at if vm.created_at is not None else None

    def action(self, kind: str, *, vm: CloudInstance | None = None, row: _Row | None = None,
               reason: str = "", instance_id: uuid.UUID | None = None) -> ReconcileAction:
        return ReconcileAction(
            kind=kind, cluster=self.cluster,
            provider_instance_id=(vm.provider_instance_id if vm else
                                  row.provider_instance_id if row else None),
            launch_id=(vm.launch_id if vm and vm.launch_id else row.launch_id if row else None),
            instance_id=str(instance_id or (row.id if row else "")) or None, reason=reason)

    @contextlib.contextmanager
    def unit(self, act: ReconcileAction, log_type: str,
             details: dict[str, Any] | None = None) -> Iterator[Session]:
        """One transaction for one action, with its child action log; errors are reported."""
        t0 = time.perf_counter()
        try:
            with self.rec.sessionmaker.begin() as s:
                yield s
                s.add(ActionLog(
                    type=log_type, component=COMPONENT, status="success",
                    instance_id=uuid.UUID(act.instance_id) if act.instance_id else None,
                    parent_id=self.report.pass_log_id, created_at=self.now,
                    duration_ms=int((time.perf_counter() - t0) * 1000),
                    details={"cluster": self.cluster, "provider": self.provider,
                             "provider_instance_id": act.provider_instance_id,
                             "launch_id": act.launch_id, "reason": act.reason,
                             **(details or {})}))
            act.applied = True
        except (InvalidTransition, IntegrityError) as exc:
            # Someone else (the provider's events) changed the row meanwhile: next pass.
            act.error = f"skipped, changed concurrently: {_short(exc)}"
        self.report.add(act)

    def log_failure(self, act: ReconcileAction, log_type: str, error: str) -> None:
        act.error = error
        self.report.add(act)
        if self.dry:
            return
        with self.rec.sessionmaker.begin() as s:
            s.add(ActionLog(
                type=log_type, component=COMPONENT, status="failure", error_code="cloud_error",
                error_message=error,
                instance_id=uuid.UUID(act.instance_id) if act.instance_id else None,
                parent_id=self.report.pass_log_id, created_at=self.now,
                details={"cluster": self.cluster, "provider_instance_id":
                         act.provider_instance_id, "launch_id": act.launch_id,
                         "reason": act.reason}))

    @staticmethod
    def _record_facts(inst: Instance, vm: CloudInstance) -> bool:
        changed = False
        for attr, value in (("provider_instance_id", vm.provider_instance_id),
                            ("zone_code", vm.zone), ("private_ip", vm.private_ip),
                            ("public_ip", vm.public_ip)):
            if value and getattr(inst, attr) != value:
                setattr(inst, attr, value)
                changed = True
        return changed

    # -------------------------------------------------------------- VM with a live row

    def vm_of_live_row(self, vm: CloudInstance, row: _Row) -> None:
        facts_missing = any(v and cur != v for cur, v in (
            (row.provider_instance_id, vm.provider_instance_id), (row.zone, vm.zone),
            (row.private_ip, vm.private_ip), (row.public_ip, vm.public_ip)))
        if facts_missing or (not row.has_open_interval and vm.is_live):
            act = self.action("record", vm=vm, row=row,
                              reason="cloud lists the VM: facts recorded, cost interval open")
            if self.dry:
                self.report.add(act)
            else:
                with self.unit(act, "reconcile.record") as s:
                    inst = s.get(Instance, row.id)
                    assert inst is not None
                    self._record_facts(inst, vm)
                    if vm.is_live:
                        open_billing_interval(s, inst, vm.created_at or self.now)
            row.provider_instance_id = vm.provider_instance_id
            row.has_open_interval = row.has_open_interval or vm.is_live
        state = row.state
        if state in PRE_READY and self.ray_sees(vm):
            act = self.action("advance", vm=vm, row=row,
                              reason=f"Ray sees the node while the row says {state.value}")
            if self.dry:
                self.report.add(act)
                return
            with self.unit(act, "reconcile.advance") as s:
                transition(s, row.id, S.READY, expected_from=state, at=self.now,
                           reason="reconciler: node seen in Ray", actor=COMPONENT)
            return
        if row.deadline is not None and row.deadline <= self.now:
            self.fail_stuck(row, vm)
            return
        if state == S.TERMINATING and self.now - row.state_entered_at >= \
                self.settings.terminate_retry:
            self.reap(vm, row, reason="still listed after terminate: terminate resent")

    def fail_stuck(self, row: _Row, vm: CloudInstance | None) -> None:
        """Past the state deadline: failed (``deadline_exceeded``); the VM of a row that never
        became ready, or was being terminated, is reaped (``vm`` given: it is listed)."""
        state = row.state
        act = self.action("fail_stuck", vm=vm, row=row,
                          reason=f"{state.value} past its deadline {row.deadline}")
        if self.dry:
            self.report.add(act)
        else:
            with self.unit(act, "reconcile.fail_stuck", {"from": state.value}) as s:
                transition(s, row.id, S.FAILED, expected_from=state, at=self.now,
                           error_code="deadline_exceeded",
                           error_message=f"{state.value} past its deadline", actor=COMPONENT)
            if not act.applied:
                return
        row.state = S.FAILED
        if vm is not None and (state in PRE_READY or state == S.TERMINATING):
            self.reap(vm, row, reason=f"deadline exceeded in {state.value}")

    # -------------------------------------------------------------- VM of a failed row

    def vm_of_failed_row(self, vm: CloudInstance, row: _Row) -> None:
        """A failed instance still holding a VM: keep it while Ray uses it, else reap it."""
        if not row.has_open_interval and vm.is_live and not self.dry:
            act = self.action("record", vm=vm, row=row,
                              reason="failed instance still has a VM: cost interval open")
            with self.unit(act, "reconcile.record") as s:
                inst = s.get(Instance, row.id)
                assert inst is not None
                self._record_facts(inst, vm)
                open_billing_interval(s, inst, vm.created_at or self.now)
            row.has_open_interval = True
        self._orphan_rule(vm, row, may_adopt=False, reuse=True)

    # -------------------------------------------------------------- orphans

    def orphan(self, vm: CloudInstance, other: _Row | None) -> None:
        """A VM with no row of its own. ``other``: a row already naming its id or launch id
        (ended, or a duplicate VM of a launch that has its VM): never reused, a new row is
        written for this VM."""
        self._orphan_rule(vm, other, may_adopt=True, reuse=False)

    def _orphan_rule(self, vm: CloudInstance, row: _Row | None, *, may_adopt: bool,
                     reuse: bool) -> None:
        age = self.age(vm)
        # A second VM of a launch that has its VM: a Ray node under that launch id is the other.
        duplicate = not reuse and row is not None and row.state not in FINAL
        seen = self.ray_sees(vm, by_launch_id=not duplicate)
        is_head = (vm.node_type or "") in HEAD_NODE_TYPES
        if age is None:
            self.defer(vm, row, "the cloud gives no creation time")
            return
        if seen and may_adopt:
            if age >= self.settings.adopt_grace:
                self.adopt(vm, row)
            else:
                self.defer(vm, row, f"orphan seen in Ray, younger than the adopt grace ({age})")
            return
        if seen:
            self.defer(vm, row, "failed instance whose node Ray still uses")
            return
        if is_head:
            self.defer(vm, row, "a head node is never reaped")
            return
        if age < self.settings.reap_grace:
            self.defer(vm, row, f"orphan younger than the reap grace ({age})")
            return
        if seen is None and not self.settings.reap_when_ray_unknown and \
                vm.state not in (InstanceStatus.STOPPED, InstanceStatus.TERMINATING):
            self.defer(vm, row, "Ray's view is unknown: not reaping a VM that may be a node")
            return
        self.reap(vm, row, reuse=reuse, reason="failed instance not seen in Ray" if reuse
                  else "orphan not seen in Ray")

    def defer(self, vm: CloudInstance, row: _Row | None, reason: str) -> None:
        self.report.add(self.action("defer", vm=vm, row=row, reason=reason))

    def adopt(self, vm: CloudInstance, stale: _Row | None) -> None:
        """Create the row the VM should have had, in ``ready`` (running) or ``booting``."""
        state = S.READY if vm.state is InstanceStatus.RUNNING else S.BOOTING
        launch_id = vm.launch_id if vm.launch_id and stale is None else \
            f"adopted-{vm.provider_instance_id}"[:64]
        new_id = uuid.uuid4()
        act = self.action("adopt", vm=vm, reason=f"orphan seen in Ray, adopted as {state.value}",
                          instance_id=new_id)
        act.launch_id = launch_id
        if self.dry:
            self.report.add(act)
            return
        with self.unit(act, "reconcile.adopt", {"state": state.value,
                                                "vm_created_at": _iso(vm.created_at)}) as s:
            inst = self._new_row(s, new_id, launch_id, vm, state,
                                 "adopted by the reconciler: VM without a row, seen in Ray")
            open_billing_interval(s, inst, vm.created_at or self.now)

    def _new_row(self, s: Session, new_id: uuid.UUID, launch_id: str, vm: CloudInstance,
                 state: InstanceState, reason: str) -> Instance:
        inst = Instance(
            id=new_id, launch_id=launch_id, cluster_name=self.cluster,
            provider_code=self.provider, zone_code=vm.zone, instance_type_name=vm.instance_type,
            node_type=vm.node_type, provider_instance_id=vm.provider_instance_id,
            private_ip=vm.private_ip, public_ip=vm.public_ip, state=state,
            state_entered_at=self.now, state_deadline_at=deadline_for(state, self.now),
            created_at=vm.created_at or self.now, updated_at=self.now)
        s.add(inst)
        s.flush()
        s.add(InstanceStateHistory(instance_id=new_id, from_state=None, to_state=state,
                                   at=self.now, reason=reason, actor=COMPONENT))
        s.flush()
        return inst

    # -------------------------------------------------------------- reap

    def reap(self, vm: CloudInstance, row: _Row | None, *, reason: str,
             reuse: bool = True) -> None:
        """Delete a VM. The cost is recorded first: a ``terminating`` row (``reuse``: the VM's
        own failed/live row, else a new one) with an interval open from the VM's creation;
        closed when the VM is confirmed gone."""
        if self.rec._reaps_left <= 0:
            self.defer(vm, row, f"reap brake: over {self.settings.max_reaps_per_pass} per pass")
            return
        self.rec._reaps_left -= 1
        reuse = reuse and row is not None and row.state not in FINAL
        new_id = uuid.uuid4()
        act = self.action("reap", vm=vm, row=row if reuse else None, reason=reason,
                          instance_id=row.id if reuse and row else new_id)
        if self.dry:
            self.report.add(act)
            return
        # 1. the record, so a crash between here and the cloud call loses no cost
        t0 = time.perf_counter()
        try:
            with self.rec.sessionmaker.begin() as s:
                if reuse and row is not None:
                    inst = s.get(Instance, row.id)
                    assert inst is not None
                    if inst.state != S.TERMINATING:
                        transition(s, row.id, S.TERMINATING, expected_from=row.state,
                                   at=self.now, reason=f"reconciler: {reason}",
                                   actor=COMPONENT)
                    self._record_facts(inst, vm)
                else:
                    taken = row is not None or (vm.launch_id and s.scalar(
                        select(Instance.id).where(Instance.launch_id == vm.launch_id)))
                    launch_id = f"reaped-{vm.provider_instance_id}"[:64] if taken or \
                        not vm.launch_id else vm.launch_id
                    act.launch_id = launch_id
                    inst = self._new_row(s, new_id, launch_id, vm, S.TERMINATING,
                                         f"reconciler: {reason}")
                open_billing_interval(s, inst, vm.created_at or self.now)
        except (InvalidTransition, IntegrityError) as exc:
            act.error = f"skipped, changed concurrently: {_short(exc)}"
            self.report.add(act)
            return
        # 2. the cloud call (idempotent; not waited for: the next pass confirms and closes)
        try:
            done = self.cloud.terminate(vm.provider_instance_id, vm.zone,
                                        launch_id=vm.launch_id, wait=False)
        except CloudNotFound:
            done = True
        except CloudError as exc:
            self.log_failure(act, "reconcile.reap", f"terminate failed: {_short(exc)}")
            return
        # 3. the outcome
        with self.unit(act, "reconcile.reap", {
                "vm_created_at": _iso(vm.created_at), "terminate_done": done,
                "terminate_ms": int((time.perf_counter() - t0) * 1000)}) as s:
            if done:
                self._finish_gone(s, act.instance_id, reason="reaped: VM deleted")

    # -------------------------------------------------------------- row without VM

    def row_without_vm(self, row: _Row) -> None:
        """The cluster's listing succeeded and does not show this row's VM: confirm, then end."""
        state = row.state
        if state == S.FAILED and not row.has_open_interval:
            return  # nothing billed; if its VM shows up later it is matched by launch id
        if row.provider_instance_id and row.zone:
            try:
                vm = self.cloud.get(row.provider_instance_id, row.zone)
            except CloudNotFound:
                vm = None
            except CloudError as exc:
                self.report.errors.append(f"confirm {row.provider_instance_id}: {_short(exc)}")
                return
            if vm is not None:
                # It exists but was not listed (created meanwhile, or its tags changed).
                if row.deadline is not None and row.deadline <= self.now and state != S.FAILED:
                    self.fail_stuck(row, None)
                return
            self.confirmed_gone(row, "the cloud no longer has the VM (get: not found)")
            return
        # No VM id recorded: look the launch id up (only when it matters).
        if state in NOT_LAUNCHED and (row.deadline is None or row.deadline > self.now):
            return  # the provider may be creating it right now
        if state not in NOT_LAUNCHED and not row.has_open_interval and \
                self.now - row.state_entered_at < self.settings.reap_grace and \
                (row.deadline is None or row.deadline > self.now):
            return
        try:
            vm = self.cloud.find_by_launch_id(self.cluster, row.launch_id)
        except CloudError as exc:
            self.report.errors.append(f"confirm launch {row.launch_id}: {_short(exc)}")
            return
        if vm is not None:
            return  # appeared after the listing: the next pass matches it
        if state in NOT_LAUNCHED and not row.has_open_interval:
            act = self.action("fail_stuck", row=row,
                              reason=f"{state.value} past its deadline and no VM carries the "
                                     "launch id")
            if self.dry:
                self.report.add(act)
                return
            with self.unit(act, "reconcile.fail_stuck", {"from": state.value}) as s:
                transition(s, row.id, S.FAILED, expected_from=state, at=self.now,
                           error_code="launch_lost",
                           error_message="no VM carries the launch id past the deadline",
                           actor=COMPONENT)
            return
        self.confirmed_gone(row, "no VM carries the launch id")

    def confirmed_gone(self, row: _Row, reason: str) -> None:
        """The VM is confirmed gone: close its interval at the observed time, end the row."""
        act = self.action("close_interval", row=row, reason=reason)
        if self.dry:
            self.report.add(act)
            return
        cleanup: str | None = None
        if row.provider_instance_id and row.zone:
            # Deleting a VM that is gone is a no-op for the VM but removes the volumes a
            # Scaleway terminate only detached (they are billed). Best effort.
            try:
                if not self.cloud.terminate(row.provider_instance_id, row.zone,
                                            launch_id=row.launch_id, wait=False):
                    cleanup = "volume cleanup still in progress"
            except CloudError as exc:
                cleanup = f"volume cleanup failed: {_short(exc)}"
        with self.unit(act, "reconcile.close_interval",
                       {"from": row.state.value, "cleanup": cleanup or "done"}) as s:
            self._finish_gone(s, str(row.id), reason=f"reconciler: {reason}")
        if cleanup:
            self.report.errors.append(f"{row.provider_instance_id}: {cleanup}")

    def _finish_gone(self, s: Session, instance_id: str | None, *, reason: str) -> None:
        assert instance_id is not None
        inst = s.get(Instance, uuid.UUID(instance_id))
        assert inst is not None
        close_billing_interval(s, inst, self.now)
        state = inst.state
        if state in FINAL:
            return
        if state in PRE_READY:
            transition(s, inst.id, S.FAILED, expected_from=state, at=self.now,
                       error_code="vm_lost", error_message=reason, reason=reason,
                       actor=COMPONENT)
            return
        transition(s, inst.id, S.TERMINATED, expected_from=state, at=self.now, reason=reason,
                   actor=COMPONENT)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# ------------------------------------------------------------------------------ background


@dataclass
class ReconcilerThread:
    """A running background reconciler; ``stop()`` ends it after the current pass."""

    reconciler: Reconciler
    thread: threading.Thread
    stop_event: threading.Event

    def stop(self, timeout: float | None = 30.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)


def start_reconciler_thread(target: Any, clouds: Mapping[str, Cloud] | None = None, *,
                            interval_s: float = 60.0,
                            ray_nodes: RayNodes = no_ray,
                            clock: Callable[[], datetime] = utcnow,
                            settings: ReconcileSettings | None = None,
                            stop_event: threading.Event | None = None) -> ReconcilerThread:
    """Run ``run_once`` every ``interval_s`` seconds in a daemon thread until stopped.

    ``target``: a :class:`Reconciler`, a ``sessionmaker``, or a FastAPI app (its
    ``state.sessionmaker``; the reconciler is then stored as ``app.state.reconciler`` so the
    ``/api/reconcile`` routes share it and its last report). Several API workers may each run
    one: the advisory lock makes all but one skip each pass.
    """
    app = None
    if isinstance(target, Reconciler):
        rec = target
    else:
        if isinstance(target, sessionmaker):
            maker = target
        else:
            app = target
            maker = app.state.sessionmaker
        if clouds is None:
            raise ValueError("clouds are required unless a Reconciler is given")
        rec = Reconciler(maker, clouds, ray_nodes=ray_nodes, clock=clock, settings=settings)
    if app is not None:
        app.state.reconciler = rec
    stop = stop_event or threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                rec.run_once()
            except Exception:  # noqa: BLE001 - the loop must outlive any single bad pass
                log.exception("reconciler pass failed")
            stop.wait(interval_s)

    thread = threading.Thread(target=loop, name="inventiv-reconciler", daemon=True)
    thread.start()
    return ReconcilerThread(rec, thread, stop)




# ------------------------------------------------------------------------------ configuration


ENV_CLUSTERS = "INVENTIV_RECONCILE_CLUSTERS"
ENV_RAY_GCS = "INVENTIV_RECONCILE_RAY_GCS"


def clouds_from_env(env: Mapping[str, str] | None = None) -> dict[str, Cloud]:
    """Clouds to reconcile, from ``INVENTIV_RECONCILE_CLUSTERS``: JSON
    ``{"<cluster>": {"cloud": "scaleway", "zones": ["fr-par-2", ...], ...}}`` (the other keys
    are the adapter's settings; credentials come from the SDK's ``SCW_*`` environment)."""
    import json
    import os

    raw = (env if env is not None else os.environ).get(ENV_CLUSTERS, "").strip()
    if not raw:
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"{ENV_CLUSTERS} must be a JSON object of cluster -> cloud settings")
    clouds: dict[str, Cloud] = {}
    for cluster, cfg in data.items():
        if not isinstance(cfg, dict) or cfg.get("cloud") != "scaleway":
            raise ValueError(f"{ENV_CLUSTERS}[{cluster!r}]: only cloud 'scaleway' is supported")
        from cluster.clouds.scaleway import ScalewayCloud, ScalewayConfig

        clouds[str(cluster)] = ScalewayCloud(ScalewayConfig.from_mapping(cfg))
    return clouds


def reconciler_from_env(maker: sessionmaker[Session],
                        env: Mapping[str, str] | None = None) -> Reconciler | None:
    """A reconciler for the clusters configured in the environment, or ``None`` if none are."""
    import os

    clouds = clouds_from_env(env)
    if not clouds:
        return None
    gcs = (env if env is not None else os.environ).get(ENV_RAY_GCS)
    return Reconciler(maker, clouds, ray_nodes=ray_gcs_nodes(gcs) if gcs else no_ray)


__all__ = [
    "ADVISORY_LOCK_KEY", "ClusterListing", "ReconcileAction", "ReconcileReport",
    "ReconcileSettings", "Reconciler", "ReconcilerThread", "RunnerLock", "clouds_from_env",
    "no_ray", "ray_gcs_nodes", "reconciler_from_env", "start_reconciler_thread",
]
