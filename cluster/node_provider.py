"""``InventivNodeProvider``: the Ray autoscaler's node provider over our clouds (v1 API, run by
autoscaler v2 through Ray's ``NodeProviderAdapter``).

Identity. A node id is the launch id: generated here before any cloud call, carried in the VM's
tags and passed to the node as ``RAY_CLOUD_INSTANCE_ID`` (cloud-init on Scaleway, the process
environment on the local cloud). Autoscaler v2 matches Ray nodes to cloud instances by that
variable, so the id it reads from the raylet and the id ``non_terminated_nodes`` returns are the
same string. The head (``head_instance_id``) is always listed with ``ray-node-type=head`` -- v2
never scales otherwise -- and is never terminated (v2 asks during ``ray stop``: refused).

State. One lock guards a short-TTL cache of the cloud listing, merged with this process's own
creates (visible as pending at once) and terminates (hidden at once), as Ray's providers do.
A terminate sends the cloud call without waiting; later refreshes finish it (level-triggered).

Reporting. Every transition is reported to the control API as a lifecycle event: ``requested``
(the intent, written to the durable spool before the cloud is called), ``provisioning``,
``booting`` (the cloud has the VM), ``ready`` (the Ray node is alive in the GCS),
``terminating``, ``terminated`` and ``failed``, with ``cloud_exists``. Events go to the client's
spool and a background thread delivers them, so a control API that is down or slow never blocks
provisioning; without ``control_api_url`` (or without the client package) nothing is sent.

Provider config keys: ``cloud`` (``scaleway`` | ``local``), ``zones`` (failover order),
``head_address`` (``host:port`` nodes join), ``head_instance_id``, ``head_node_type``,
optional ``token_path`` (the cluster's Ray token file; absent, Ray's own places are read:
``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``), optional ``control_api_url``,
``service_token_file``, ``spool_dir``, ``cache_ttl_s``, ``worker_image``, ``ray_executable``,
``private_network_id``, ``security_group_id``, plus the cloud's own settings (``state_dir`` and
``instance_types`` for local; :class:`cluster.clouds.scaleway.ScalewayConfig` fields).
Node config keys: ``instance_type``, ``image``, ``root_volume_gb``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray.autoscaler.node_launch_exception import NodeLaunchException
from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    STATUS_UP_TO_DATE,
    TAG_RAY_LAUNCH_REQUEST,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from cluster.bootstrap import NodeBootstrap, render_cloud_init
from core.clouds import (
    Cloud,
    CloudError,
    CloudInstance,
    InstanceStatus,
    InvalidRequest,
    LaunchRequest,
)
from core.ray_private import GcsProbe

log = logging.getLogger(__name__)

HEAD_NODE_TYPE = "head"
LIVE_CLOUD_STATES = frozenset({InstanceStatus.PENDING, InstanceStatus.RUNNING,
                               InstanceStatus.STOPPED, InstanceStatus.UNKNOWN})


class ProviderSettings(BaseModel):
    """The provider section of the Ray cluster YAML (cloud settings pass through)."""

    model_config = ConfigDict(extra="allow")

    type: str | None = None
    module: str | None = None
    cloud: Literal["scaleway", "local"]
    zones: list[str] = Field(default_factory=list)
    head_address: str = Field(pattern=r"^[A-Za-z0-9.\-]+:\d{1,5}$")
    head_instance_id: str | None = None
    head_node_type: str = HEAD_NODE_TYPE
    token_path: str | None = None
    control_api_url: str | None = None
    service_token_file: str | None = None
    spool_dir: str | None = None
    cache_ttl_s: float = Field(default=2.0, ge=0)
    membership_poll_s: float = Field(default=2.0, ge=0)
    worker_image: str | None = None
    ray_executable: str | None = None
    private_network_id: str | None = None
    security_group_id: str | None = None
    max_parallel_creates: int = Field(default=8, ge=1)

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> ProviderSettings:
        """Validate, naming the faulty key in the error."""
        try:
            return cls.model_validate(dict(config))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                 for e in exc.errors())
            raise ValueError(f"invalid InventivNodeProvider config: {problems}") from None


def resolve_ray_token(token_path: str | None, *,
                      environ: Mapping[str, str] | None = None,
                      home: Path | None = None) -> str:
    """The cluster's Ray token: ``token_path`` from the provider config or, absent that, where
    Ray itself looks: ``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH`` names (only it,
    as Ray does), else ``~/.ray/auth_token``. The error names the place tried, never the token."""
    env = os.environ if environ is None else environ
    if token_path:
        origin, path = "token_path", Path(token_path).expanduser()
    else:
        inline = env.get("RAY_AUTH_TOKEN", "").strip()
        if inline:
            return inline
        if env.get("RAY_AUTH_TOKEN_PATH"):
            origin, path = "RAY_AUTH_TOKEN_PATH", Path(env["RAY_AUTH_TOKEN_PATH"]).expanduser()
        else:
            origin, path = "~/.ray/auth_token", (home or Path.home()) / ".ray" / "auth_token"
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise InvalidRequest(f"cannot read the Ray token ({origin} {path}: "
                             f"{type(exc).__name__}); set provider token_path, RAY_AUTH_TOKEN, "
                             "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token") from None
    if not token:
        raise InvalidRequest(f"the Ray token file is empty ({origin} {path})")
    return token


# ------------------------------------------------------------------------------ reporting


class LifecycleReporter:
    """Reports lifecycle events through the control API's spooling client, never blocking.

    ``report`` writes the event to the client's durable spool (a local file write) and wakes a
    background thread that replays the spool in order; an unreachable API only delays delivery.
    With ``client=None`` events are validated and logged at debug level, nothing is sent.
    """

    def __init__(self, client: Any | None, *, cluster_name: str, provider: str,
                 retry_interval_s: float = 2.0) -> None:
        self.client = client
        self.cluster_name = cluster_name
        self.provider = provider
        self.retry_interval_s = retry_interval_s
        # The latest events reported by this process, in order (bounded: the monitor runs long).
        self.sent: deque[dict[str, Any]] = deque(maxlen=1000)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            from core.wire import LifecycleEventIn
            self._model: Any = LifecycleEventIn
        except ImportError:  # the control API package is optional on a worker image
            self._model = None

    @classmethod
    def from_settings(cls, settings: ProviderSettings, cluster_name: str,
                      default_spool: Path) -> LifecycleReporter:
        """A reporter with an ``InternalClient`` if ``control_api_url`` is set and importable."""
        client = None
        if settings.control_api_url:
            try:
                from control_api.client.internal import InternalClient
            except ImportError:
                log.warning("control_api_url is set but control_api.client is not installed: "
                            "lifecycle events are not reported")
            else:
                token = ""
                if settings.service_token_file:
                    try:
                        token = Path(settings.service_token_file).expanduser().read_text().strip()
                    except OSError as exc:
                        log.error("cannot read service_token_file (%s): events will be spooled "
                                  "until the token is fixed", type(exc).__name__)
                spool = Path(settings.spool_dir).expanduser() if settings.spool_dir \
                    else default_spool
                client = InternalClient(settings.control_api_url, token, spool_dir=spool,
                                        timeout=5.0, max_retries=1)
        return cls(client, cluster_name=cluster_name, provider=settings.cloud)

    def report(self, state: str, *, launch_id: str, instance_type: str,
               node_type: str | None = None, zone: str | None = None,
               provider_instance_id: str | None = None, ray_node_id: str | None = None,
               private_ip: str | None = None, public_ip: str | None = None,
               cloud_exists: bool | None = None, error_code: str | None = None,
               error_message: str | None = None, reason: str | None = None,
               cloud_created_at: datetime | None = None) -> None:
        """Record one transition; never raises (a reporting problem must not stop Ray)."""
        event = {
            # Deterministic per (launch, state): a provider restart re-reporting a state is a
            # duplicate for the control API, not a second transition.
            "event_id": f"{launch_id}:{state}", "launch_id": launch_id,
            "cluster_name": self.cluster_name, "provider": self.provider,
            "instance_type": instance_type, "zone": zone, "node_type": node_type,
            "provider_instance_id": provider_instance_id, "ray_node_id": ray_node_id,
            "private_ip": private_ip, "public_ip": public_ip, "state": state,
            "at": datetime.now(UTC).isoformat(), "error_code": error_code,
            "error_message": (error_message or "")[:4000] or None, "reason": reason,
            "cloud_exists": cloud_exists,
            "cloud_created_at": cloud_created_at.isoformat() if cloud_created_at else None,
        }
        event = {k: v for k, v in event.items() if v is not None}
        with self._lock:
            self.sent.append(event)
        log.info("lifecycle %s: launch %s (%s)%s", state, launch_id, instance_type,
                 f" [{error_code}]" if error_code else "")
        try:
            if self._model is not None:
                body = {"events": [self._model.model_validate(event).model_dump(mode="json")]}
            else:
                body = {"events": [event]}
            if self.client is None:
                return
            self.client.spool.put("lifecycle", body)
        except Exception:  # noqa: BLE001 - reporting is best effort by design
            log.exception("could not record lifecycle event %s for %s", state, launch_id)
            return
        self._ensure_thread()
        self._wake.set()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="inventiv-lifecycle",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.retry_interval_s)
            self._wake.clear()
            if self.client is None or self._stop.is_set():
                continue
            try:
                report = self.client.replay()
            except Exception:  # noqa: BLE001 - the sender must survive anything
                log.exception("lifecycle replay failed")
                continue
            if report.pending_batches == 0:
                # Nothing left: sleep until the next event.
                self._wake.wait()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Deliver what is spooled now (tests, shutdown); True when nothing is pending."""
        if self.client is None:
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.client.replay().pending_batches == 0:
                    return True
            except Exception:  # noqa: BLE001
                log.exception("lifecycle flush failed")
            time.sleep(0.2)
        return False

    def close(self) -> None:
        self._stop.set()
        self._wake.set()


