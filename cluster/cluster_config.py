"""Our cluster file (``configs/clusters/*.yaml``) and the Ray autoscaler YAML rendered from it.

The cluster file is validated with pydantic (unknown keys refused; errors name the field, e.g.
``node_types.gpu-l4.max_workers: Input should be greater than or equal to 0``). The Ray YAML is
what ``ray start --head --autoscaling-config=...`` reads: an ``external`` provider
(:class:`cluster.node_provider.InventivNodeProvider`) with ``disable_node_updaters: true`` (no
SSH) and every command-list key present as an empty list -- the monitor dies with a ``KeyError``
(visible only in ``logs/monitor.err``) when one is missing.

Node type resources default to the catalog (:func:`core.catalog.load_catalog`): a ``local``
type advertises the seed's ``ray_resources`` (e.g. ``{CPU: 2, local_gpu_slot: 1,
"accelerator_type:L4": 1}``, the custom slot is what a CPU vLLM replica asks for); a Scaleway
type advertises its vCPUs, GPUs and ``accelerator_type:<model>``. The same resources go to the
local cloud's instance types, so what the autoscaler plans with is what the node advertises.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cluster.errors import ClusterError
from core.catalog import Catalog, CatalogError, load_catalog

PROVIDER_MODULE = "cluster.node_provider.InventivNodeProvider"
HEAD_NODE_TYPE = "head"
# Every command-list key of the Ray cluster YAML (all required with an external provider).
COMMAND_KEYS = (
    "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
    "head_start_ray_commands", "worker_start_ray_commands",
)
_NAME = r"^[a-z][a-z0-9-]{0,39}$"
_NODE_TYPE = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
_RESOURCE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}$")


class ClusterConfigError(ClusterError, ValueError):
    """The cluster file is invalid; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeTypeSpec(_Model):
    """One worker node type: an instance type, bounds, and (optionally) its Ray resources."""

    instance_type: str = Field(min_length=1, max_length=64)
    min_workers: int = Field(default=0, ge=0)
    max_workers: int = Field(default=1, ge=0)
    resources: dict[str, int] | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    image: str | None = None
    root_volume_gb: int | None = Field(default=None, ge=10)
    idle_timeout_s: float | None = Field(default=None, ge=0)

    @field_validator("resources")
    @classmethod
    def _resource_names(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        for name, amount in (value or {}).items():
            if not _RESOURCE.match(name):
                raise ValueError(f"invalid resource name {name!r}")
            if amount < 0:
                raise ValueError(f"resource {name!r} must be >= 0")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> NodeTypeSpec:
        if self.min_workers > self.max_workers:
            raise ValueError("min_workers must be <= max_workers")
        return self


class HeadSpec(_Model):
    """The head: local ports (0 = a free port) or, on Scaleway, the CPU VM that runs it."""

    port: int = Field(default=6379, ge=0, le=65535)
    dashboard_port: int = Field(default=8265, ge=0, le=65535)
    dashboard_host: str = "127.0.0.1"
    include_dashboard: bool = True
    ray_client_server_port: int = Field(default=10001, ge=0, le=65535)
    dashboard_agent_listen_port: int = Field(default=0, ge=0, le=65535)
    temp_dir: str | None = Field(default=None, max_length=40)  # Ray's socket paths are short
    start_timeout_s: float = Field(default=90, gt=0)
    # Scaleway only
    instance_type: str | None = None
    image: str | None = None
    root_volume_gb: int = Field(default=50, ge=10)
    zone: str | None = None
    security_group_id: str | None = None
    address: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.\-]+:\d{1,5}$")
    ray_executable: str = "/opt/inventiv/venv/bin/ray"
    python_executable: str = "/opt/inventiv/venv/bin/python"


