"""Scaleway adapter: the real ``scaleway`` SDK (2.12) behind :class:`core.clouds.Cloud`.

What the SDK does not do, this module does:
- an HTTP timeout on every call: the SDK calls ``requests.request`` with none, so our API
  classes override ``API._request`` (same request building) and send through a pooled
  ``requests.Session`` with ``timeout=(connect, read)``;
- bounded retries with exponential backoff, for safe calls only (list, get, delete, actions on an
  existing id, user data): a create is never retried blindly;
- errors mapped once, here, to :mod:`core.clouds` classes (``ScalewayException`` body
  ``type``, the legacy "Quota exceeded for this resource." message, non-JSON bodies, timeouts);
- our own boot waiter with a deadline (injectable clock and sleep), not the SDK's.

Create is "list by tag first": the launch id tag is looked up in every zone of the order before a
create; after an ambiguous failure (timeout, 5xx, lost response) the zone is listed by tag again
and a VM found is adopted; if none is found the call fails (the next call, or the reconciler,
adopts the VM if it appears) -- one launch id never yields two VMs.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any, TypeVar

import requests
from scaleway.block.v1 import BlockV1API
from scaleway.instance.v1 import (
    ListServersRequestOrder,
    Server,
    ServerAction,
    VolumeServerTemplate,
    VolumeVolumeType,
)
from scaleway.instance.v1.custom_api import InstanceUtilsV1API
from scaleway.ipam.v1 import IpamV1API
from scaleway_core.api import ScalewayException
from scaleway_core.client import Client

from core.clouds import (
    TAG_CLUSTER,
    TAG_LAUNCH,
    TAG_NODE_TYPE,
    AuthError,
    BootFailed,
    BootTimeout,
    CloudError,
    CloudInstance,
    InstanceStatus,
    InvalidRequest,
    LaunchRequest,
    NotFound,
    Offer,
    OutOfStock,
    QuotaExceeded,
    Transient,
    Unavailable,
    cluster_tag,
    launch_tag,
    normalise_status,
    parse_tags,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
GIB = 1024**3
GB = 10**9  # Scaleway volume sizes are decimal gigabytes, in bytes

# One status map for this cloud. We never power nodes off, so ``stopping`` means terminating.
SCALEWAY_STATUS_MAP: dict[str, InstanceStatus] = {
    "starting": InstanceStatus.PENDING,
    "running": InstanceStatus.RUNNING,
    "stopped": InstanceStatus.STOPPED,
    "stopped_in_place": InstanceStatus.STOPPED,
    "stopping": InstanceStatus.TERMINATING,
    "locked": InstanceStatus.UNKNOWN,
}

# Commercial types whose OS images are the GPU ones (driver, Docker, NVIDIA toolkit).
GPU_TYPE_PREFIXES = ("L4-", "L40S-", "H100", "H200", "B300", "GPU-", "RENDER-")


def needs_gpu_root_volume(instance_type: str, image: str) -> bool:
    """GPU OS images need a >= 125 GB system volume; GPU types always run them."""
    return "gpu" in image.lower() or instance_type.upper().startswith(GPU_TYPE_PREFIXES)


def volume_name(launch_id: str) -> str:
    """The root volume's name: how detached SBS volumes of a launch are found again."""
    return f"inventiv-{launch_id}-root"


