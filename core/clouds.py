"""The cloud protocol shared by every adapter: launch requests, instances, offers and errors.

Adapters (``scaleway``, ``local``) are peers behind one small protocol (:class:`Cloud`); the rest
of the code never imports a cloud SDK. The shape of every create is "list by tag first": a launch
id is written before the cloud is called, carried in the VM's tags, and a create that may have
happened (timeout, 5xx, lost response) is looked up by that tag before anything is retried.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Protocol, runtime_checkable

# Tags every created VM carries (Scaleway tags are plain strings: ``key=value``).
TAG_CLUSTER = "inventiv-cluster"
TAG_LAUNCH = "inventiv-launch"
TAG_NODE_TYPE = "inventiv-node-type"


def cluster_tag(cluster_name: str) -> str:
    """The tag that identifies every VM of one cluster."""
    return f"{TAG_CLUSTER}={cluster_name}"


def launch_tag(launch_id: str) -> str:
    """The tag that identifies the VM of one launch intent."""
    return f"{TAG_LAUNCH}={launch_id}"


def node_type_tag(node_type: str) -> str:
    """The tag that names the Ray node type of a VM."""
    return f"{TAG_NODE_TYPE}={node_type}"


def make_tags(cluster_name: str, launch_id: str, node_type: str,
              extra: Iterable[str] = ()) -> list[str]:
    """Tags for a new VM: cluster, launch id, node type, then any extra plain tags."""
    tags = [cluster_tag(cluster_name), launch_tag(launch_id), node_type_tag(node_type)]
    tags.extend(t for t in extra if t not in tags)
    return tags


def parse_tags(tags: Iterable[str]) -> dict[str, str]:
    """``["k=v", "plain"]`` -> ``{"k": "v", "plain": ""}`` (the first ``=`` splits)."""
    out: dict[str, str] = {}
    for tag in tags:
        key, _, value = tag.partition("=")
        out.setdefault(key, value)
    return out


class InstanceStatus(enum.StrEnum):
    """A VM's state, normalised across clouds (each adapter has one status map)."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPED = "stopped"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    UNKNOWN = "unknown"


def normalise_status(status_map: Mapping[str, InstanceStatus], raw: str | None) -> InstanceStatus:
    """Map a cloud's raw state through its status map; anything unmapped is ``unknown``."""
    if raw is None:
        return InstanceStatus.UNKNOWN
    return status_map.get(str(raw), InstanceStatus.UNKNOWN)


@dataclass(frozen=True)
class LaunchRequest:
    """One launch intent. ``launch_id`` is written (e.g. in the database) before any cloud call.

    ``zones`` is the failover order; empty means the adapter's configured order.
    ``user_data`` is the rendered cloud-init (see :mod:`cluster.bootstrap`).
    """

    launch_id: str
    cluster_name: str
    node_type: str
    instance_type: str
    image: str
    zones: tuple[str, ...] = ()
    root_volume_gb: int = 20
    tags: tuple[str, ...] = ()
    user_data: str | None = None
    name: str | None = None
    public_ip: bool = True
    private_network_id: str | None = None
    security_group_id: str | None = None

    def all_tags(self) -> list[str]:
        """The identifying tags plus the caller's extra tags."""
        return make_tags(self.cluster_name, self.launch_id, self.node_type, self.tags)


@dataclass(frozen=True)
class CloudInstance:
    """A VM as the cloud reports it, with our identifying tags decoded."""

    provider_instance_id: str
    launch_id: str | None
    cluster_name: str | None
    node_type: str | None
    instance_type: str
    zone: str
    state: InstanceStatus
    private_ip: str | None = None
    public_ip: str | None = None
    created_at: datetime | None = None
    tags: tuple[str, ...] = ()
    raw_state: str | None = None
    volume_ids: tuple[str, ...] = field(default=())

    @property
    def is_live(self) -> bool:
        """True while the VM exists and may cost money (anything but terminated)."""
        return self.state is not InstanceStatus.TERMINATED


# Availability values of an offer (``core.models.Availability``); ``shortage`` is out of stock.
OUT_OF_STOCK = "shortage"