class AutoscalerSpec(_Model):
    """Autoscaler knobs rendered into the Ray YAML (and the monitor's environment)."""

    idle_timeout_minutes: float = Field(default=5.0, ge=0)
    max_workers: int = Field(default=8, ge=0)
    upscaling_speed: float = Field(default=1.0, gt=0)
    update_interval_s: int = Field(default=5, ge=1)  # AUTOSCALER_UPDATE_INTERVAL_S (integer)
    cache_ttl_s: float = Field(default=2.0, ge=0)


class ControlApiSpec(_Model):
    """The control API: where the node provider reports lifecycle events (optional) and, on
    Scaleway, the Postgres the head's control API runs on."""

    url: str | None = Field(default=None, pattern=r"^https?://")
    service_token_file: str | None = None
    # Scaleway: the database of the control API the head runs (a managed database's private
    # endpoint in production, the box's database namespace in the box). The URL names the
    # server, never the password: that comes from the ``database_password_env`` variable of
    # whoever runs ``cluster up`` and travels to the head in a 0600 file only.
    database_url: str | None = Field(default=None, pattern=r"^postgres(ql)?://")
    database_password_env: str = Field(default="INVENTIV_DATABASE_PASSWORD",
                                       pattern=r"^[A-Z_][A-Z0-9_]{0,63}$")

    @field_validator("database_url")
    @classmethod
    def _no_password_in_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        netloc = value.split("://", 1)[1].split("/", 1)[0]
        userinfo, at, _host = netloc.rpartition("@")
        if at and ":" in userinfo:
            # A cluster file is committed and shared: the password must not sit in it.
            raise ValueError("must not contain a password (set it in the variable named by "
                             "control_api.database_password_env)")
        return value


class FrontDoorSpec(_Model):
    """The head's TLS front door on 443 (Caddy): ``/v1/*`` to Serve, the rest to the control
    API. Certificates by ACME (TLS-ALPN-01 on 443: the head's group opens nothing else) for
    ``domain``, or the certificate given by ``tls_cert_file``/``tls_key_file`` (the box's,
    signed by the CA its test generates)."""

    domain: str = Field(pattern=r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                                r"[A-Za-z]{2,63}$")
    acme_email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$")
    acme_directory: str | None = Field(default=None, pattern=r"^https://")
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    caddy_executable: str = Field(default="/usr/bin/caddy", pattern=r"^/[A-Za-z0-9._/-]+$")

    @model_validator(mode="after")
    def _cert_pair(self) -> FrontDoorSpec:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together (or neither: ACME)")
        return self


class LocalSpec(_Model):
    """Settings of the local cloud."""

    ray_executable: str | None = None
    max_nodes: int | None = Field(default=None, ge=0)
    stop_grace_s: float = Field(default=15.0, ge=0)


class ScalewaySpec(_Model):
    """Settings of the Scaleway cloud (credentials come from the SDK's ``SCW_*``/config file)."""

    zones: list[str] = Field(min_length=1)
    project_id: str | None = None
    private_network_id: str | None = None
    private_network_name: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,63}$")
    worker_image: str | None = None
    worker_ray_executable: str = "/opt/inventiv/venv/bin/ray"
    boot_timeout_s: float = Field(default=900, gt=0)
    capacity_block_s: float = Field(default=600, ge=0)