# ------------------------------------------------------------------------------ Ray membership


def gcs_membership(head_address: str, timeout_s: float = 3.0) -> Callable[[], dict[str, str]]:
    """A probe returning ``{RAY_CLOUD_INSTANCE_ID: ray node id}`` of the ALIVE Ray nodes.

    Runs in the autoscaler monitor, which has the cluster token in its environment; the GCS is
    asked through the one probe of :mod:`core.ray_private` (its client is kept between calls).
    """
    return GcsProbe(head_address, timeout_s).alive_instance_ids


# ------------------------------------------------------------------------------ the provider


@dataclass
class _Node:
    """The provider's view of one node (a cloud instance, an in-flight create, or the head)."""

    node_id: str  # the launch id (RAY_CLOUD_INSTANCE_ID)
    node_type: str
    instance_type: str
    kind: str  # head | worker
    state: InstanceStatus
    provider_instance_id: str | None = None
    zone: str | None = None
    private_ip: str | None = None
    public_ip: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    reported: str | None = None  # the last lifecycle state reported by this process
    ray_node_id: str | None = None
    created_at: datetime | None = None  # the cloud's creation time (billing starts there)


def _error_category(err: CloudError) -> str:
    return err.code[:20]


class InventivNodeProvider(NodeProvider):
    """Ray node provider over the ``scaleway`` or ``local`` cloud (see module docstring)."""

    def __init__(self, provider_config: dict[str, Any], cluster_name: str, *,
                 cloud: Cloud | None = None, reporter: LifecycleReporter | None = None,
                 membership: Callable[[], dict[str, str]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(provider_config, cluster_name)
        self.settings = ProviderSettings.parse(provider_config)
        self._clock = clock
        self.cloud: Cloud = cloud or make_cloud(self.settings)
        state_dir = Path(str(provider_config.get("state_dir") or
                             Path.home() / ".inventiv" / "clusters" / cluster_name))
        self.reporter = reporter or LifecycleReporter.from_settings(
            self.settings, cluster_name, state_dir / "spool")
        self._membership = membership if membership is not None else \
            gcs_membership(self.settings.head_address)
        self._lock = threading.RLock()
        self._nodes: dict[str, _Node] = {}
        self._creating: dict[str, _Node] = {}
        self._terminating: dict[str, _Node] = {}
        self._listed_at = float("-inf")
        self._probed_at = float("-inf")
        self._known: set[str] = set()  # worker ids seen live, to notice ones that vanish
        self._token: str | None = None

    # -------------------------------------------------------------- listing

    def _head_node(self) -> _Node | None:
        if not self.settings.head_instance_id:
            return None
        host = self.settings.head_address.rsplit(":", 1)[0]
        return _Node(node_id=self.settings.head_instance_id,
                     node_type=self.settings.head_node_type, instance_type="head",
                     kind=NODE_KIND_HEAD, state=InstanceStatus.RUNNING, private_ip=host)

    def _node_from_instance(self, inst: CloudInstance) -> _Node:
        node_id = inst.launch_id or inst.provider_instance_id
        node_type = inst.node_type or ""
        is_head = node_id == self.settings.head_instance_id or \
            node_type == self.settings.head_node_type
        return _Node(node_id=node_id, node_type=node_type, instance_type=inst.instance_type,
                     kind=NODE_KIND_HEAD if is_head else NODE_KIND_WORKER, state=inst.state,
                     provider_instance_id=inst.provider_instance_id, zone=inst.zone,
                     private_ip=inst.private_ip, public_ip=inst.public_ip,
                     created_at=inst.created_at)

    def _refresh(self, force: bool = False) -> None:
        """Re-list the cloud when the cache is older than the TTL (call with the lock held)."""
        now = self._clock()
        if not force and now - self._listed_at < self.settings.cache_ttl_s:
            return
        self._finish_terminations()
        try:
            instances = self.cloud.list_instances(self.cluster_name)
        except CloudError as err:
            # A failed listing is not a deletion: keep serving the previous view.
            log.warning("listing %s failed (%s): keeping the cached view", self.cluster_name,
                        err)
            return
        self._listed_at = now
        nodes: dict[str, _Node] = {}
        for inst in instances:
            if inst.state not in LIVE_CLOUD_STATES:
                continue
            node = self._node_from_instance(inst)
            previous = self._nodes.get(node.node_id) or self._creating.get(node.node_id)
            if previous is not None:
                node.tags = dict(previous.tags)
                node.reported = previous.reported
                node.ray_node_id = previous.ray_node_id
                if node.node_type == "" and previous.node_type:
                    node.node_type = previous.node_type
            nodes[node.node_id] = node
        head = self._head_node()
        if head is not None and head.node_id not in nodes:
            nodes[head.node_id] = head
        for node_id, creating in self._creating.items():
            if node_id not in nodes:
                nodes[node_id] = creating
        vanished = self._known - set(nodes) - set(self._terminating)
        for node_id in vanished:
            old = self._nodes.get(node_id)
            self._known.discard(node_id)
            if old is not None and old.kind == NODE_KIND_WORKER:
                log.warning("node %s (%s) disappeared from the cloud listing", node_id,
                            old.provider_instance_id)
                self._report(old, "terminated", cloud_exists=False,
                             reason="disappeared from the cloud listing")
        self._known.update(n.node_id for n in nodes.values() if n.kind == NODE_KIND_WORKER
                           and n.node_id not in self._creating)
        self._nodes = nodes
        self._probe_membership(now)

    def _probe_membership(self, now: float) -> None:
        """Report ``ready`` for booted workers whose Ray node is alive (rate-limited)."""
        waiting = [n for n in self._nodes.values() if n.kind == NODE_KIND_WORKER and
                   n.state == InstanceStatus.RUNNING and n.reported in (None, "booting")]
        if not waiting or now - self._probed_at < self.settings.membership_poll_s:
            return
        self._probed_at = now
        try:
            alive = self._membership()
        except Exception as exc:  # noqa: BLE001 - the GCS may be unreachable for a moment
            log.info("Ray membership probe failed: %s", type(exc).__name__)
            return
        for node in waiting:
            ray_node_id = alive.get(node.node_id)
            if ray_node_id:
                node.ray_node_id = ray_node_id
                self._report(node, "ready", cloud_exists=True, ray_node_id=ray_node_id)

    def _visible(self) -> dict[str, _Node]:
        return {k: v for k, v in self._nodes.items() if k not in self._terminating}

    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        """Ids (launch ids) of the live nodes matching ``tag_filters``, head included."""
        with self._lock:
            self._refresh()
            return [node_id for node_id, node in self._visible().items()
                    if all(self._tags(node).get(k) == v for k, v in tag_filters.items())]

    def _tags(self, node: _Node) -> dict[str, str]:
        tags = {TAG_RAY_NODE_KIND: node.kind, TAG_RAY_USER_NODE_TYPE: node.node_type,
                TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE,
                TAG_RAY_NODE_NAME: f"ray-{self.cluster_name}-{node.kind}"}
        tags.update(node.tags)
        # What we know about the kind wins over whatever a caller set.
        tags[TAG_RAY_NODE_KIND] = node.kind
        return tags

    def _get(self, node_id: str) -> _Node | None:
        with self._lock:
            node = self._nodes.get(node_id) or self._creating.get(node_id)
            if node is None:
                self._refresh(force=True)
                node = self._nodes.get(node_id)
            return node

    def node_tags(self, node_id: str) -> dict[str, str]:
        node = self._get(node_id)
        return self._tags(node) if node is not None else {}

    def is_running(self, node_id: str) -> bool:
        with self._lock:
            node = self._visible().get(node_id) or self._creating.get(node_id)
            return node is not None and node.state == InstanceStatus.RUNNING

    def is_terminated(self, node_id: str) -> bool:
        with self._lock:
            self._refresh()
            return node_id not in self._visible()

    def internal_ip(self, node_id: str) -> str:
        node = self._get(node_id)
        return (node.private_ip if node else None) or ""

    def external_ip(self, node_id: str) -> str:
        node = self._get(node_id)
        return (node.public_ip if node else None) or ""

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        with self._lock:
            node = self._nodes.get(node_id) or self._creating.get(node_id)
            if node is not None:
                node.tags.update({k: v for k, v in tags.items() if k != TAG_RAY_NODE_KIND})

    # -------------------------------------------------------------- create

    def create_node(self, node_config: dict[str, Any], tags: dict[str, str],
                    count: int) -> dict[str, Any] | None:
        return self.create_node_with_resources_and_labels(node_config, tags, count, {}, {})

    def create_node_with_resources_and_labels(
            self, node_config: dict[str, Any], tags: dict[str, str], count: int,
            resources: dict[str, float], labels: dict[str, str]) -> dict[str, Any] | None:
        """Launch ``count`` nodes in parallel. Raises ``NodeLaunchException`` when any failed
        (capacity errors first, so Ray moves on to other node types)."""
        if count <= 0:
            return {}
        node_type = tags.get(TAG_RAY_USER_NODE_TYPE) or ""
        if not node_type:
            raise NodeLaunchException("invalid_request", "tags lack ray-user-node-type", None)
        if node_type == self.settings.head_node_type:
            raise NodeLaunchException("invalid_request", "the head is not launched by Ray",
                                      None)
        workers = min(count, self.settings.max_parallel_creates)
        created: dict[str, Any] = {}
        errors: list[tuple[CloudError, Any]] = []
        if workers == 1:
            outcomes = [self._create_one(node_config, tags, resources, labels)
                        for _ in range(count)]
        else:
            with ThreadPoolExecutor(max_workers=workers,
                                    thread_name_prefix="inventiv-create") as pool:
                futures = [pool.submit(self._create_one, node_config, tags, resources, labels)
                           for _ in range(count)]
                outcomes = [f.result() for f in futures]
        for outcome in outcomes:
            if isinstance(outcome, tuple):
                errors.append(outcome)
            else:
                created[outcome.node_id] = outcome
        if errors:
            errors.sort(key=lambda e: not e[0].capacity)
            err, exc_info = errors[0]
            raise NodeLaunchException(
                _error_category(err), f"{len(errors)}/{count} {node_type} node(s) failed: "
                f"{err}", exc_info)
        return created

    def _create_one(self, node_config: Mapping[str, Any], tags: Mapping[str, str],
                    resources: Mapping[str, float], labels: Mapping[str, str]
                    ) -> _Node | tuple[CloudError, Any]:
        node_type = tags[TAG_RAY_USER_NODE_TYPE]
        instance_type = str(node_config.get("instance_type") or "")
        launch_id = str(uuid.uuid4())
        node = _Node(node_id=launch_id, node_type=node_type, instance_type=instance_type,
                     kind=NODE_KIND_WORKER, state=InstanceStatus.PENDING,
                     tags={k: v for k, v in tags.items() if k != TAG_RAY_NODE_KIND})
        # The intent first: durable before any cloud call.
        self._report(node, "requested", reason=f"ray launch request "
                     f"{tags.get(TAG_RAY_LAUNCH_REQUEST, '?')}")
        with self._lock:
            self._creating[launch_id] = node
        try:
            request = self._launch_request(node, node_config, resources)
            self._report(node, "provisioning")
            inst = self.cloud.create(request)
        except CloudError as err:
            with self._lock:
                self._creating.pop(launch_id, None)
            exists = None if err.code == "unavailable" else False
            if err.provider_instance_id and err.code != "unavailable":
                exists = None  # a VM was made and discarded: the reconciler confirms
            self._report(node, "failed", cloud_exists=exists, error_code=err.code,
                         error_message=str(err), provider_instance_id=err.provider_instance_id)
            log.warning("launch %s (%s on %s) failed: %s", launch_id, node_type, instance_type,
                        err)
            return err, sys.exc_info()
        except Exception as exc:  # noqa: BLE001 - reported, then surfaced to Ray
            with self._lock:
                self._creating.pop(launch_id, None)
            self._report(node, "failed", cloud_exists=None, error_code="internal_error",
                         error_message=f"{type(exc).__name__}: {exc}")
            raise
        with self._lock:
            live = replace(node, state=inst.state, provider_instance_id=inst.provider_instance_id,
                           zone=inst.zone, private_ip=inst.private_ip, public_ip=inst.public_ip,
                           created_at=inst.created_at)
            self._creating.pop(launch_id, None)
            self._nodes[launch_id] = live
            self._known.add(launch_id)
        self._report(live, "booting", cloud_exists=True)
        return live

    def _ray_token(self) -> str:
        if self._token is None:
            self._token = resolve_ray_token(self.settings.token_path)
        return self._token

    def node_bootstrap(self, launch_id: str, node_type: str,
                       resources: Mapping[str, float]) -> NodeBootstrap:
        """What a new VM runs to join: the node type's resources, our launch id as its id."""
        cpus = resources.get("CPU")
        gpus = resources.get("GPU")
        custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU", "memory")}
        extra: dict[str, Any] = {}
        if self.settings.ray_executable:
            extra["ray_executable"] = self.settings.ray_executable
        return NodeBootstrap(
            head_address=self.settings.head_address, cloud_instance_id=launch_id,
            node_type=node_type, ray_token=self._ray_token(),
            num_cpus=int(cpus) if cpus is not None else None,
            num_gpus=int(gpus) if gpus is not None else None, resources=custom,
            worker_image=self.settings.worker_image, **extra)

    def _launch_request(self, node: _Node, node_config: Mapping[str, Any],
                        resources: Mapping[str, float]) -> LaunchRequest:
        if not node.instance_type:
            raise InvalidRequest("node_config lacks instance_type")
        hardware = getattr(self.cloud, "instance_types", {}).get(node.instance_type)
        if hardware is not None and resources and \
                {k: int(v) for k, v in resources.items()} != dict(hardware.resources):
            # The autoscaler would plan with resources the node never advertises.
            log.warning("node type %s declares %s but local instance type %s advertises %s",
                        node.node_type, dict(resources), node.instance_type,
                        dict(hardware.resources))
        user_data = None
        if self.settings.cloud != "local":
            # The local cloud runs the same bootstrap (argv/env) from its instance type.
            user_data = render_cloud_init(self.node_bootstrap(node.node_id, node.node_type,
                                                              resources))
        return LaunchRequest(
            launch_id=node.node_id, cluster_name=self.cluster_name, node_type=node.node_type,
            instance_type=node.instance_type, image=str(node_config.get("image") or "local"),
            zones=tuple(self.settings.zones),
            root_volume_gb=int(node_config.get("root_volume_gb") or 20), user_data=user_data,
            public_ip=False if self.settings.cloud == "scaleway" and
            self.settings.private_network_id else True,
            private_network_id=self.settings.private_network_id,
            security_group_id=self.settings.security_group_id)

    # -------------------------------------------------------------- terminate

    def terminate_node(self, node_id: str) -> dict[str, Any] | None:
        return self.terminate_nodes([node_id])

    def terminate_nodes(self, node_ids: list[str]) -> dict[str, Any] | None:
        """Start terminating workers (hidden from listings at once); never the head."""
        with self._lock:
            for node_id in node_ids:
                node = self._nodes.get(node_id)
                if node is None:
                    self._refresh(force=True)
                    node = self._nodes.get(node_id)
                if node_id == self.settings.head_instance_id or \
                        (node is not None and node.kind == NODE_KIND_HEAD):
                    log.warning("refusing to terminate the head node %s", node_id)
                    continue
                if node is None or node_id in self._terminating:
                    continue  # unknown or already on its way out: idempotent
                self._terminating[node_id] = node
                self._report(node, "terminating", cloud_exists=True,
                             reason="requested by the Ray autoscaler")
                self._terminate_step(node)
        return None

    def _terminate_step(self, node: _Node) -> None:
        """One non-blocking terminate call; reports ``terminated`` once the cloud is done."""
        if node.provider_instance_id is None:
            return  # its create has not answered yet: retried at the next refresh
        try:
            done = self.cloud.terminate(node.provider_instance_id, node.zone or "",
                                        launch_id=node.node_id, wait=False)
        except CloudError as err:
            log.warning("terminating %s failed (%s): will retry", node.node_id, err)
            return
        if done:
            self._terminating.pop(node.node_id, None)
            self._nodes.pop(node.node_id, None)
            self._known.discard(node.node_id)
            self._report(node, "terminated", cloud_exists=False)

    def _finish_terminations(self) -> None:
        for node in list(self._terminating.values()):
            if node.provider_instance_id is None:
                created = self._nodes.get(node.node_id)
                if created is not None and created.provider_instance_id:
                    node.provider_instance_id = created.provider_instance_id
                    node.zone = created.zone
            self._terminate_step(node)

    def wait_terminations(self, timeout_s: float = 60.0, poll_s: float = 0.2) -> bool:
        """Drive pending terminations to the end (CLI/tests); True when none is left."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                self._finish_terminations()
                if not self._terminating:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)

    # -------------------------------------------------------------- reporting

    def _report(self, node: _Node, state: str, **fields: Any) -> None:
        node.reported = state
        self.reporter.report(
            state, launch_id=node.node_id, instance_type=node.instance_type or "unknown",
            node_type=node.node_type or None, zone=fields.pop("zone", node.zone),
            provider_instance_id=fields.pop("provider_instance_id", None)
            or node.provider_instance_id,
            private_ip=node.private_ip, public_ip=node.public_ip,
            cloud_created_at=fields.pop("cloud_created_at", node.created_at), **fields)


def make_cloud(settings: ProviderSettings) -> Cloud:
    """The cloud adapter named by ``settings.cloud``, configured from the same mapping."""
    raw = settings.model_dump()
    if settings.cloud == "local":
        from cluster.clouds.local import LocalCloud, LocalConfig

        return LocalCloud(LocalConfig.from_mapping(raw))
    from cluster.clouds.scaleway import ScalewayCloud, ScalewayConfig

    return ScalewayCloud(ScalewayConfig.from_mapping(raw))


__all__ = ["InventivNodeProvider", "LifecycleReporter", "ProviderSettings", "gcs_membership",
           "make_cloud", "resolve_ray_token"]
