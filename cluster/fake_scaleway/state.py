"""In-memory state of the fake Scaleway API: servers, SBS volumes, private NICs, IPAM IPs, catalog.

States are time-driven by a controllable clock (:class:`FakeClock`) and advanced lazily on every
read: ``poweron`` moves ``stopped -> starting``, then ``running`` (with IPs) after
``boot_seconds``; ``terminate`` moves ``running -> stopping`` and deletes the server after
``stop_seconds`` (SBS volumes are only detached, as on Scaleway); ``delete`` needs ``stopped``.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cluster.fake_scaleway.faults import FaultBook

GIB = 1024**3
ZONES = ("fr-par-1", "fr-par-2", "nl-ams-1", "pl-waw-2")
GPU_ZONES = ("fr-par-2", "nl-ams-1", "pl-waw-2")


def region_of(zone: str) -> str:
    """``fr-par-2`` -> ``fr-par``."""
    return zone.rsplit("-", 1)[0]


class FakeClock:
    """Seconds as a float. ``auto``: follows real time (plus manual advances); else frozen.

    Tests share one instance between the fake and the adapter (whose injected ``sleep`` advances
    it), so time-driven states move exactly as far as the code under test waited.
    """

    def __init__(self, start: float = 1_000.0, auto: bool = False) -> None:
        self._lock = threading.Lock()
        self._offset = start
        self._auto = auto
        self._t0 = time.monotonic()

    def now(self) -> float:
        with self._lock:
            real = time.monotonic() - self._t0 if self._auto else 0.0
            return self._offset + real

    def __call__(self) -> float:
        return self.now()

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._offset += max(0.0, seconds)
        return self.now()

    def sleep(self, seconds: float) -> None:
        """An injectable ``sleep`` that only moves this clock."""
        self.advance(seconds)


@dataclass
class ProductType:
    """One instance type of the fake catalog."""

    name: str
    hourly_price: float
    ncpus: int
    ram_gb: int
    gpu: int = 0
    gpu_name: str | None = None
    gpu_memory_gb: int | None = None
    zones: tuple[str, ...] = ZONES

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "monthly_price": round(self.hourly_price * 730, 2),
            "hourly_price": self.hourly_price,
            "alt_names": [],
            "ncpus": self.ncpus,
            "ram": self.ram_gb * GIB,
            "arch": "x86_64",
            "gpu": self.gpu,
            "volumes_constraint": {"min_size": 0, "max_size": 0},
            "per_volume_constraint": {"l_ssd": {"min_size": 0, "max_size": 0}},
            "scratch_storage_max_volumes_count": 0,
            "end_of_service": False,
            "network": {"interfaces": [], "ipv6_support": True,
                        "sum_internal_bandwidth": 2_000_000_000,
                        "sum_internet_bandwidth": 2_000_000_000},
            "capabilities": {"boot_types": ["local"], "block_storage": True,
                             "max_file_systems": 0},
            "block_bandwidth": 2_000_000_000,
        }
        if self.gpu:
            body["gpu_info"] = {"gpu_manufacturer": "NVIDIA", "gpu_name": self.gpu_name,
                                "gpu_memory": (self.gpu_memory_gb or 0) * GIB}
        return body


DEFAULT_PRODUCTS: tuple[ProductType, ...] = (
    ProductType("DEV1-S", 0.0088, 2, 2),
    ProductType("POP2-2C-8G", 0.0735, 2, 8),
    ProductType("POP2-4C-16G", 0.147, 4, 16),
    ProductType("L4-1-24G", 0.75, 8, 48, 1, "L4", 24, GPU_ZONES),
    ProductType("L4-2-24G", 1.5, 16, 96, 2, "L4", 24, GPU_ZONES),
    ProductType("L40S-1-48G", 1.4, 8, 96, 1, "L40S", 48, GPU_ZONES),
    ProductType("H100-1-80G", 2.73, 24, 240, 1, "H100", 80, ("fr-par-2", "pl-waw-2")),
)


@dataclass
class FakeConfig:
    """Timings of the time-driven states, in fake-clock seconds."""

    boot_seconds: float = 0.0
    stop_seconds: float = 0.0
    nic_seconds: float = 0.0
    secret_key: str | None = None  # when set, X-Auth-Token must equal it
    public_ip_prefix: str = "51.15"  # the booting box uses 198.18 (a range never routed)


@dataclass
class Server:
    id: str
    name: str
    zone: str
    project: str
    commercial_type: str
    image: str
    tags: list[str]
    created_at: float
    dynamic_ip_required: bool = True
    routed_ip_enabled: bool = True
    state: str = "stopped"
    state_detail: str = ""
    modified_at: float = 0.0
    volume_ids: list[str] = field(default_factory=list)
    user_data: dict[str, bytes] = field(default_factory=dict)
    nic_ids: list[str] = field(default_factory=list)
    public_ip: str | None = None
    private_ip: str | None = None
    boot_at: float | None = None
    boot_outcome: str = "running"  # running | stuck | fallback
    stop_at: float | None = None
    terminating: bool = False
    security_group: str | None = None


@dataclass
class Volume:
    id: str
    name: str
    zone: str
    project: str
    size: int
    volume_type: str  # sbs_volume | l_ssd
    created_at: float
    server_id: str | None = None
    boot: bool = False
    tags: list[str] = field(default_factory=list)


@dataclass
class PrivateNic:
    id: str
    server_id: str
    private_network_id: str
    zone: str
    mac_address: str
    created_at: float
    available_at: float
    ip_id: str


@dataclass
class IpamIp:
    id: str
    address: str
    region: str
    zone: str
    project: str
    private_network_id: str
    nic_id: str
    mac_address: str
    name: str
    created_at: float


@dataclass
class SecurityGroupRule:
    id: str
    direction: str = "inbound"
    action: str = "accept"
    protocol: str = "TCP"
    ip_range: str = "0.0.0.0/0"
    dest_port_from: int | None = None
    dest_port_to: int | None = None
    position: int = 0


@dataclass
class SecurityGroup:
    id: str
    name: str
    zone: str
    project: str
    created_at: float
    inbound_default_policy: str = "accept"
    outbound_default_policy: str = "accept"
    stateful: bool = True
    description: str = ""
    tags: list[str] = field(default_factory=list)
    rules: list[SecurityGroupRule] = field(default_factory=list)


@dataclass
class PrivateNetwork:
    id: str
    name: str
    region: str
    project: str
    subnets: list[str]
    created_at: float
    tags: list[str] = field(default_factory=list)


@dataclass
class GatewayNetwork:
    """A Public Gateway attached to a private network (the box routes nothing: no-op)."""

    id: str
    gateway_id: str
    private_network_id: str
    zone: str
    masquerade: bool
    push_default_route: bool
    created_at: float


class Booter(Protocol):
    """What makes servers boot (:class:`cluster.fake_scaleway.box.Box` via its adapter)."""

    def on_running(self, state: FakeState, server: Server) -> None: ...

    def on_halted(self, state: FakeState, server: Server) -> None: ...


class ApiError(Exception):
    """An error the fake answers with Scaleway's shape: ``{"type", "message", ...}``."""

    def __init__(self, status: int, type_: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": type_, "message": message, **extra}


def not_found(resource: str, resource_id: str) -> ApiError:
    # The Instance API answers unknown ids with ``unknown_resource``; newer APIs use ``not_found``.
    if resource.startswith("instance_"):
        return ApiError(404, "unknown_resource", f'"{resource_id}" not found')
    return ApiError(404, "not_found", "resource is not found", resource=resource,
                    resource_id=resource_id)


class FakeState:
    """Everything the fake API knows. All public methods are thread-safe."""

    def __init__(self, clock: FakeClock | None = None, config: FakeConfig | None = None,
                 products: tuple[ProductType, ...] = DEFAULT_PRODUCTS) -> None:
        self.clock = clock or FakeClock()
        self.config = config or FakeConfig()
        self.faults = FaultBook()
        self.lock = threading.RLock()
        self.products = {p.name: p for p in products}
        self.availability: dict[tuple[str, str], str] = {}
        self.quotas: dict[str, int] = {}
        self.servers: dict[str, Server] = {}
        self.volumes: dict[str, Volume] = {}
        self.nics: dict[str, PrivateNic] = {}
        self.ips: dict[str, IpamIp] = {}
        self.security_groups: dict[str, SecurityGroup] = {}
        self.private_networks: dict[str, PrivateNetwork] = {}
        self.gateway_networks: dict[str, GatewayNetwork] = {}
        self.booter: Booter | None = None
        self.calls: list[dict[str, Any]] = []
        self._epoch = datetime.now(UTC) - timedelta(seconds=self.clock.now())
        self._ip_counter = 0

    # ------------------------------------------------------------------------ helpers

    def iso(self, t: float | None) -> str | None:
        """A fake-clock instant as Scaleway's ISO-8601 timestamp."""
        if t is None:
            return None
        return (self._epoch + timedelta(seconds=t)).isoformat().replace("+00:00", "Z")

    def _next_ip(self, prefix: str) -> str:
        self._ip_counter += 1
        n = self._ip_counter
        return f"{prefix}.{(n // 250) % 250}.{n % 250 + 2}"

    def record_call(self, entry: dict[str, Any]) -> None:
        with self.lock:
            entry["seq"] = len(self.calls) + 1
            entry["at"] = self.clock.now()
            self.calls.append(entry)

    def reset(self) -> None:
        """Forget every resource, call, fault, quota and availability override."""
        with self.lock:
            for server in list(self.servers.values()):
                self._halted(server)
            self.servers.clear()
            self.volumes.clear()
            self.nics.clear()
            self.ips.clear()
            self.calls.clear()
            self.security_groups.clear()
            self.private_networks.clear()
            self.gateway_networks.clear()
            self.availability.clear()
            self.quotas.clear()
            self.faults.clear()

    # ------------------------------------------------------------------------ time

    def tick(self) -> None:
        """Advance every time-driven state to the clock's now."""
        now = self.clock.now()
        with self.lock:
            for server in list(self.servers.values()):
                self._advance(server, now)

    def _advance(self, s: Server, now: float) -> None:
        if s.state == "starting" and s.boot_at is not None and now >= s.boot_at:
            if s.boot_outcome == "running":
                s.state, s.state_detail, s.modified_at = "running", "booted", s.boot_at
                if s.dynamic_ip_required and s.public_ip is None:
                    s.public_ip = self._next_ip(self.config.public_ip_prefix)
                if not s.routed_ip_enabled and s.private_ip is None:
                    s.private_ip = self._next_ip("10.64")
                if self.booter is not None:
                    self.booter.on_running(self, s)
            elif s.boot_outcome == "fallback":
                s.state, s.state_detail, s.modified_at = "stopped", "boot failed", s.boot_at
                s.boot_at = None
        elif s.state == "stopping" and s.stop_at is not None and now >= s.stop_at:
            if s.terminating:
                self._remove_server(s, delete_local=True)
            else:
                self._halted(s)
                s.state, s.state_detail, s.modified_at = "stopped", "", s.stop_at
                s.public_ip = None if s.dynamic_ip_required else s.public_ip
                s.stop_at = None

    def _halted(self, s: Server) -> None:
        if self.booter is not None:
            self.booter.on_halted(self, s)

    def _remove_server(self, s: Server, *, delete_local: bool) -> None:
        """Delete a server: SBS volumes are only detached (still billed), local ones go."""
        self._halted(s)
        for vid in s.volume_ids:
            vol = self.volumes.get(vid)
            if vol is None:
                continue
            if vol.volume_type == "sbs_volume" or not delete_local:
                vol.server_id = None
                vol.boot = False
            else:
                del self.volumes[vid]
        for nid in s.nic_ids:
            nic = self.nics.pop(nid, None)
            if nic is not None:
                self.ips.pop(nic.ip_id, None)
        self.servers.pop(s.id, None)

    # ------------------------------------------------------------------------ servers

    def get_server(self, zone: str, server_id: str) -> Server:
        self.tick()
        with self.lock:
            s = self.servers.get(server_id)
            if s is None or s.zone != zone:
                raise not_found("instance_server", server_id)
            return s

    def create_server(self, zone: str, body: dict[str, Any]) -> Server:
        ctype = body.get("commercial_type")
        name = body.get("name")
        project = body.get("project") or body.get("organization")
        if not isinstance(ctype, str) or not ctype:
            raise ApiError(400, "invalid_arguments", "invalid argument(s)",
                           details=[{"argument_name": "commercial_type", "reason": "required"}])
        if not isinstance(name, str) or not name:
            raise ApiError(400, "invalid_arguments", "invalid argument(s)",
                           details=[{"argument_name": "name", "reason": "required"}])
        if not isinstance(project, str) or not project:
            raise ApiError(400, "invalid_arguments", "invalid argument(s)",
                           details=[{"argument_name": "project", "reason": "required"}])
        product = self.products.get(ctype)
        if product is None or zone not in product.zones:
            raise ApiError(400, "invalid_arguments", "invalid argument(s)",
                           details=[{"argument_name": "commercial_type", "reason": "constraint",
                                     "help_message": f"{ctype} is not available in {zone}"}])
        tags = body.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ApiError(400, "invalid_arguments", "invalid argument(s)",
                           details=[{"argument_name": "tags", "reason": "constraint"}])
        image = body.get("image")
        if not isinstance(image, str) or not image:
            raise ApiError(400, "invalid_arguments", "invalid argument(s)",
                           details=[{"argument_name": "image", "reason": "required"}])
        volumes = body.get("volumes") or {"0": {"volume_type": "sbs_volume",
                                                "size": 20 * 10**9}}
        root = volumes.get("0") if isinstance(volumes, dict) else None
        if not isinstance(root, dict):
            raise ApiError(400, "invalid_arguments", "invalid argument(s)",
                           details=[{"argument_name": "volumes", "reason": "constraint"}])
        root_size = int(root.get("size") or 0)
        if product.gpu and "gpu" in image.lower() and root_size < 125 * 10**9:
            raise ApiError(400, "invalid_arguments", "invalid argument(s)", details=[{
                "argument_name": "volumes.0.size", "reason": "constraint",
                "help_message": "this image requires a volume of at least 125GB"}])
        with self.lock:
            if self.availability.get((zone, ctype)) == "shortage":
                raise ApiError(409, "out_of_stock", "Out of stock", resource=ctype)
            limit = self.quotas.get(ctype)
            if limit is not None:
                used = sum(1 for s in self.servers.values()
                           if s.commercial_type == ctype and s.project == project)
                if used >= limit:
                    raise ApiError(403, "quotas_exceeded", "Quota(s) exceeded", details=[{
                        "resource": f"compute_servers_type_{ctype.replace('-', '_')}",
                        "quota": limit, "current": used}])
            now = self.clock.now()
            sid = str(uuid.uuid4())
            server = Server(
                id=sid, name=name, zone=zone, project=project, commercial_type=ctype,
                image=image, tags=list(tags), created_at=now, modified_at=now,
                dynamic_ip_required=bool(body.get("dynamic_ip_required", True)),
                routed_ip_enabled=bool(body.get("routed_ip_enabled", True)),
                security_group=body.get("security_group"),
            )
            for key in sorted(volumes, key=lambda k: int(k) if str(k).isdigit() else 99):
                spec = volumes[key]
                vid = str(uuid.uuid4())
                self.volumes[vid] = Volume(
                    id=vid, name=str(spec.get("name") or f"{name}-vol-{key}"), zone=zone,
                    project=project, size=int(spec.get("size") or 0),
                    volume_type=str(spec.get("volume_type") or "sbs_volume"), created_at=now,
                    server_id=sid, boot=(key == "0"))
                server.volume_ids.append(vid)
            self.servers[sid] = server
            return server

    def list_servers(self, zone: str, *, tags: list[str] | None = None,
                     project: str | None = None, name: str | None = None,
                     state: str | None = None, commercial_type: str | None = None,
                     ids: list[str] | None = None, order: str | None = None) -> list[Server]:
        self.tick()
        with self.lock:
            out = [s for s in self.servers.values() if s.zone == zone]
        if tags:
            out = [s for s in out if all(t in s.tags for t in tags)]
        if project:
            out = [s for s in out if s.project == project]
        if name:
            out = [s for s in out if name in s.name]
        if state:
            out = [s for s in out if s.state == state]
        if commercial_type:
            out = [s for s in out if s.commercial_type == commercial_type]
        if ids:
            out = [s for s in out if s.id in ids]
        # Scaleway's default order is newest first.
        out.sort(key=lambda s: (s.created_at, s.id),
                 reverse=(order or "creation_date_desc") == "creation_date_desc")
        return out

    def server_action(self, zone: str, server_id: str, action: str) -> Server:
        s = self.get_server(zone, server_id)
        now = self.clock.now()
        with self.lock:
            if action == "poweron":
                if s.state in ("starting", "stopping"):
                    raise ApiError(409, "transient_state", "resource is in a transient state",
                                   resource="instance_server", resource_id=s.id,
                                   current_state=s.state)
                if s.state != "stopped":
                    raise ApiError(400, "invalid_request_error",
                                   "server should be stopped", resource="instance_server")
                if self.availability.get((s.zone, s.commercial_type)) == "shortage":
                    raise ApiError(409, "out_of_stock", "Out of stock",
                                   resource=s.commercial_type)
                boot_fault = self.faults.take("poweron", s.zone, s.commercial_type,
                                              kinds=frozenset({"boot_stuck", "boot_fallback"}))
                s.boot_outcome = {"boot_stuck": "stuck", "boot_fallback": "fallback"}.get(
                    boot_fault.kind if boot_fault else "", "running")
                s.state, s.state_detail, s.modified_at = "starting", "provisioning node", now
                s.boot_at = now + self.config.boot_seconds
                self._advance(s, now)
            elif action in ("poweroff", "terminate"):
                if s.state in ("starting", "stopping"):
                    raise ApiError(409, "transient_state", "resource is in a transient state",
                                   resource="instance_server", resource_id=s.id,
                                   current_state=s.state)
                if s.state != "running":
                    raise ApiError(400, "invalid_request_error",
                                   f"server should be running to {action}",
                                   resource="instance_server")
                s.state, s.modified_at = "stopping", now
                s.terminating = action == "terminate"
                s.stop_at = now + self.config.stop_seconds
                self._advance(s, now)
            else:
                raise ApiError(400, "invalid_arguments", "invalid argument(s)", details=[
                    {"argument_name": "action", "reason": "constraint",
                     "help_message": f"unsupported action {action!r}"}])
            return s

    def delete_server(self, zone: str, server_id: str) -> None:
        s = self.get_server(zone, server_id)
        with self.lock:
            if s.state != "stopped":
                raise ApiError(400, "precondition_failed", "instance must be stopped",
                               precondition="resource_still_in_use")
            self._remove_server(s, delete_local=False)

    # ------------------------------------------------------------------------ user data

    def set_user_data(self, zone: str, server_id: str, key: str, content: bytes) -> None:
        s = self.get_server(zone, server_id)
        with self.lock:
            s.user_data[key] = content

    def get_user_data(self, zone: str, server_id: str, key: str) -> bytes:
        s = self.get_server(zone, server_id)
        with self.lock:
            if key not in s.user_data:
                raise not_found("instance_user_data", key)
            return s.user_data[key]

    def delete_user_data(self, zone: str, server_id: str, key: str) -> None:
        s = self.get_server(zone, server_id)
        with self.lock:
            s.user_data.pop(key, None)

    # ------------------------------------------------------------------------ private NICs, IPAM

    def create_private_nic(self, zone: str, server_id: str, private_network_id: str) -> PrivateNic:
        s = self.get_server(zone, server_id)
        now = self.clock.now()
        with self.lock:
            nid, ip_id = str(uuid.uuid4()), str(uuid.uuid4())
            n = len(self.nics)
            mac = f"02:00:00:{n % 256:02x}:{(n // 256) % 256:02x}:{len(self.ips) % 256:02x}"
            nic = PrivateNic(id=nid, server_id=s.id, private_network_id=private_network_id,
                             zone=zone, mac_address=mac, created_at=now,
                             available_at=now + self.config.nic_seconds, ip_id=ip_id)
            self.nics[nid] = nic
            s.nic_ids.append(nid)
            self.ips[ip_id] = IpamIp(
                id=ip_id, address=self._next_ip("172.16") + "/22", region=region_of(zone),
                zone=zone, project=s.project, private_network_id=private_network_id, nic_id=nid,
                mac_address=mac, name=s.name, created_at=now)
            return nic

    def get_private_nic(self, zone: str, server_id: str, nic_id: str) -> PrivateNic:
        s = self.get_server(zone, server_id)
        with self.lock:
            nic = self.nics.get(nic_id)
            if nic is None or nic.server_id != s.id:
                raise not_found("instance_private_nic", nic_id)
            return nic

    def nic_state(self, nic: PrivateNic) -> str:
        return "available" if self.clock.now() >= nic.available_at else "syncing"

    def list_ips(self, region: str, *, resource_id: str | None = None,
                 private_network_id: str | None = None) -> list[IpamIp]:
        self.tick()
        with self.lock:
            out = [ip for ip in self.ips.values() if ip.region == region]
        if resource_id:
            out = [ip for ip in out if ip.nic_id == resource_id]
        if private_network_id:
            out = [ip for ip in out if ip.private_network_id == private_network_id]
        return sorted(out, key=lambda ip: (ip.created_at, ip.id))

    # ------------------------------------------------------------------------ block volumes

    def get_volume(self, zone: str, volume_id: str) -> Volume:
        self.tick()
        with self.lock:
            vol = self.volumes.get(volume_id)
            if vol is None or vol.zone != zone or vol.volume_type != "sbs_volume":
                raise not_found("volume", volume_id)
            return vol

    def list_volumes(self, zone: str, *, name: str | None = None,
                     product_resource_id: str | None = None,
                     tags: list[str] | None = None) -> list[Volume]:
        self.tick()
        with self.lock:
            out = [v for v in self.volumes.values()
                   if v.zone == zone and v.volume_type == "sbs_volume"]
        if tags:  # Block's filter: volumes with one or more of the tags
            out = [v for v in out if any(t in v.tags for t in tags)]
        if name:
            out = [v for v in out if name in v.name]
        if product_resource_id:
            out = [v for v in out if v.server_id == product_resource_id]
        return sorted(out, key=lambda v: (v.created_at, v.id))

    def update_volume(self, zone: str, volume_id: str, body: dict[str, Any]) -> Volume:
        vol = self.get_volume(zone, volume_id)
        tags = body.get("tags")
        if tags is not None and (not isinstance(tags, list)
                                 or not all(isinstance(t, str) for t in tags)):
            raise ApiError(400, "invalid_arguments", "invalid argument(s)",
                           details=[{"argument_name": "tags", "reason": "constraint"}])
        with self.lock:
            if tags is not None:
                vol.tags = list(tags)
            if isinstance(body.get("name"), str) and body["name"]:
                vol.name = body["name"]
            return vol

    def delete_volume(self, zone: str, volume_id: str) -> None:
        vol = self.get_volume(zone, volume_id)
        with self.lock:
            if vol.server_id is not None:
                raise ApiError(412, "precondition_failed", "the volume is in use",
                               precondition="resource_still_in_use")
            del self.volumes[vol.id]

    # ------------------------------------------------------------------------ security groups

    def create_security_group(self, zone: str, body: dict[str, Any]) -> SecurityGroup:
        project = body.get("project") or body.get("organization")
        if not isinstance(project, str) or not project:
            raise ApiError(400, "invalid_arguments", "invalid argument(s)",
                           details=[{"argument_name": "project", "reason": "required"}])
        policies: dict[str, str] = {}
        for key in ("inbound_default_policy", "outbound_default_policy"):
            value = body.get(key) or "accept"
            if value not in ("accept", "drop"):
                raise ApiError(400, "invalid_arguments", "invalid argument(s)",
                               details=[{"argument_name": key, "reason": "constraint"}])
            policies[key] = value
        with self.lock:
            sg = SecurityGroup(id=str(uuid.uuid4()), name=str(body.get("name") or "sg"),
                               zone=zone, project=project, created_at=self.clock.now(),
                               stateful=bool(body.get("stateful", True)),
                               description=str(body.get("description") or ""),
                               tags=[str(t) for t in body.get("tags") or []],
                               inbound_default_policy=policies["inbound_default_policy"],
                               outbound_default_policy=policies["outbound_default_policy"])
            self.security_groups[sg.id] = sg
            return sg

    def get_security_group(self, zone: str, sg_id: str) -> SecurityGroup:
        with self.lock:
            sg = self.security_groups.get(sg_id)
            if sg is None or sg.zone != zone:
                raise not_found("instance_security_group", sg_id)
            return sg

    def delete_security_group(self, zone: str, sg_id: str) -> None:
        sg = self.get_security_group(zone, sg_id)
        with self.lock:
            if any(s.security_group == sg.id for s in self.servers.values()):
                raise ApiError(400, "precondition_failed", "group in use",
                               precondition="resource_still_in_use")
            del self.security_groups[sg.id]

    def add_security_group_rule(self, zone: str, sg_id: str,
                                body: dict[str, Any]) -> SecurityGroupRule:
        sg = self.get_security_group(zone, sg_id)

        def port(key: str) -> int | None:
            value = body.get(key)
            if value is None:
                return None
            if not isinstance(value, int) or not 1 <= value <= 65535:
                raise ApiError(400, "invalid_arguments", "invalid argument(s)",
                               details=[{"argument_name": key, "reason": "constraint"}])
            return value

        direction = body.get("direction", "inbound")
        action = body.get("action", "accept")
        protocol = body.get("protocol", "TCP")
        if direction not in ("inbound", "outbound") or action not in ("accept", "drop") or \
                protocol not in ("TCP", "UDP", "ICMP", "ANY"):
            raise ApiError(400, "invalid_arguments", "invalid argument(s)",
                           details=[{"argument_name": "direction/action/protocol",
                                     "reason": "constraint"}])
        with self.lock:
            rule = SecurityGroupRule(id=str(uuid.uuid4()), direction=direction, action=action,
                                     protocol=protocol,
                                     ip_range=str(body.get("ip_range") or "0.0.0.0/0"),
                                     dest_port_from=port("dest_port_from"),
                                     dest_port_to=port("dest_port_to"),
                                     position=len(sg.rules) + 1)
            sg.rules.append(rule)
            return rule

    def delete_security_group_rule(self, zone: str, sg_id: str, rule_id: str) -> None:
        sg = self.get_security_group(zone, sg_id)
        with self.lock:
            before = len(sg.rules)
            sg.rules = [r for r in sg.rules if r.id != rule_id]
            if len(sg.rules) == before:
                raise not_found("instance_security_group_rule", rule_id)

    # ------------------------------------------------------------------------ VPC, gateway

    def create_private_network(self, region: str, body: dict[str, Any]) -> PrivateNetwork:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "invalid_arguments", "invalid argument(s)",
                           details=[{"argument_name": "name", "reason": "required"}])
        with self.lock:
            pn = PrivateNetwork(id=str(uuid.uuid4()), name=name, region=region,
                                project=str(body.get("project_id") or ""),
                                subnets=[str(x) for x in body.get("subnets") or
                                         ["172.16.0.0/22"]],
                                created_at=self.clock.now(),
                                tags=[str(t) for t in body.get("tags") or []])
            self.private_networks[pn.id] = pn
            return pn

    def delete_private_network(self, region: str, pn_id: str) -> None:
        with self.lock:
            pn = self.private_networks.get(pn_id)
            if pn is None or pn.region != region:
                raise not_found("private_network", pn_id)
            if any(n.private_network_id == pn_id for n in self.nics.values()):
                raise ApiError(412, "precondition_failed", "private network in use",
                               precondition="resource_still_in_use")
            del self.private_networks[pn_id]

    def attach_gateway(self, zone: str, body: dict[str, Any]) -> GatewayNetwork:
        pn_id = body.get("private_network_id")
        gw_id = body.get("gateway_id")
        if not isinstance(pn_id, str) or not isinstance(gw_id, str):
            raise ApiError(400, "invalid_arguments", "invalid argument(s)", details=[
                {"argument_name": "gateway_id/private_network_id", "reason": "required"}])
        with self.lock:
            gwn = GatewayNetwork(id=str(uuid.uuid4()), gateway_id=gw_id,
                                 private_network_id=pn_id, zone=zone,
                                 masquerade=bool(body.get("enable_masquerade", True)),
                                 push_default_route=bool(body.get("push_default_route", False)),
                                 created_at=self.clock.now())
            self.gateway_networks[gwn.id] = gwn
            return gwn

    # ------------------------------------------------------------------------ seeding

    def seed_servers(self, zone: str, count: int, *, tags: list[str],
                     commercial_type: str = "DEV1-S", state: str = "running",
                     project: str = "00000000-0000-4000-8000-000000000000",
                     name_prefix: str = "seed") -> list[str]:
        """Create ``count`` servers directly (benchmarks and pagination tests)."""
        ids: list[str] = []
        with self.lock:
            now = self.clock.now()
            for i in range(count):
                sid = str(uuid.uuid4())
                vid = str(uuid.uuid4())
                self.volumes[vid] = Volume(id=vid, name=f"{name_prefix}-{i}-root", zone=zone,
                                           project=project, size=20 * 10**9,
                                           volume_type="sbs_volume", created_at=now,
                                           server_id=sid, boot=True)
                s = Server(id=sid, name=f"{name_prefix}-{i}", zone=zone, project=project,
                           commercial_type=commercial_type, image="ubuntu_noble",
                           tags=[t.replace("{i}", str(i)) for t in tags],
                           created_at=now + i * 1e-6, modified_at=now, state=state,
                           volume_ids=[vid])
                if state == "running":
                    s.public_ip = self._next_ip(self.config.public_ip_prefix)
                self.servers[sid] = s
                ids.append(sid)
        return ids