@dataclass(frozen=True, kw_only=True)
class Offer:
    """An instance type in a zone with its price and availability, as a cloud or the catalog
    knows it: what the autoscaler sorts by price and the catalog sync stores.

    Keyword-only: two producers (a cloud's live listing, the catalog seed) and several readers
    share it, and a positional call would silently swap same-typed fields.
    """

    provider: str
    instance_type: str
    zone: str
    hourly_eur: Decimal
    availability: str = "unknown"  # available | scarce | shortage | unknown
    gpu_count: int = 0
    gpu_model: str | None = None
    gpu_vram_gb: float | None = None  # per GPU
    vcpus: int | None = None
    ram_gb: int | None = None
    blocked: bool = False  # a recent capacity error blocked (type, zone) for a while

    @property
    def usable(self) -> bool:
        """Whether a launch may be tried now (not out of stock, not blocked)."""
        return not self.blocked and self.availability != OUT_OF_STOCK

    def replica_eur_per_hour(self, gpus_per_replica: int = 1) -> Decimal:
        """What one replica costs per hour on this machine (its share of the GPUs)."""
        return self.hourly_eur / max(1, self.gpu_count) * gpus_per_replica


# ------------------------------------------------------------------------------------- errors


class CloudError(Exception):
    """Base of every cloud error. ``code`` is stable (it ends up in lifecycle events).

    ``retryable``: the same call may succeed later unchanged. ``capacity``: the (type, zone) is
    out of capacity for us right now (quota or stock): try another zone or type.
    """

    code = "cloud_error"
    retryable = False
    capacity = False

    def __init__(self, message: str, *, status: int | None = None, zone: str | None = None,
                 instance_type: str | None = None, raw_type: str | None = None,
                 provider_instance_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.zone = zone
        self.instance_type = instance_type
        self.raw_type = raw_type
        self.provider_instance_id = provider_instance_id
        # False only when the request surely never reached the cloud (connection refused).
        self.request_sent = True

    def __str__(self) -> str:
        where = "/".join(x for x in (self.instance_type, self.zone) if x)
        return f"{self.code}: {self.message}" + (f" [{where}]" if where else "")


class NotFound(CloudError):
    """The resource does not exist (any more)."""

    code = "not_found"


class QuotaExceeded(CloudError):
    """The project's quota for this type is used up."""

    code = "quota_exceeded"
    capacity = True


class OutOfStock(CloudError):
    """The zone has no capacity for this type (or does not offer it)."""

    code = "out_of_stock"
    capacity = True


class Transient(CloudError):
    """The resource is busy (transient state, locked, still in use): retry later."""

    code = "transient"
    retryable = True


class InvalidRequest(CloudError):
    """The request is wrong (arguments, preconditions): retrying unchanged will not help."""

    code = "invalid_request"


class AuthError(CloudError):
    """Credentials are missing, wrong, or lack a permission."""

    code = "auth"


class Unavailable(CloudError):
    """The API did not answer usefully: 5xx, non-JSON body, timeout, connection error.

    For a create this outcome is ambiguous: the VM may exist. List by launch tag before retrying.
    """

    code = "unavailable"
    retryable = True


class BootFailed(CloudError):
    """The VM was created but fell back to ``stopped`` instead of running."""

    code = "boot_failed"


class BootTimeout(CloudError):
    """The VM did not reach ``running`` before the deadline."""

    code = "boot_timeout"


# ------------------------------------------------------------------------------------ protocol


@runtime_checkable
class Cloud(Protocol):
    """What a cloud adapter offers. Every method may raise a :class:`CloudError`."""

    name: str

    def create(self, request: LaunchRequest) -> CloudInstance:
        """Create (or adopt the launch id's existing VM) and boot one VM; return it running."""
        ...

    def list_instances(self, cluster_name: str) -> list[CloudInstance]:
        """Every VM tagged with this cluster, in every configured zone, all pages."""
        ...

    def find_by_launch_id(self, cluster_name: str, launch_id: str,
                          zones: Sequence[str] = ()) -> CloudInstance | None:
        """The VM carrying this launch id, if any."""
        ...

    def get(self, provider_instance_id: str, zone: str) -> CloudInstance:
        """One VM by id; raises :class:`NotFound` when it is gone."""
        ...

    def terminate(self, provider_instance_id: str, zone: str, *, launch_id: str | None = None,
                  wait: bool = True) -> bool:
        """Delete a VM and its volumes. Idempotent: an unknown VM is already terminated.

        Returns True when everything is gone, False when deletion is still in progress
        (only with ``wait=False``; call again later to finish).
        """
        ...

    def catalog(self) -> list[Offer]:
        """Offers (type x zone) with hourly prices and availability."""
        ...
