"""The ``local`` cloud: every "VM" is a real local ``ray start --address ... --block`` process.

A node is started exactly as cloud-init starts a Scaleway worker in host mode: the argv and the
environment come from :class:`cluster.bootstrap.NodeBootstrap` (``ray_start_args`` and
``node_env``, the functions the systemd unit is rendered from), so ``RAY_AUTH_MODE=token``, the
token by path, ``RAY_CLOUD_INSTANCE_ID=<launch id>`` and ``RAY_NODE_TYPE_NAME`` are the same on
both clouds. The environment is otherwise minimal (like a systemd unit's), so nothing leaks from
the process that launches it (e.g. the autoscaler monitor's own ``RAY_CLOUD_INSTANCE_ID``).

An instance type is the node's "hardware": its Ray resources (``CPU``, ``GPU``, custom ones such
as ``local_gpu_slot``) and hourly price come from the catalog seed's ``local`` provider, and may
be overridden per cluster (``instance_types``). Prices being the catalog's, FinOps shows real
figures for local runs.

Each node runs in its own session/process group with its log in ``<state_dir>/nodes/``; the
instance table is a small JSON file in ``state_dir`` guarded by a file lock (the autoscaler
monitor and the CLI share it), so listings survive a restart of whoever launched the nodes.
Processes are also marked with ``INVENTIV_LOCAL_STATE_DIR``/``INVENTIV_LOCAL_INSTANCE_ID`` in
their environment: a node whose launcher died between the spawn and the state write is found by
that marker and listed (and can be terminated) instead of leaking.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from cluster.bootstrap import BootstrapError, NodeBootstrap
from core import procs
from core.catalog import default_catalog_path, load_catalog
from core.clouds import (
    TAG_CLUSTER,
    TAG_LAUNCH,
    TAG_NODE_TYPE,
    BootFailed,
    CloudInstance,
    InstanceStatus,
    InvalidRequest,
    LaunchRequest,
    NotFound,
    Offer,
    QuotaExceeded,
    make_tags,
    normalise_status,
    parse_tags,
)

log = logging.getLogger(__name__)

LOCAL_PROVIDER = "local"
DEFAULT_ZONE = "local-1"
STATE_FILE = "local-cloud.json"
LOCK_FILE = "local-cloud.lock"
MARK_STATE_DIR = "INVENTIV_LOCAL_STATE_DIR"
MARK_INSTANCE = "INVENTIV_LOCAL_INSTANCE_ID"
STATE_VERSION = 1
# Terminated records kept in the state file for inspection (oldest pruned first).
KEEP_TERMINATED = 50
DEFAULT_CATALOG = default_catalog_path()
# Variables a node inherits from the launcher: what a systemd service would have, no more.
_INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "TZ")

# One status map for this cloud (raw states are the ``state`` field of a record).
LOCAL_STATUS_MAP: dict[str, InstanceStatus] = {
    "starting": InstanceStatus.PENDING,
    "running": InstanceStatus.RUNNING,
    "stopping": InstanceStatus.TERMINATING,
    "terminated": InstanceStatus.TERMINATED,
}


def default_ray_executable() -> str:
    """The ``ray`` script next to this interpreter (the venv's), else ``ray`` on PATH."""
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else "ray"


def utcnow() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------------------ catalog


@dataclass(frozen=True)
class LocalInstanceType:
    """A local instance type: the Ray resources a node advertises and its catalog price."""

    name: str
    resources: Mapping[str, int]
    hourly_eur: Decimal
    gpu_count: int = 0
    gpu_model: str | None = None
    gpu_vram_gb: int | None = None
    vcpus: int | None = None
    ram_gb: int | None = None
    zones: tuple[str, ...] = (DEFAULT_ZONE,)

    def bootstrap_resources(self) -> tuple[int | None, int | None, dict[str, float]]:
        """(num_cpus, num_gpus, custom resources) as ``ray start`` flags take them."""
        custom = {k: float(v) for k, v in self.resources.items() if k not in ("CPU", "GPU")}
        cpus = self.resources.get("CPU")
        gpus = self.resources.get("GPU")
        return (int(cpus) if cpus is not None else None,
                int(gpus) if gpus is not None else None, custom)


def load_local_catalog(path: Path | None = None) -> dict[str, LocalInstanceType]:
    """The ``local`` provider's instance types from the catalog seed (prices and resources),
    read through :func:`core.catalog.load_catalog` (a malformed seed is a ``CatalogError``)."""
    out: dict[str, LocalInstanceType] = {}
    for _provider, t in load_catalog(path).instance_types(LOCAL_PROVIDER):
        resources = {k: int(v) for k, v in (t.ray_resources or {}).items()}
        if not resources:
            resources = {"CPU": t.vcpus or 1}
        out[t.name] = LocalInstanceType(
            name=t.name, resources=resources, hourly_eur=t.hourly_eur, gpu_count=t.gpu_count,
            gpu_model=t.gpu_model, gpu_vram_gb=t.gpu_vram_gb, vcpus=t.vcpus, ram_gb=t.ram_gb,
            zones=t.zones or (DEFAULT_ZONE,))
    return out


# ------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class LocalConfig:
    """Settings of the local cloud.

    ``head_address`` and ``token_path`` are needed to create worker nodes (listing, terminating
    and the catalog work without them). ``instance_types`` overrides or adds resources per type
    (``{"local-L4": {"CPU": 2, "local_gpu_slot": 1}}``); the price stays the catalog's.
    """

    state_dir: Path
    head_address: str | None = None
    token_path: Path | None = None
    ray_executable: str = field(default_factory=default_ray_executable)
    zone: str = DEFAULT_ZONE
    instance_types: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    catalog_file: Path | None = None
    max_nodes: int | None = None
    stop_grace_s: float = 15.0
    kill_wait_s: float = 5.0
    extra_env: Mapping[str, str] = field(default_factory=dict)
    scan_orphans: bool = True

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> LocalConfig:
        """Build from a provider-config mapping (unknown keys are ignored)."""
        if not data.get("state_dir"):
            raise InvalidRequest("the local cloud needs a state_dir")
        kwargs: dict[str, Any] = {"state_dir": Path(str(data["state_dir"])).expanduser()}
        if data.get("head_address"):
            kwargs["head_address"] = str(data["head_address"])
        if data.get("token_path"):
            kwargs["token_path"] = Path(str(data["token_path"])).expanduser()
        if data.get("catalog_file"):
            kwargs["catalog_file"] = Path(str(data["catalog_file"]))
        for key in ("ray_executable", "zone"):
            if data.get(key):
                kwargs[key] = str(data[key])
        for key in ("stop_grace_s", "kill_wait_s"):
            if data.get(key) is not None:
                kwargs[key] = float(data[key])
        if data.get("max_nodes") is not None:
            kwargs["max_nodes"] = int(data["max_nodes"])
        if data.get("scan_orphans") is not None:
            kwargs["scan_orphans"] = bool(data["scan_orphans"])
        if data.get("instance_types"):
            kwargs["instance_types"] = {str(k): {str(r): int(n) for r, n in v.items()}
                                        for k, v in data["instance_types"].items()}
        if data.get("extra_env"):
            kwargs["extra_env"] = {str(k): str(v) for k, v in data["extra_env"].items()}
        return cls(**kwargs)


# ------------------------------------------------------------------------------ records


@dataclass
class LocalRecord:
    """One local "VM" as persisted in the state file."""

    provider_instance_id: str
    launch_id: str
    cluster_name: str
    node_type: str
    instance_type: str
    zone: str
    tags: list[str]
    state: str  # starting | running | stopping | terminated
    created_at: str
    log_path: str
    pid: int | None = None
    pgid: int | None = None
    # The process's creation time (psutil, epoch seconds): tells our pid from a reused one.
    # Records written before it existed have none: their pid is checked without it.
    started_at: float | None = None
    stop_requested_at: float | None = None  # wall clock (time.time) of the first SIGTERM
    terminated_at: str | None = None
    exit_reason: str | None = None
    adopted: bool = False  # found by the environment marker, not written by a launcher

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LocalRecord:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


# ------------------------------------------------------------------------------ processes

# Process inspection is core.procs (psutil: Linux and macOS); these names stay importable here.
process_alive = procs.alive
group_members = procs.group_members


def find_marked(state_dir: Path) -> dict[str, list[tuple[int, int, dict[str, str]]]]:
    """Live processes carrying this state dir's marker: instance id -> [(pid, ppid, environ)].

    Every process of a node (``ray start``, raylet, agents, workers) inherits the marker, also
    the ones Ray moves to a session of their own, which a process-group signal would miss.
    """
    found: dict[str, list[tuple[int, int, dict[str, str]]]] = {}
    for proc in procs.find_marked(MARK_STATE_DIR, str(state_dir)):
        instance_id = proc.environ.get(MARK_INSTANCE)
        if instance_id:
            found.setdefault(instance_id, []).append((proc.pid, proc.ppid, proc.environ))
    return found


def find_marked_leaders(state_dir: Path) -> dict[str, tuple[int, dict[str, str]]]:
    """The root process of each marked node (its parent is not part of the same node)."""
    out: dict[str, tuple[int, dict[str, str]]] = {}
    for instance_id, members in find_marked(state_dir).items():
        pids = {p for p, _pp, _e in members}
        roots = sorted((p, e) for p, pp, e in members if pp not in pids)
        if roots:
            out[instance_id] = roots[0]
    return out


def _pgid(pid: int) -> int:
    """The process group of ``pid`` (the pid itself if it cannot be read)."""
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return pid


# ------------------------------------------------------------------------------ the cloud


class LocalCloud:
    """The local adapter: same protocol as :class:`cluster.clouds.scaleway.ScalewayCloud`."""

    name = LOCAL_PROVIDER

    def __init__(self, config: LocalConfig, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir).expanduser().resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "nodes").mkdir(exist_ok=True)
        self._clock = clock
        self._sleep = sleep
        self._popen = popen
        self._lock = threading.RLock()
        # Popen handles of the nodes this process started, so their exit is reaped (no zombie).
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        catalog = load_local_catalog(config.catalog_file)
        for name, resources in config.instance_types.items():
            base = catalog.get(name)
            catalog[name] = LocalInstanceType(
                name=name, resources=dict(resources),
                hourly_eur=base.hourly_eur if base else Decimal("0"),
                gpu_count=base.gpu_count if base else int(resources.get("GPU", 0)),
                gpu_model=base.gpu_model if base else None,
                gpu_vram_gb=base.gpu_vram_gb if base else None,
                vcpus=base.vcpus if base else resources.get("CPU"),
                ram_gb=base.ram_gb if base else None,
                zones=base.zones if base else (config.zone,))
        self.instance_types = catalog

    # -------------------------------------------------------------- state file

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, LocalRecord]]:
        """The instance table, locked across threads and processes; saved on exit."""
        with self._lock, open(self.state_dir / LOCK_FILE, "a+") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            try:
                records = self._load()
                before = json.dumps({k: asdict(v) for k, v in records.items()}, sort_keys=True)
                yield records
                after = json.dumps({k: asdict(v) for k, v in records.items()}, sort_keys=True)
                if after != before:
                    self._save(records)
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    def _load(self) -> dict[str, LocalRecord]:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            # Never guess: a corrupt table could hide live nodes.
            raise InvalidRequest(f"corrupt local cloud state {self.state_path}: {exc}") from exc
        return {k: LocalRecord.from_json(v) for k, v in data.get("instances", {}).items()}

    def _save(self, records: dict[str, LocalRecord]) -> None:
        dead = sorted((r for r in records.values() if r.state == "terminated"),
                      key=lambda r: r.terminated_at or "")
        for r in dead[:-KEEP_TERMINATED] if len(dead) > KEEP_TERMINATED else []:
            del records[r.provider_instance_id]
        body = json.dumps({"version": STATE_VERSION,
                           "instances": {k: asdict(v) for k, v in records.items()}},
                          indent=1, sort_keys=True)
        tmp = self.state_path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        tmp.write_text(body)
        os.replace(tmp, self.state_path)

    # -------------------------------------------------------------- liveness

    def _refresh(self, records: dict[str, LocalRecord]) -> None:
        """Mark exited processes terminated; adopt marked processes missing from the table."""
        for rec in records.values():
            if rec.state in ("running", "stopping"):
                child = self._children.get(rec.pid or 0)
                if child is not None:
                    child.poll()  # reap our own exited child
                if not procs.alive(rec.pid, rec.started_at) and \
                        not self._node_processes(rec):
                    self._mark_terminated(rec, "exited" if rec.state == "running"
                                          else "terminated")
        if self.config.scan_orphans:
            for instance_id, (pid, env) in find_marked_leaders(self.state_dir).items():
                known = records.get(instance_id)
                if known is not None and known.state == "starting" and known.pid is None:
                    # Its launcher died between the spawn and the pid write: complete it.
                    known.pid, known.pgid = pid, _pgid(pid)
                    known.started_at = procs.start_time(pid)
                    known.state = "running"
                    continue
                if known is not None and known.state != "terminated":
                    continue
                records[instance_id] = self._adopted_record(instance_id, pid, env,
                                                            procs.start_time(pid))
                log.warning("local cloud: adopted orphan node process %s (%s)", pid,
                            instance_id)
        for rec in records.values():
            if rec.state == "starting" and rec.pid is None and \
                    self._clock() - _ts(rec.created_at) > 60:
                self._mark_terminated(rec, "never started")

    def _node_processes(self, rec: LocalRecord) -> list[int]:
        """Live processes of a node: its process group plus everything with its marker."""
        pids = set(procs.group_members(rec.pgid)) if rec.pgid else set()
        marked = find_marked(self.state_dir).get(rec.provider_instance_id, [])
        pids.update(p for p, _pp, _e in marked)
        return sorted(pids)

    def _adopted_record(self, instance_id: str, pid: int, env: Mapping[str, str],
                        started_at: float | None) -> LocalRecord:
        tags = [t for t in env.get("INVENTIV_LOCAL_TAGS", "").split(",") if t]
        parsed = parse_tags(tags)
        return LocalRecord(
            provider_instance_id=instance_id,
            launch_id=parsed.get(TAG_LAUNCH) or env.get("RAY_CLOUD_INSTANCE_ID", instance_id),
            cluster_name=parsed.get(TAG_CLUSTER, ""),
            node_type=parsed.get(TAG_NODE_TYPE) or env.get("RAY_NODE_TYPE_NAME", ""),
            instance_type=env.get("INVENTIV_LOCAL_INSTANCE_TYPE", ""), zone=self.config.zone,
            tags=tags, state="running", created_at=utcnow().isoformat(),
            log_path=str(self.state_dir / "nodes" / f"{instance_id}.log"), pid=pid, pgid=pid,
            started_at=started_at, adopted=True)

    def _mark_terminated(self, rec: LocalRecord, reason: str) -> None:
        child = self._children.pop(rec.pid or 0, None)
        if child is not None:
            child.poll()
        rec.state = "terminated"
        rec.terminated_at = utcnow().isoformat()
        rec.exit_reason = rec.exit_reason or reason

    def _to_instance(self, rec: LocalRecord) -> CloudInstance:
        return CloudInstance(
            provider_instance_id=rec.provider_instance_id, launch_id=rec.launch_id or None,
            cluster_name=rec.cluster_name or None, node_type=rec.node_type or None,
            instance_type=rec.instance_type, zone=rec.zone,
            state=normalise_status(LOCAL_STATUS_MAP, rec.state), private_ip="127.0.0.1",
            public_ip=None, created_at=datetime.fromisoformat(rec.created_at),
            tags=tuple(rec.tags), raw_state=rec.state)

    # -------------------------------------------------------------- protocol: reading

    def list_instances(self, cluster_name: str) -> list[CloudInstance]:
        """Every live local node of this cluster (orphans found by marker included)."""
        with self._locked() as records:
            self._refresh(records)
            live = [r for r in records.values()
                    if r.state != "terminated" and r.cluster_name == cluster_name]
        return sorted((self._to_instance(r) for r in live),
                      key=lambda i: (i.created_at, i.provider_instance_id))

    def records(self) -> list[LocalRecord]:
        """Every record in the table (terminated ones included), refreshed."""
        with self._locked() as records:
            self._refresh(records)
            return [LocalRecord.from_json(asdict(r)) for r in records.values()]

    def find_by_launch_id(self, cluster_name: str, launch_id: str,
                          zones: Sequence[str] = ()) -> CloudInstance | None:
        """The live node carrying this launch id, if any."""
        for inst in self.list_instances(cluster_name):
            if inst.launch_id == launch_id:
                return inst
        return None

    def get(self, provider_instance_id: str, zone: str) -> CloudInstance:
        """One live node; :class:`NotFound` once it is terminated."""
        with self._locked() as records:
            self._refresh(records)
            rec = records.get(provider_instance_id)
            if rec is None or rec.state == "terminated":
                raise NotFound(f"local instance {provider_instance_id} not found", zone=zone)
            return self._to_instance(rec)

    def catalog(self) -> list[Offer]:
        """The local instance types at their catalog prices, always available."""
        return [Offer(provider=self.name, instance_type=t.name, zone=self.config.zone,
                      hourly_eur=t.hourly_eur,
                      availability="available", gpu_count=t.gpu_count, gpu_model=t.gpu_model,
                      gpu_vram_gb=t.gpu_vram_gb, vcpus=t.vcpus, ram_gb=t.ram_gb)
                for t in sorted(self.instance_types.values(), key=lambda t: t.name)]

    # -------------------------------------------------------------- protocol: create

    def node_bootstrap(self, request: LaunchRequest) -> NodeBootstrap:
        """The bootstrap of a worker node: what cloud-init would run on a VM, in host mode."""
        itype = self.instance_types.get(request.instance_type)
        if itype is None:
            raise InvalidRequest(f"unknown local instance type {request.instance_type!r}",
                                 instance_type=request.instance_type)
        if not self.config.head_address or not self.config.token_path:
            raise InvalidRequest("the local cloud needs head_address and token_path to create "
                                 "nodes")
        try:
            token = Path(self.config.token_path).read_text().strip()
        except OSError as exc:
            raise InvalidRequest(f"cannot read the cluster token file: {exc}") from exc
        num_cpus, num_gpus, custom = itype.bootstrap_resources()
        return NodeBootstrap(
            head_address=self.config.head_address, cloud_instance_id=request.launch_id,
            node_type=request.node_type, ray_token=token, num_cpus=num_cpus, num_gpus=num_gpus,
            resources=custom, ray_executable=self.config.ray_executable,
            token_path=str(self.config.token_path), env=dict(self.config.extra_env))

    def create(self, request: LaunchRequest) -> CloudInstance:
        """Start one node process for ``request.launch_id`` (adopting a live one if any)."""
        if not request.launch_id or not request.cluster_name or not request.node_type:
            raise InvalidRequest("launch_id, cluster_name and node_type are required")
        node = self.node_bootstrap(request)
        try:
            node.validate()
        except BootstrapError as exc:
            raise InvalidRequest(str(exc), instance_type=request.instance_type) from exc
        argv = node.ray_start_args(node.ray_executable)
        env = node.node_env(node.token_path)
        return self.start_process(request, argv, env)

    def start_process(self, request: LaunchRequest, argv: Sequence[str],
                      env: Mapping[str, str]) -> CloudInstance:
        """Start ``argv`` as the "VM" of ``request`` (own session, log file, marker env).

        List by launch id first: a live node of the same launch is adopted, never doubled.
        The record is written before the spawn (intent), then completed with the pid.
        """
        instance_id = f"local-{secrets.token_hex(6)}"
        log_path = self.state_dir / "nodes" / f"{instance_id}.log"
        tags = request.all_tags()
        with self._locked() as records:
            self._refresh(records)
            for rec in records.values():
                if rec.state != "terminated" and rec.launch_id == request.launch_id and \
                        rec.cluster_name == request.cluster_name:
                    log.info("local cloud: launch %s already runs as %s: adopting",
                             request.launch_id, rec.provider_instance_id)
                    return self._to_instance(rec)
            live = sum(1 for r in records.values()
                       if r.state != "terminated" and r.node_type != "head")
            if self.config.max_nodes is not None and request.node_type != "head" and \
                    live >= self.config.max_nodes:
                raise QuotaExceeded(f"local cloud is at its max_nodes={self.config.max_nodes}",
                                    zone=self.config.zone, instance_type=request.instance_type)
            rec = LocalRecord(
                provider_instance_id=instance_id, launch_id=request.launch_id,
                cluster_name=request.cluster_name, node_type=request.node_type,
                instance_type=request.instance_type, zone=self.config.zone, tags=tags,
                state="starting", created_at=utcnow().isoformat(), log_path=str(log_path))
            records[instance_id] = rec
        full_env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
        full_env.update(env)
        full_env.update({MARK_STATE_DIR: str(self.state_dir), MARK_INSTANCE: instance_id,
                         "INVENTIV_LOCAL_TAGS": ",".join(tags),
                         "INVENTIV_LOCAL_INSTANCE_TYPE": request.instance_type})
        with self._locked() as records:
            rec = records[instance_id]
            try:
                with open(log_path, "ab") as log_file:
                    proc = self._popen(list(argv), env=full_env, stdout=log_file,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       cwd=str(self.state_dir), start_new_session=True,
                                       close_fds=True)
            except OSError as exc:
                self._mark_terminated(rec, f"spawn failed: {exc}")
                raise BootFailed(f"could not start the node process: {exc}",
                                 zone=self.config.zone,
                                 instance_type=request.instance_type) from exc
            self._children[proc.pid] = proc
            rec.pid = proc.pid
            rec.pgid = proc.pid  # start_new_session: the node leads its own group
            rec.started_at = procs.start_time(proc.pid)
            rec.state = "running"
            log.info("local cloud: started %s (launch %s, %s) pid %s, log %s", instance_id,
                     request.launch_id, request.node_type, proc.pid, log_path)
            return self._to_instance(rec)

    # -------------------------------------------------------------- protocol: terminate

    def terminate(self, provider_instance_id: str, zone: str = DEFAULT_ZONE, *,
                  launch_id: str | None = None, wait: bool = True) -> bool:
        """Stop a node's process group: SIGTERM, then SIGKILL after ``stop_grace_s``.

        Idempotent (an unknown or terminated node is done). With ``wait=False`` it sends the
        signal due now and returns whether the group is gone; call again to finish.
        """
        deadline = self._clock() + self.config.stop_grace_s + self.config.kill_wait_s
        while True:
            with self._locked() as records:
                self._refresh(records)
                rec = records.get(provider_instance_id)
                if rec is None and launch_id:
                    rec = next((r for r in records.values()
                                if r.launch_id == launch_id and r.state != "terminated"), None)
                if rec is None or rec.state == "terminated":
                    return True
                done = self._stop_step(rec)
                if done:
                    return True
            if not wait:
                return False
            if self._clock() >= deadline:
                raise BootFailed(f"local node {provider_instance_id} survived SIGKILL",
                                 zone=zone, provider_instance_id=provider_instance_id)
            self._sleep(0.1)

    def _stop_step(self, rec: LocalRecord) -> bool:
        """One step of stopping: signal what is due; True once the whole group is gone."""
        pgid = rec.pgid
        if rec.state == "starting" and pgid is None:
            # Intent without a process (its launcher died before the spawn or the pid write).
            self._mark_terminated(rec, "terminated before start")
            return True
        now = self._clock()
        if rec.stop_requested_at is None:
            rec.stop_requested_at = now
            rec.state = "stopping"
            if pgid:
                log.info("local cloud: SIGTERM to node %s (pgid %s)", rec.provider_instance_id,
                         pgid)
                procs.signal_group(pgid, signal.SIGTERM)
            # Processes Ray moved to their own session are not in the group: signal them too.
            self._signal_marked(rec, signal.SIGTERM)
        elif now - rec.stop_requested_at >= self.config.stop_grace_s:
            log.info("local cloud: SIGKILL to node %s (pgid %s)", rec.provider_instance_id,
                     pgid)
            if pgid:
                procs.signal_group(pgid, signal.SIGKILL)
            self._signal_marked(rec, signal.SIGKILL)
        child = self._children.get(rec.pid or 0)
        if child is not None:
            child.poll()
        if self._node_processes(rec):
            return False
        self._mark_terminated(rec, "terminated")
        log.info("local cloud: node %s is gone", rec.provider_instance_id)
        return True

    def _signal_marked(self, rec: LocalRecord, sig: int) -> None:
        for pid, *_ in find_marked(self.state_dir).get(rec.provider_instance_id, []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def terminate_all(self, cluster_name: str | None = None, *, wait: bool = True) -> int:
        """Terminate every live node (of one cluster, or all); returns how many were live."""
        with self._locked() as records:
            self._refresh(records)
            ids = [r.provider_instance_id for r in records.values() if r.state != "terminated"
                   and (cluster_name is None or r.cluster_name == cluster_name)]
        for instance_id in ids:
            self.terminate(instance_id, self.config.zone, wait=wait)
        return len(ids)


def _ts(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0.0


def local_launch_request(*, launch_id: str, cluster_name: str, node_type: str,
                         instance_type: str, zone: str = DEFAULT_ZONE) -> LaunchRequest:
    """A launch request for the local cloud (no image, no user data)."""
    return LaunchRequest(launch_id=launch_id, cluster_name=cluster_name, node_type=node_type,
                         instance_type=instance_type, image="local", zones=(zone,))


__all__ = [
    "DEFAULT_ZONE", "LOCAL_PROVIDER", "LOCAL_STATUS_MAP", "LocalCloud", "LocalConfig",
    "LocalInstanceType", "LocalRecord", "default_ray_executable", "find_marked",
    "find_marked_leaders",
    "group_members", "load_local_catalog", "local_launch_request", "make_tags",
    "process_alive",
]