@dataclass(frozen=True)
class ScalewayConfig:
    """Adapter settings. Credentials/project/API URL come from the SDK's ``SCW_*`` env/config."""

    zones: tuple[str, ...] = ("fr-par-2",)
    project_id: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_attempts: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    boot_timeout_s: float = 900.0
    poll_interval_s: float = 5.0
    terminate_timeout_s: float = 300.0
    cleanup_timeout_s: float = 60.0
    capacity_block_s: float = 600.0
    ambiguous_settle_s: float = 5.0
    root_volume_type: str = "sbs_volume"
    min_gpu_root_gb: int = 125
    per_page: int = 100
    max_list_restarts: int = 2

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ScalewayConfig:
        """Build from a provider-config mapping; unknown keys are ignored, zones become a tuple."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "zones" in kwargs:
            kwargs["zones"] = tuple(kwargs["zones"])
        return cls(**kwargs)


# ------------------------------------------------------------------------------ HTTP layer


class _BoundedHTTP:
    """Replaces ``scaleway_core.api.API._request``: the same request, with a timeout.

    The SDK sends every call with ``requests.request(...)`` and no timeout, so a hung API hangs the
    caller forever. This override builds the request exactly like the SDK (params, headers, auth
    header, ``x-total-count`` folded into the body) but sends it through a per-thread pooled
    ``requests.Session`` with ``timeout=(connect, read)``. It never logs bodies (user data holds
    the cluster token). A non-JSON error body (an HTML 502 from a proxy) is raised as our error
    here, where the status is still known, instead of the SDK's bare ``JSONDecodeError``.
    """

    client: Client
    _timeout: tuple[float, float]
    _local: threading.local

    def _setup_http(self, timeout: tuple[float, float]) -> None:
        self._timeout = timeout
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
        return session

    def _request(self, method: str, path: str, params: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None, body: Any = None
                 ) -> requests.Response:
        method = method.upper()
        extra: dict[str, str] = {}
        if method in ("POST", "PUT", "PATCH"):
            extra["Content-Type"] = "application/json; charset=utf-8"
        if body is None:
            body = {}
        raw_body = body if isinstance(body, bytes) else json.dumps(body)
        request_params: list[tuple[str, Any]] = []
        for key, value in (params or {}).items():
            if value is None:
                continue
            if isinstance(value, list):
                request_params.extend((key, item) for item in value)
            else:
                request_params.append((key, value))
        all_headers = {"accept": "application/json", "user-agent": self.client.user_agent,
                       **extra, **(headers or {})}
        if self.client.secret_key is not None:
            all_headers["x-auth-token"] = self.client.secret_key
        url = f"{self.client.api_url}{path}"
        log.debug("scaleway %s %s", method, path)
        response = self._session().request(
            method=method, url=url, params=request_params, headers=all_headers, data=raw_body,
            verify=not self.client.api_allow_insecure, timeout=self._timeout)
        if response.status_code >= 400 and not _is_json(response):
            raise _non_json_error(response, method, path)
        if response.headers.get("x-total-count"):
            data = response.json()
            data["total_count"] = response.headers.get("x-total-count")
            response._content = json.dumps(data).encode("utf-8")
        return response


def _is_json(response: requests.Response) -> bool:
    if not response.content:
        return False
    try:
        response.json()
    except ValueError:
        return False
    return True


def _non_json_error(response: requests.Response, method: str, path: str) -> CloudError:
    status = response.status_code
    message = f"HTTP {status} with a non-JSON body on {method} {path}"
    if status in (401, 403):
        return AuthError(message, status=status)
    if status == 429 or status >= 500:
        return Unavailable(message, status=status)
    return InvalidRequest(message, status=status)


class TimedInstanceAPI(_BoundedHTTP, InstanceUtilsV1API):
    """The SDK's Instance API (with ``create_server`` and user data) behind our HTTP layer."""

    def __init__(self, client: Client, *, timeout: tuple[float, float]) -> None:
        super().__init__(client)
        self._setup_http(timeout)


class TimedBlockAPI(_BoundedHTTP, BlockV1API):
    """The SDK's Block (SBS) API behind our HTTP layer."""

    def __init__(self, client: Client, *, timeout: tuple[float, float]) -> None:
        super().__init__(client)
        self._setup_http(timeout)


class TimedIpamAPI(_BoundedHTTP, IpamV1API):
    """The SDK's IPAM API behind our HTTP layer."""

    def __init__(self, client: Client, *, timeout: tuple[float, float]) -> None:
        super().__init__(client)
        self._setup_http(timeout)


# ------------------------------------------------------------------------------ error mapping