class ClusterFile(_Model):
    """``configs/clusters/<name>.yaml``."""

    cluster_name: str = Field(pattern=_NAME)
    cloud: Literal["local", "scaleway"]
    state_dir: str | None = None
    head: HeadSpec = Field(default_factory=HeadSpec)
    autoscaler: AutoscalerSpec = Field(default_factory=AutoscalerSpec)
    control_api: ControlApiSpec = Field(default_factory=ControlApiSpec)
    front_door: FrontDoorSpec | None = None
    node_types: dict[str, NodeTypeSpec] = Field(min_length=1)
    local: LocalSpec = Field(default_factory=LocalSpec)
    scaleway: ScalewaySpec | None = None

    @field_validator("node_types")
    @classmethod
    def _node_type_names(cls, value: dict[str, NodeTypeSpec]) -> dict[str, NodeTypeSpec]:
        for name in value:
            if not re.match(_NODE_TYPE, name):
                raise ValueError(f"invalid node type name {name!r}")
            if name == HEAD_NODE_TYPE:
                raise ValueError(f"{HEAD_NODE_TYPE!r} is reserved for the head node type")
        return value

    @model_validator(mode="after")
    def _cloud_sections(self) -> ClusterFile:
        if self.cloud == "scaleway":
            if self.scaleway is None:
                raise ValueError("cloud 'scaleway' needs a 'scaleway' section")
            if not self.head.instance_type:
                raise ValueError("head.instance_type is required on Scaleway (a CPU type)")
            if not self.head.image:
                raise ValueError("head.image is required on Scaleway")
            # Without these, workers would get public IPs and the head would be open.
            if not self.scaleway.private_network_id:
                raise ValueError("scaleway.private_network_id is required on Scaleway (the "
                                 "head and workers talk over it; workers get no public IP)")
            if not self.head.security_group_id:
                raise ValueError("head.security_group_id is required on Scaleway (a group "
                                 "with inbound default drop and TCP 443 only)")
            if not (self.head.address or self.scaleway.private_network_name):
                raise ValueError("set head.address or scaleway.private_network_name "
                                 "(the head's private DNS name is derived from it)")
            for name, spec in self.node_types.items():
                if not spec.image:
                    raise ValueError(f"node_types.{name}.image is required on Scaleway")
        return self

    def resolved_state_dir(self) -> Path:
        """Where the cluster keeps its token, rendered YAML, local node table and logs."""
        if self.state_dir:
            return Path(os.path.expandvars(self.state_dir)).expanduser()
        return Path.home() / ".inventiv" / "clusters" / self.cluster_name


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def parse_cluster(data: Any, *, source: str = "<cluster file>") -> ClusterFile:
    """Validate a cluster mapping; :class:`ClusterConfigError` names the faulty field."""
    if not isinstance(data, dict):
        raise ClusterConfigError(f"{source}: expected a mapping at the top level")
    try:
        return ClusterFile.model_validate(data)
    except ValidationError as exc:
        raise ClusterConfigError(f"{source}: {_format_errors(exc)}") from None