def _unsent(exc: requests.RequestException) -> bool:
    """True when the request surely never reached the API (connect refused or timed out)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return type(reason).__name__ == "NewConnectionError"
    return False


def classify_error(exc: BaseException, *, zone: str | None = None,
                   instance_type: str | None = None) -> CloudError:
    """Map anything the SDK or ``requests`` raises to our error classes (one place)."""
    if isinstance(exc, CloudError):
        exc.zone = exc.zone or zone
        exc.instance_type = exc.instance_type or instance_type
        return exc
    kw: dict[str, Any] = {"zone": zone, "instance_type": instance_type}
    if isinstance(exc, ScalewayException):
        status = exc.status_code
        try:
            body = exc.response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        raw_type = str(body.get("type") or "")
        message = str(body.get("message") or f"HTTP {status}")
        kw.update(status=status, raw_type=raw_type or None)
        if raw_type == "quotas_exceeded" or "quota exceeded" in message.lower():
            return QuotaExceeded(message, **kw)
        if raw_type == "out_of_stock":
            return OutOfStock(message, **kw)
        if raw_type in ("not_found", "unknown_resource") or status == 404:
            return NotFound(message, **kw)
        if raw_type in ("transient_state", "locked"):
            return Transient(message, **kw)
        if raw_type == "precondition_failed" and body.get("precondition") == \
                "resource_still_in_use":
            return Transient(message, **kw)
        if raw_type in ("denied_authentication", "permissions_denied") or status in (401, 403):
            return AuthError(message, **kw)
        if status is not None and (status == 429 or status >= 500):
            return Unavailable(message, **kw)
        return InvalidRequest(message, **kw)
    if isinstance(exc, requests.JSONDecodeError):
        return Unavailable("the API answered a body that is not JSON", **kw)
    if isinstance(exc, requests.Timeout):
        err: CloudError = Unavailable(f"timeout: {type(exc).__name__}", **kw)
        err.request_sent = not _unsent(exc)
        return err
    if isinstance(exc, requests.RequestException):
        err = Unavailable(f"connection error: {type(exc).__name__}", **kw)
        err.request_sent = not _unsent(exc)
        return err
    return Unavailable(f"unexpected {type(exc).__name__}", **kw)


_MAPPED = (ScalewayException, requests.RequestException, CloudError)


# ------------------------------------------------------------------------------ adapter


class ScalewayCloud:
    """The Scaleway adapter. Thread-safe for concurrent creates/terminates/listings."""

    name = "scaleway"

    def __init__(self, config: ScalewayConfig | None = None, *, client: Client | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 jitter: Callable[[], float] = random.random) -> None:
        self.config = config or ScalewayConfig()
        if not self.config.zones:
            raise InvalidRequest("at least one zone is required")
        self.client = client or Client.from_config_file_and_env()
        if self.config.project_id:
            self.client.default_project_id = self.config.project_id
        timeout = (self.config.connect_timeout_s, self.config.read_timeout_s)
        try:
            self._instance = TimedInstanceAPI(self.client, timeout=timeout)
            self._block = TimedBlockAPI(self.client, timeout=timeout)
            self._ipam = TimedIpamAPI(self.client, timeout=timeout)
        except ValueError as exc:  # the SDK validates credentials/settings formats
            raise AuthError(f"invalid Scaleway client settings: {exc}") from exc
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._lock = threading.Lock()
        self._blocked: dict[tuple[str, str], tuple[float, CloudError]] = {}
        self._creating: set[str] = set()  # launch ids with a create in flight in this process
        self.stats: Counter[str] = Counter()  # HTTP calls per operation (for benchmarks)

    # -------------------------------------------------------------- calls, retries

    def _call(self, op: str, fn: Callable[[], T], *, safe: bool, zone: str | None = None,
              instance_type: str | None = None,
              retry_on: tuple[type[CloudError], ...] = (Unavailable, Transient)) -> T:
        """Run one SDK call; map its errors; retry with backoff only if ``safe``."""
        attempt = 0
        while True:
            attempt += 1
            with self._lock:
                self.stats[op] += 1
            try:
                return fn()
            except _MAPPED as exc:
                err = classify_error(exc, zone=zone, instance_type=instance_type)
                if not (safe and isinstance(err, retry_on)
                        and attempt < self.config.max_attempts):
                    raise err from (None if err is exc else exc)
                delay = min(self.config.backoff_max_s,
                            self.config.backoff_base_s * 2 ** (attempt - 1))
                delay *= 0.5 + 0.5 * self._jitter()
                log.warning("scaleway %s failed (%s), retry %d/%d in %.2fs", op, err.code,
                            attempt, self.config.max_attempts - 1, delay)
                self._sleep(delay)

    # -------------------------------------------------------------- capacity blocking

    def is_blocked(self, instance_type: str, zone: str) -> bool:
        """True while (type, zone) is blocked after a capacity error."""
        with self._lock:
            entry = self._blocked.get((instance_type, zone))
            if entry is None:
                return False
            if self._clock() >= entry[0]:
                del self._blocked[(instance_type, zone)]
                return False
            return True

    def block(self, instance_type: str, zone: str, error: CloudError) -> None:
        """Block (type, zone) for ``capacity_block_s`` after a capacity error."""
        with self._lock:
            self._blocked[(instance_type, zone)] = (
                self._clock() + self.config.capacity_block_s, error)
        log.warning("scaleway: %s blocked in %s for %.0fs (%s)", instance_type, zone,
                    self.config.capacity_block_s, error.code)

    def _block_error(self, instance_type: str, zone: str) -> CloudError | None:
        with self._lock:
            entry = self._blocked.get((instance_type, zone))
            return entry[1] if entry else None

    # -------------------------------------------------------------- reading

    def _to_instance(self, server: Server, zone: str,
                     private_ip: str | None = None) -> CloudInstance:
        tags = parse_tags(server.tags or [])
        public_ip = None
        if server.public_ip is not None:
            public_ip = server.public_ip.address
        elif server.public_ips:
            public_ip = server.public_ips[0].address
        volume_ids = tuple(v.id for v in (server.volumes or {}).values()
                           if str(v.volume_type) == "sbs_volume" and v.id)
        return CloudInstance(
            provider_instance_id=server.id, launch_id=tags.get(TAG_LAUNCH) or None,
            cluster_name=tags.get(TAG_CLUSTER) or None, node_type=tags.get(TAG_NODE_TYPE) or None,
            instance_type=server.commercial_type, zone=str(server.zone or zone),
            state=normalise_status(SCALEWAY_STATUS_MAP, str(server.state)),
            private_ip=private_ip or server.private_ip, public_ip=public_ip,
            created_at=server.creation_date, tags=tuple(server.tags or ()),
            raw_state=str(server.state), volume_ids=volume_ids)

    def _get_server(self, server_id: str, zone: str) -> Server:
        resp = self._call("get_server", functools.partial(
            self._instance.get_server, server_id=server_id, zone=zone), safe=True, zone=zone)
        return resp.server

    def _private_ip(self, server: Server, zone: str) -> str | None:
        """The server's private address: legacy ``private_ip``, else its private NIC via IPAM."""
        if server.private_ip:
            return server.private_ip
        for nic in server.private_nics or []:
            resp = self._call("list_ips", functools.partial(
                self._ipam.list_i_ps, region=zone.rsplit("-", 1)[0], resource_id=nic.id,
                resource_type="instance_private_nic"), safe=True, zone=zone)
            for ip in resp.ips:
                if not ip.is_ipv6 and ip.address:
                    return ip.address.split("/", 1)[0]
        return None

    def _list_zone(self, zone: str, tags: list[str]) -> list[Server]:
        """Every server in ``zone`` carrying all ``tags``, through every page.

        Pages are ordered oldest first, so servers created meanwhile land on later pages; a
        deletion meanwhile shifts items (one could be skipped), which shows as a smaller total:
        the listing restarts, and fails as transient if it keeps changing -- a partial listing
        must never look like a deletion to the reconciler.
        """
        per_page = self.config.per_page
        for _restart in range(self.config.max_list_restarts + 1):
            seen: dict[str, Server] = {}
            first_total: int | None = None
            shrunk = False
            page = 1
            while True:
                resp = self._call("list_servers", functools.partial(
                    self._instance.list_servers, zone=zone, tags=tags, per_page=per_page,
                    page=page, order=ListServersRequestOrder.CREATION_DATE_ASC),
                    safe=True, zone=zone)
                total = int(resp.total_count or 0)
                if first_total is None:
                    first_total = total
                elif total < first_total:
                    shrunk = True
                    break
                for server in resp.servers:
                    seen.setdefault(server.id, server)
                if len(resp.servers) < per_page or (total and page * per_page >= total):
                    break
                page += 1
            if not shrunk:
                # Scaleway's tag filter is the contract; checking again costs nothing.
                return [s for s in seen.values() if all(t in (s.tags or []) for t in tags)]
            log.info("scaleway: listing of %s changed during pagination, restarting", zone)
        raise Transient(f"the server listing of {zone} kept changing during pagination",
                        zone=zone)

    def list_instances(self, cluster_name: str) -> list[CloudInstance]:
        """Every VM tagged with this cluster in every configured zone (never another cluster's)."""
        tag = cluster_tag(cluster_name)
        out: dict[str, CloudInstance] = {}
        for zone in self.config.zones:
            for server in self._list_zone(zone, [tag]):
                out[server.id] = self._to_instance(server, zone)
        return sorted(out.values(), key=lambda i: (i.created_at is None, i.created_at,
                                                   i.provider_instance_id))

    def find_all_by_launch_id(self, cluster_name: str, launch_id: str,
                              zones: Sequence[str] = ()) -> list[Server]:
        """Every server carrying this cluster and launch id (more than one is a leak)."""
        found: list[Server] = []
        for zone in zones or self.config.zones:
            found.extend(self._list_zone(zone, [cluster_tag(cluster_name), launch_tag(launch_id)]))
        found.sort(key=lambda s: (s.creation_date is None, s.creation_date, s.id))
        if len(found) > 1:
            log.error("scaleway: launch %s has %d VMs: %s", launch_id, len(found),
                      [s.id for s in found])
        return found

    def find_by_launch_id(self, cluster_name: str, launch_id: str,
                          zones: Sequence[str] = ()) -> CloudInstance | None:
        """The (oldest) VM carrying this launch id, if any."""
        found = self.find_all_by_launch_id(cluster_name, launch_id, zones)
        if not found:
            return None
        return self._to_instance(found[0], str(found[0].zone))

    def get(self, provider_instance_id: str, zone: str) -> CloudInstance:
        """One VM, with its private IP (from IPAM in routed-IP mode); NotFound when gone."""
        server = self._get_server(provider_instance_id, zone)
        private_ip = None
        if str(server.state) == "running":
            private_ip = self._private_ip(server, zone)
        return self._to_instance(server, zone, private_ip)

    # -------------------------------------------------------------- catalog

    def _paged_dict(self, op: str, zone: str, fetch: Callable[[int], Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        page = 1
        while True:
            resp = self._call(op, functools.partial(fetch, page), safe=True, zone=zone)
            batch = resp.servers or {}
            out.update(batch)
            total = int(resp.total_count or 0)
            if not batch or len(batch) < self.config.per_page or (total and len(out) >= total):
                return out
            page += 1

    def availability(self, zone: str) -> dict[str, str]:
        """``{instance_type: available|scarce|shortage}`` for one zone."""
        raw = self._paged_dict("availability", zone, lambda page: (
            self._instance.get_server_types_availability(
                zone=zone, per_page=self.config.per_page, page=page)))
        return {name: str(a.availability) for name, a in raw.items()}

    def catalog(self) -> list[Offer]:
        """Offers for every type in every configured zone: hourly price x availability."""
        offers: list[Offer] = []
        for zone in self.config.zones:
            types = self._paged_dict("list_servers_types", zone, functools.partial(
                self._list_types_page, zone))
            avail = self.availability(zone)
            for name in sorted(types):
                t = types[name]
                gpu_info = t.gpu_info
                offers.append(Offer(
                    provider=self.name, instance_type=name, zone=zone,
                    hourly_eur=Decimal(str(t.hourly_price)).normalize()
                    if t.hourly_price else Decimal("0"),
                    availability=avail.get(name, "unknown"), gpu_count=int(t.gpu or 0),
                    gpu_model=gpu_info.gpu_name if gpu_info else None,
                    gpu_vram_gb=round(gpu_info.gpu_memory / GIB) if gpu_info
                    and gpu_info.gpu_memory else None,
                    vcpus=t.ncpus, ram_gb=round(t.ram / GIB) if t.ram else None))
        return offers

    def _list_types_page(self, zone: str, page: int) -> Any:
        return self._instance.list_servers_types(zone=zone, per_page=self.config.per_page,
                                                 page=page)

    # -------------------------------------------------------------- create

    def _validate(self, req: LaunchRequest) -> None:
        if not req.launch_id or not req.cluster_name or not req.node_type:
            raise InvalidRequest("launch_id, cluster_name and node_type are required")
        if not req.instance_type or not req.image:
            raise InvalidRequest("instance_type and image are required")
        if req.root_volume_gb < 1:
            raise InvalidRequest("root_volume_gb must be positive")
        if needs_gpu_root_volume(req.instance_type, req.image) and \
                req.root_volume_gb < self.config.min_gpu_root_gb:
            raise InvalidRequest(
                f"GPU images need a root volume of at least {self.config.min_gpu_root_gb} GB "
                f"(got {req.root_volume_gb} GB)", instance_type=req.instance_type)

    def create(self, request: LaunchRequest) -> CloudInstance:
        """Create and boot one VM for ``request.launch_id``, adopting one that already exists.

        Zones are tried in order; a quota/out-of-stock error blocks (type, zone) for
        ``capacity_block_s`` and moves to the next zone. Raises the last capacity error when no
        zone is left, :class:`Unavailable` when the outcome of a create is unknown.
        """
        self._validate(request)
        with self._lock:
            if request.launch_id in self._creating:
                # Two concurrent creates of one launch would both list nothing and both create.
                raise Transient(f"a create for launch {request.launch_id} is already running")
            self._creating.add(request.launch_id)
        try:
            return self._create(request)
        finally:
            with self._lock:
                self._creating.discard(request.launch_id)

    def _create(self, request: LaunchRequest) -> CloudInstance:
        zones = request.zones or self.config.zones
        existing = self.find_all_by_launch_id(request.cluster_name, request.launch_id, zones)
        if existing:
            server = existing[0]
            log.info("scaleway: launch %s already has VM %s (%s): adopting", request.launch_id,
                     server.id, server.state)
            return self._bring_up(server, str(server.zone), request)
        last_error: CloudError | None = None
        for zone in zones:
            if self.is_blocked(request.instance_type, zone):
                blocked = self._block_error(request.instance_type, zone)
                if blocked is not None:
                    last_error = type(blocked)(
                        f"{request.instance_type} is blocked in {zone} after: {blocked.message}",
                        zone=zone, instance_type=request.instance_type,
                        raw_type=blocked.raw_type)
                continue
            try:
                self._check_availability(request.instance_type, zone)
                server = self._create_once(request, zone)
                return self._bring_up(server, zone, request)
            except CloudError as err:
                if not err.capacity:
                    raise
                self.block(request.instance_type, zone, err)
                last_error = err
        if last_error is None:
            last_error = OutOfStock("no zone to try", instance_type=request.instance_type)
        raise last_error

    def _check_availability(self, instance_type: str, zone: str) -> None:
        avail = self.availability(zone)
        state = avail.get(instance_type)
        if state is None:
            raise OutOfStock(f"{instance_type} is not offered in {zone}", zone=zone,
                             instance_type=instance_type)
        if state == "shortage":
            raise OutOfStock(f"{instance_type} is in shortage in {zone}", zone=zone,
                             instance_type=instance_type)

    def _create_once(self, req: LaunchRequest, zone: str) -> Server:
        """One create call. Never resent after an ambiguous failure: the zone is listed instead."""
        name = req.name or f"{req.cluster_name}-{req.node_type}-{req.launch_id[:8]}"
        volumes = {"0": VolumeServerTemplate(
            volume_type=VolumeVolumeType(self.config.root_volume_type),
            size=req.root_volume_gb * GB, name=volume_name(req.launch_id), boot=None)}
        create = functools.partial(
            self._instance.create_server, zone=zone, commercial_type=req.instance_type,
            name=name, image=req.image, volumes=volumes, tags=req.all_tags(),
            dynamic_ip_required=req.public_ip, routed_ip_enabled=True,
            security_group=req.security_group_id)
        for attempt in (1, 2):
            try:
                resp = self._call("create_server", create, safe=False, zone=zone,
                                  instance_type=req.instance_type)
                log.info("scaleway: created %s (%s in %s) for launch %s", resp.server.id,
                         req.instance_type, zone, req.launch_id)
                return resp.server
            except (Unavailable, Transient) as err:
                sent = getattr(err, "request_sent", True)
                if sent and self.config.ambiguous_settle_s > 0:
                    self._sleep(self.config.ambiguous_settle_s)
                found = self._list_zone(zone, [cluster_tag(req.cluster_name),
                                               launch_tag(req.launch_id)])
                if found:
                    log.warning("scaleway: create for launch %s failed (%s) but VM %s exists: "
                                "adopting", req.launch_id, err.code, found[0].id)
                    return found[0]
                if sent or attempt == 2:
                    # The create may still land: fail, and let the next call (list-first) or
                    # the reconciler adopt it. Resending could make a second VM.
                    raise Unavailable(
                        f"create outcome unknown for launch {req.launch_id} ({err.message}); "
                        "not resent", status=err.status, zone=zone,
                        instance_type=req.instance_type) from err
                # The request never left (connection refused/connect timeout): resend once.
                self._sleep(self.config.backoff_base_s)
        raise AssertionError("unreachable")  # pragma: no cover

    def _bring_up(self, server: Server, zone: str, req: LaunchRequest) -> CloudInstance:
        """stopped -> (private NIC) -> user data -> poweron -> wait running, with a deadline."""
        deadline = self._clock() + self.config.boot_timeout_s
        state = str(server.state)
        if state == "stopping":
            raise Transient(f"VM {server.id} of launch {req.launch_id} is stopping", zone=zone,
                            provider_instance_id=server.id)
        if state in ("stopped", "stopped_in_place"):
            try:
                self._tag_volumes(server, zone, req)
                if req.private_network_id:
                    self._ensure_private_nic(server, zone, req.private_network_id, deadline)
                if req.user_data is not None:
                    self._call("set_user_data", functools.partial(
                        self._instance.set_server_user_data, server_id=server.id,
                        key="cloud-init", content=req.user_data.encode("utf-8"), zone=zone),
                        safe=True, zone=zone)
                self._power_on(server.id, zone, req)
            except CloudError as err:
                err.provider_instance_id = server.id
                self._discard(server.id, zone, req.launch_id, why=err.code)
                raise
        return self._wait_running(server.id, zone, req, deadline)

    def _tag_volumes(self, server: Server, zone: str, req: LaunchRequest) -> None:
        """Give the SBS volumes the VM's tags, so the cluster's detached volumes can be found
        (and reaped) after the VM is gone, whoever stopped calling."""
        tags = req.all_tags()
        for vol in (server.volumes or {}).values():
            if str(vol.volume_type) != "sbs_volume" or not vol.id:
                continue
            self._call("update_volume", functools.partial(
                self._block.update_volume, volume_id=vol.id, zone=zone, tags=tags),
                safe=True, zone=zone)

    def user_data_keys(self, provider_instance_id: str, zone: str) -> list[str]:
        """The user-data keys the VM still has (``cloud-init``, ...)."""
        resp = self._call("list_user_data", functools.partial(
            self._instance.list_server_user_data, server_id=provider_instance_id, zone=zone),
            safe=True, zone=zone)
        return list(resp.user_data or [])

    def delete_user_data(self, provider_instance_id: str, zone: str,
                         key: str = "cloud-init") -> None:
        """Remove one user-data key of a VM (idempotent: an absent key is done)."""
        try:
            self._call("delete_user_data", functools.partial(
                self._instance.delete_server_user_data, server_id=provider_instance_id,
                key=key, zone=zone), safe=True, zone=zone)
        except NotFound:
            return

    def reap_detached_volumes(self, cluster_name: str) -> list[str]:
        """Delete every SBS volume tagged with the cluster that no VM holds; returns their ids.

        Safe to run at any time: an attached volume is never touched, and a volume that gets
        attached between the listing and the delete is refused by the API (412) and kept."""
        tag = cluster_tag(cluster_name)
        deleted: list[str] = []
        for zone in self.config.zones:
            page = 1
            candidates: list[str] = []
            while True:
                resp = self._call("list_volumes", functools.partial(
                    self._block.list_volumes, include_deleted=False, zone=zone, tags=[tag],
                    page=page,
                    page_size=self.config.per_page), safe=True, zone=zone)
                candidates.extend(v.id for v in resp.volumes
                                  if tag in (v.tags or []) and not v.references
                                  and str(v.status) == "available")
                if len(resp.volumes) < self.config.per_page:
                    break
                page += 1
            for vid in candidates:
                try:
                    self._call("delete_volume", functools.partial(
                        self._block.delete_volume, volume_id=vid, zone=zone), safe=True,
                        zone=zone, retry_on=(Unavailable,))
                except (NotFound, Transient, InvalidRequest) as err:
                    log.info("scaleway: detached volume %s not reaped (%s)", vid, err.code)
                    continue
                log.info("scaleway: reaped detached volume %s of cluster %s", vid, cluster_name)
                deleted.append(vid)
        return deleted

    def _ensure_private_nic(self, server: Server, zone: str, private_network_id: str,
                            deadline: float) -> None:
        """Attach the private network before boot (booting first leaves DHCP broken)."""
        nic = next((n for n in server.private_nics or []
                    if n.private_network_id == private_network_id), None)
        if nic is None:
            # Not idempotent, but the server is ours and listed first: a lost answer shows up
            # in the server's private_nics on the next get.
            try:
                nic = self._call("create_private_nic", functools.partial(
                    self._instance.create_private_nic, server_id=server.id,
                    private_network_id=private_network_id, zone=zone),
                    safe=False, zone=zone).private_nic
            except Unavailable:
                current = self._get_server(server.id, zone)
                nic = next((n for n in current.private_nics or []
                            if n.private_network_id == private_network_id), None)
                if nic is None:
                    raise
        while str(nic.state) != "available":
            if str(nic.state) == "syncing_error":
                raise BootFailed(f"private NIC {nic.id} failed to sync", zone=zone)
            if self._clock() >= deadline:
                raise BootTimeout(f"private NIC {nic.id} not available in time", zone=zone)
            self._sleep(self.config.poll_interval_s)
            nic = self._call("get_private_nic", functools.partial(
                self._instance.get_private_nic, server_id=server.id, private_nic_id=nic.id,
                zone=zone), safe=True, zone=zone).private_nic

    def _power_on(self, server_id: str, zone: str, req: LaunchRequest) -> None:
        try:
            self._call("poweron", functools.partial(
                self._instance.server_action, server_id=server_id, zone=zone,
                action=ServerAction.POWERON), safe=True, zone=zone,
                instance_type=req.instance_type, retry_on=(Unavailable,))
        except CloudError as err:
            if err.capacity:
                raise
            # A poweron whose first answer was lost is refused when resent: look at the server.
            current = self._get_server(server_id, zone)
            if str(current.state) in ("starting", "running"):
                return
            raise

    def _wait_running(self, server_id: str, zone: str, req: LaunchRequest,
                      deadline: float) -> CloudInstance:
        while True:
            try:
                server = self._get_server(server_id, zone)
            except NotFound as err:
                raise BootFailed(f"VM {server_id} disappeared while booting", zone=zone,
                                 instance_type=req.instance_type,
                                 provider_instance_id=server_id) from err
            except Unavailable as err:
                # The API being flaky is not the VM failing: keep waiting until the deadline.
                log.warning("scaleway: polling %s failed (%s)", server_id, err.code)
                server = None
            if server is not None:
                state = str(server.state)
                if state == "running":
                    return self._to_instance(server, zone, self._private_ip(server, zone))
                if state in ("stopped", "stopped_in_place"):
                    self._discard(server_id, zone, req.launch_id, why="boot_failed")
                    raise BootFailed(f"VM {server_id} fell back to {state} while booting "
                                     f"({server.state_detail})", zone=zone,
                                     instance_type=req.instance_type,
                                     provider_instance_id=server_id)
            remaining = deadline - self._clock()
            if remaining <= 0:
                self._discard(server_id, zone, req.launch_id, why="boot_timeout")
                raise BootTimeout(f"VM {server_id} not running after "
                                  f"{self.config.boot_timeout_s:.0f}s", zone=zone,
                                  instance_type=req.instance_type,
                                  provider_instance_id=server_id)
            self._sleep(min(self.config.poll_interval_s, remaining))

    def _discard(self, server_id: str, zone: str, launch_id: str, *, why: str) -> None:
        """Best-effort delete of a VM we could not boot; a failure is left to the reconciler."""
        try:
            self._terminate(server_id, zone, launch_id, wait=True,
                            timeout_s=self.config.cleanup_timeout_s)
            log.info("scaleway: discarded VM %s (%s)", server_id, why)
        except CloudError as err:
            log.warning("scaleway: could not discard VM %s after %s (%s); its tags let the "
                        "reconciler reap it", server_id, why, err.code)

    # -------------------------------------------------------------- terminate

    def terminate(self, provider_instance_id: str, zone: str, *, launch_id: str | None = None,
                  wait: bool = True) -> bool:
        """Delete the VM, then its SBS volumes (``terminate`` only detaches them). Idempotent.

        ``launch_id`` lets a later call find the detached volumes after the server is gone.
        Raises :class:`Transient` if ``wait`` and the deletion is not over by the deadline.
        """
        return self._terminate(provider_instance_id, zone, launch_id, wait=wait,
                               timeout_s=self.config.terminate_timeout_s)

    def _terminate(self, server_id: str, zone: str, launch_id: str | None, *, wait: bool,
                   timeout_s: float) -> bool:
        deadline = self._clock() + timeout_s
        volume_ids: set[str] = set()
        while True:
            try:
                server: Server | None = self._get_server(server_id, zone)
            except NotFound:
                server = None
            if server is None:
                break
            volume_ids.update(v.id for v in (server.volumes or {}).values()
                              if str(v.volume_type) == "sbs_volume" and v.id)
            state = str(server.state)
            try:
                if state == "running":
                    self._call("terminate", functools.partial(
                        self._instance.server_action, server_id=server_id, zone=zone,
                        action=ServerAction.TERMINATE), safe=True, zone=zone,
                        retry_on=(Unavailable,))
                elif state in ("stopped", "stopped_in_place"):
                    self._call("delete_server", functools.partial(
                        self._instance.delete_server, server_id=server_id, zone=zone),
                        safe=True, zone=zone, retry_on=(Unavailable,))
                    continue
            except NotFound:
                break
            except (Transient, InvalidRequest) as err:
                # Raced with a state change (e.g. it just started stopping): look again.
                log.info("scaleway: %s on %s refused (%s), re-reading", state, server_id,
                         err.code)
            if not wait:
                return False
            if self._clock() >= deadline:
                raise Transient(f"VM {server_id} still {state} after {timeout_s:.0f}s",
                                zone=zone, provider_instance_id=server_id)
            self._sleep(self.config.poll_interval_s)
        if launch_id:
            volume_ids.update(self._volumes_of_launch(zone, launch_id))
        pending = set(volume_ids)
        while pending:
            for vid in sorted(pending):
                try:
                    self._call("delete_volume", functools.partial(
                        self._block.delete_volume, volume_id=vid, zone=zone), safe=True,
                        zone=zone, retry_on=(Unavailable,))
                    pending.discard(vid)
                    log.info("scaleway: deleted volume %s of VM %s", vid, server_id)
                except NotFound:
                    pending.discard(vid)
                except Transient:
                    pass  # still detaching from the server
            if not pending:
                break
            if not wait:
                return False
            if self._clock() >= deadline:
                raise Transient(f"volumes {sorted(pending)} of VM {server_id} still attached",
                                zone=zone, provider_instance_id=server_id)
            self._sleep(self.config.poll_interval_s)
        return True

    def _volumes_of_launch(self, zone: str, launch_id: str) -> list[str]:
        name = volume_name(launch_id)
        ids: list[str] = []
        page = 1
        while True:
            resp = self._call("list_volumes", functools.partial(
                self._block.list_volumes, include_deleted=False, zone=zone, name=name,
                page=page, page_size=self.config.per_page), safe=True, zone=zone)
            ids.extend(v.id for v in resp.volumes if v.name == name)
            if len(resp.volumes) < self.config.per_page:
                return ids
            page += 1


__all__ = [
    "SCALEWAY_STATUS_MAP", "ScalewayCloud", "ScalewayConfig", "TimedBlockAPI",
    "TimedInstanceAPI", "TimedIpamAPI", "classify_error", "needs_gpu_root_volume",
    "volume_name",
]