def load_cluster(path: Path | str) -> ClusterFile:
    """Read and validate a cluster file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ClusterConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ClusterConfigError(f"{path}: invalid YAML: {exc}") from None
    return parse_cluster(data, source=str(path))


# ------------------------------------------------------------------------------ resources


def default_resources(cloud: str, instance_type: str,
                      catalog: Catalog | None = None) -> dict[str, int]:
    """A node type's Ray resources from the catalog (default: the shipped seed, through
    :func:`core.catalog.load_catalog`); :class:`ClusterConfigError` if the type is unknown."""
    catalog = catalog if catalog is not None else load_catalog()
    if not catalog.has_provider(cloud):
        raise ClusterConfigError(
            f"instance type {instance_type!r} is not in the {cloud} catalog: set its "
            "resources explicitly")
    try:
        entry = catalog.provider(cloud).instance_type(instance_type)
    except CatalogError as exc:
        # The message names the known types; ours says what to do about it.
        raise ClusterConfigError(f"{exc}: set its resources explicitly") from None
    if entry.ray_resources:
        return {str(k): int(v) for k, v in entry.ray_resources.items()}
    out = {"CPU": int(entry.vcpus or 1)}
    if entry.gpu_count:
        out["GPU"] = int(entry.gpu_count)
        if entry.gpu_model:
            out[f"accelerator_type:{entry.gpu_model}"] = 1
    return out


def node_type_resources(cluster: ClusterFile) -> dict[str, dict[str, int]]:
    """Resources of every worker node type (explicit, else from the catalog)."""
    return {name: dict(spec.resources) if spec.resources is not None
            else default_resources(cluster.cloud, spec.instance_type)  # the catalog is cached
            for name, spec in cluster.node_types.items()}


# ------------------------------------------------------------------------------ rendering


def render_ray_config(cluster: ClusterFile, *, head_address: str, head_instance_id: str,
                      token_path: str, state_dir: str | None = None,
                      service_token_file: str | None = None) -> dict[str, Any]:
    """The Ray autoscaler YAML (as a dict) for this cluster."""
    resources = node_type_resources(cluster)
    provider: dict[str, Any] = {
        "type": "external",
        "module": PROVIDER_MODULE,
        "disable_node_updaters": True,
        "cloud": cluster.cloud,
        "head_address": head_address,
        "head_instance_id": head_instance_id,
        "head_node_type": HEAD_NODE_TYPE,
        "token_path": token_path,
        "cache_ttl_s": cluster.autoscaler.cache_ttl_s,
    }
    if state_dir:
        provider["state_dir"] = state_dir
        provider["spool_dir"] = str(Path(state_dir) / "spool")
    if cluster.control_api.url:
        provider["control_api_url"] = cluster.control_api.url
        token_file = service_token_file or cluster.control_api.service_token_file
        if token_file:
            provider["service_token_file"] = token_file
    if cluster.cloud == "local":
        provider["zones"] = ["local-1"]
        provider["instance_types"] = {spec.instance_type: resources[name]
                                      for name, spec in cluster.node_types.items()}
        if cluster.local.ray_executable:
            provider["ray_executable"] = cluster.local.ray_executable
        if cluster.local.max_nodes is not None:
            provider["max_nodes"] = cluster.local.max_nodes
        provider["stop_grace_s"] = cluster.local.stop_grace_s
    else:
        scw = cluster.scaleway
        assert scw is not None  # validated
        provider["zones"] = list(scw.zones)
        provider["ray_executable"] = scw.worker_ray_executable
        provider["boot_timeout_s"] = scw.boot_timeout_s
        provider["capacity_block_s"] = scw.capacity_block_s
        for key in ("project_id", "private_network_id", "worker_image"):
            value = getattr(scw, key)
            if value:
                provider[key] = value
    node_types: dict[str, Any] = {
        # The head advertises nothing: every workload lands on an autoscaled worker.
        HEAD_NODE_TYPE: {"resources": {}, "node_config": {}, "min_workers": 0,
                         "max_workers": 0},
    }
    for name, spec in cluster.node_types.items():
        node_config: dict[str, Any] = {"instance_type": spec.instance_type}
        if spec.image:
            node_config["image"] = spec.image
        if spec.root_volume_gb:
            node_config["root_volume_gb"] = spec.root_volume_gb
        entry: dict[str, Any] = {"resources": resources[name], "node_config": node_config,
                                 "min_workers": spec.min_workers,
                                 "max_workers": spec.max_workers}
        if spec.labels:
            entry["labels"] = dict(spec.labels)
        if spec.idle_timeout_s is not None:
            entry["idle_timeout_s"] = spec.idle_timeout_s
        node_types[name] = entry
    config: dict[str, Any] = {
        "cluster_name": cluster.cluster_name,
        "max_workers": cluster.autoscaler.max_workers,
        "upscaling_speed": cluster.autoscaler.upscaling_speed,
        "idle_timeout_minutes": cluster.autoscaler.idle_timeout_minutes,
        "provider": provider,
        "auth": {},
        "available_node_types": node_types,
        "head_node_type": HEAD_NODE_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }
    for key in COMMAND_KEYS:
        config[key] = []
    return config


def dump_ray_config(config: dict[str, Any]) -> str:
    """YAML text of a rendered Ray config."""
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


__all__ = [
    "COMMAND_KEYS", "ClusterConfigError", "ClusterFile", "FrontDoorSpec", "HEAD_NODE_TYPE",
    "NodeTypeSpec",
    "PROVIDER_MODULE", "default_resources", "dump_ray_config", "load_cluster",
    "node_type_resources", "parse_cluster", "render_ray_config",
]
