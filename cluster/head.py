"""Bring a cluster's Ray head up and down: a local process for ``local``, a VM for ``scaleway``.

Local head. ``ray start --head --block`` runs as a node of the local cloud (own process group,
log in ``<state_dir>/nodes/``, recorded in the local cloud's table), with token auth:
``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH=<state_dir>/ray_token`` (generated once, 0600),
``RAY_CLOUD_INSTANCE_ID=<head id>``, ``RAY_NODE_TYPE_NAME=head``, ``RAY_enable_autoscaler_v2=1``,
``AUTOSCALER_UPDATE_INTERVAL_S`` and ``--autoscaling-config=<rendered Ray YAML>``. Every port is
explicit (0 in the cluster file = a free port) so two clusters on one machine do not clash, and
the temp dir is short (Ray's socket paths must stay under the AF_UNIX limit).

``down`` never runs ``ray stop``: that kills every Ray process of the machine, other clusters'
included. It stops the head's process group first (so the autoscaler launches nothing more),
then every node of the cluster's local table, then any process still carrying the cluster's
marker. The same token reaches drivers through :func:`driver_env` (FACTS: a stray
``~/.ray/auth_token`` turns auth on by itself, so we always pass ours explicitly).

Scaleway head. ``up`` creates the head VM through the adapter (CPU type, public IP only for the
HTTPS front door, security group, private network) with a cloud-init that writes the token, the
rendered Ray YAML, the SCW credentials for the autoscaler (0600 files) and a systemd unit running
``python -m cluster.head exec-head``, which resolves the head's private address and execs
``ray start --head`` bound to it (Ray ports stay on the private network).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import stat
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cluster.bootstrap import systemd_quote
from cluster.clouds.local import (
    LocalCloud,
    LocalConfig,
    default_ray_executable,
    find_marked,
)
from cluster.cluster_config import (
    HEAD_NODE_TYPE,
    ClusterFile,
    dump_ray_config,
    render_ray_config,
)
from core.clouds import CloudInstance, LaunchRequest

log = logging.getLogger(__name__)

TOKEN_FILE = "ray_token"  # noqa: S105 (a file name)
HEAD_FILE = "head.json"
RAY_YAML = "ray-autoscaler.yaml"
HEAD_INSTANCE_TYPE = "local-head"
REPO_ROOT = Path(__file__).resolve().parents[1]
# Variables that must never leak from the caller into a head or driver (auth, identity).
_SCRUB = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS",
          "RAY_CLOUD_INSTANCE_ID", "RAY_NODE_TYPE_NAME")


class HeadError(RuntimeError):
    """The head could not be started/stopped; the message says why (log tail included)."""


@dataclass
class HeadInfo:
    """What ``up`` started; persisted as ``<state_dir>/head.json``."""

    cluster_name: str
    cloud: str
    head_instance_id: str
    gcs_address: str
    dashboard_url: str | None
    token_path: str
    ray_config_path: str
    state_dir: str
    temp_dir: str | None = None
    provider_instance_id: str | None = None
    pid: int | None = None
    log_path: str | None = None
    ports: dict[str, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    def save(self) -> None:
        path = Path(self.state_dir) / HEAD_FILE
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, state_dir: Path) -> HeadInfo | None:
        try:
            data = json.loads((state_dir / HEAD_FILE).read_text())
        except FileNotFoundError:
            return None
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


# ------------------------------------------------------------------------------ helpers


def ensure_token(path: Path) -> str:
    """The cluster's Ray token: created once (random, 0600), refused if readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise HeadError(f"{path} is accessible by other users (mode {mode:o}); chmod 600 it")
    token = path.read_text().strip()
    if not token:
        raise HeadError(f"{path} is empty")
    return token


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port (the usual small race is acceptable for a local head)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def driver_env(token_path: str | Path, address: str | None = None,
               base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a driver (or ``ray status``) of this cluster: our token, explicitly."""
    env = {k: v for k, v in (base if base is not None else os.environ).items()
           if k not in _SCRUB}
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    if address:
        env["RAY_ADDRESS"] = address
    return env


def head_env(*, token_path: str, head_instance_id: str, update_interval_s: int,
             base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The head's environment (inherited by the autoscaler monitor and our provider in it)."""
    env = driver_env(token_path, None, base)
    env.update({
        "RAY_CLOUD_INSTANCE_ID": head_instance_id,
        "RAY_NODE_TYPE_NAME": HEAD_NODE_TYPE,
        "RAY_enable_autoscaler_v2": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": str(int(update_interval_s)),
        "RAY_USAGE_STATS_ENABLED": "0",
        # `down` stops the head deliberately: no 30 s drain of a head that serves nothing.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    })
    # The monitor imports cluster.node_provider: make the checkout importable even when the
    # package is not installed.
    paths = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def head_argv(*, ray_executable: str, port: int, dashboard_port: int, dashboard_host: str,
              include_dashboard: bool, ray_client_server_port: int,
              dashboard_agent_listen_port: int, temp_dir: str | None,
              ray_config_path: str, node_ip_address: str | None = None) -> list[str]:
    """``ray start --head --block`` with every port explicit and no resources for tasks."""
    argv = [ray_executable, "start", "--head", "--block", f"--port={port}",
            "--num-cpus=0", "--num-gpus=0", "--disable-usage-stats",
            f"--ray-client-server-port={ray_client_server_port}",
            f"--autoscaling-config={ray_config_path}"]
    if include_dashboard:
        argv += [f"--dashboard-host={dashboard_host}", f"--dashboard-port={dashboard_port}"]
    else:
        argv.append("--include-dashboard=false")
    if dashboard_agent_listen_port:
        argv.append(f"--dashboard-agent-listen-port={dashboard_agent_listen_port}")
    if temp_dir:
        argv.append(f"--temp-dir={temp_dir}")
    if node_ip_address:
        argv.append(f"--node-ip-address={node_ip_address}")
    return argv


def local_cloud_for(cluster: ClusterFile, state_dir: Path, head: HeadInfo | None = None,
                    ray_executable: str | None = None) -> LocalCloud:
    """The local cloud over the cluster's state dir (same table the provider uses)."""
    mapping: dict[str, Any] = {"state_dir": str(state_dir),
                               "stop_grace_s": cluster.local.stop_grace_s}
    if head is not None:
        mapping.update(head_address=head.gcs_address, token_path=head.token_path)
    if ray_executable or cluster.local.ray_executable:
        mapping["ray_executable"] = ray_executable or cluster.local.ray_executable
    return LocalCloud(LocalConfig.from_mapping(mapping))


# ------------------------------------------------------------------------------ local


def up_local(cluster: ClusterFile, *, state_dir: Path | None = None,
             update_interval_s: int | None = None, ray_executable: str | None = None,
             extra_env: Mapping[str, str] | None = None,
             on_progress: Callable[[str], None] | None = None) -> HeadInfo:
    """Start the local head with the autoscaler (idempotent: a running head is returned)."""
    say = on_progress or (lambda _m: None)
    state = (state_dir or cluster.resolved_state_dir()).expanduser().resolve()
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    existing = HeadInfo.load(state)
    cloud = local_cloud_for(cluster, state, ray_executable=ray_executable)
    if existing is not None:
        live = {i.launch_id for i in cloud.list_instances(cluster.cluster_name)}
        if existing.head_instance_id in live:
            say(f"head already running (pid {existing.pid})")
            return existing
    token_path = state / TOKEN_FILE
    ensure_token(token_path)
    h = cluster.head
    ports = {
        "gcs": h.port or free_port(),
        "dashboard": h.dashboard_port or free_port(),
        "ray_client_server": h.ray_client_server_port or free_port(),
        "dashboard_agent_listen": h.dashboard_agent_listen_port or free_port(),
    }
    temp_dir = h.temp_dir or f"/tmp/ia-{secrets.token_hex(3)}"  # noqa: S108 (short on purpose)
    head_id = f"{cluster.cluster_name}-head-{uuid.uuid4().hex[:12]}"
    gcs_address = f"127.0.0.1:{ports['gcs']}"
    ray_yaml = state / RAY_YAML
    ray_config = render_ray_config(cluster, head_address=gcs_address, head_instance_id=head_id,
                                   token_path=str(token_path), state_dir=str(state))
    if ray_executable:
        ray_config["provider"]["ray_executable"] = ray_executable
    ray_yaml.write_text(dump_ray_config(ray_config))
    executable = ray_executable or cluster.local.ray_executable or default_ray_executable()
    argv = head_argv(ray_executable=executable, port=ports["gcs"],
                     dashboard_port=ports["dashboard"], dashboard_host=h.dashboard_host,
                     include_dashboard=h.include_dashboard,
                     ray_client_server_port=ports["ray_client_server"],
                     dashboard_agent_listen_port=ports["dashboard_agent_listen"],
                     temp_dir=temp_dir, ray_config_path=str(ray_yaml))
    env = head_env(token_path=str(token_path), head_instance_id=head_id,
                   update_interval_s=update_interval_s or cluster.autoscaler.update_interval_s)
    env.update(extra_env or {})
    request = LaunchRequest(launch_id=head_id, cluster_name=cluster.cluster_name,
                            node_type=HEAD_NODE_TYPE, instance_type=HEAD_INSTANCE_TYPE,
                            image="local")
    say(f"starting the Ray head ({head_id}) on {gcs_address}")
    inst = cloud.start_process(request, argv, env)
    record = next(r for r in cloud.records() if r.provider_instance_id ==
                  inst.provider_instance_id)
    info = HeadInfo(
        cluster_name=cluster.cluster_name, cloud="local", head_instance_id=head_id,
        gcs_address=gcs_address,
        dashboard_url=f"http://{h.dashboard_host}:{ports['dashboard']}"
        if h.include_dashboard else None,
        token_path=str(token_path), ray_config_path=str(ray_yaml), state_dir=str(state),
        temp_dir=temp_dir, provider_instance_id=inst.provider_instance_id, pid=record.pid,
        log_path=record.log_path, ports=ports)
    info.save()
    try:
        _wait_started(Path(record.log_path), record.pid, h.start_timeout_s)
    except HeadError:
        cloud.terminate(inst.provider_instance_id, inst.zone)
        raise
    say(f"head up: {gcs_address}" + (f", dashboard {info.dashboard_url}"
                                      if info.dashboard_url else ""))
    return info


def _wait_started(log_path: Path, pid: int | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        if "Ray runtime started" in text:
            return
        if pid is None or not Path(f"/proc/{pid}").exists() or _zombie(pid):
            raise HeadError(f"ray start --head exited; last log lines:\n{_tail(text)}")
        time.sleep(0.2)
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    raise HeadError(f"the head did not start in {timeout_s:.0f}s; last log lines:\n"
                    f"{_tail(text)}")


def _zombie(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return raw[raw.rfind(")") + 2:].split()[0] in ("Z", "X")


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class DownReport:
    """What ``down`` stopped."""

    head_stopped: bool
    nodes_stopped: int
    stray_groups_killed: int


def down_local(cluster: ClusterFile, *, state_dir: Path | None = None,
               on_progress: Callable[[str], None] | None = None) -> DownReport:
    """Stop the head (autoscaler first), then every node; nothing of the cluster survives."""
    say = on_progress or (lambda _m: None)
    state = (state_dir or cluster.resolved_state_dir()).expanduser().resolve()
    if not state.exists():
        return DownReport(False, 0, 0)
    cloud = local_cloud_for(cluster, state)
    head = HeadInfo.load(state)
    head_stopped = False
    for rec in cloud.records():
        if rec.state != "terminated" and rec.node_type == HEAD_NODE_TYPE and \
                rec.cluster_name == cluster.cluster_name:
            say(f"stopping the head {rec.launch_id} (pid {rec.pid})")
            cloud.terminate(rec.provider_instance_id, rec.zone)
            head_stopped = True
    nodes = cloud.terminate_all(cluster.cluster_name)
    if nodes:
        say(f"stopped {nodes} node(s)")
    # Anything left with our marker (a launcher killed mid-spawn, a process Ray moved to its
    # own session): kill it, and wait until nothing carries the marker.
    stray = 0
    deadline = time.monotonic() + 10
    while True:
        left = [pid for procs in find_marked(cloud.state_dir).values() for pid, *_ in procs]
        if not left or time.monotonic() >= deadline:
            break
        for pid in left:
            stray += 1
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    if left:
        raise HeadError(f"processes {left} of cluster {cluster.cluster_name} survived SIGKILL")
    if head is not None:
        (state / HEAD_FILE).unlink(missing_ok=True)
    return DownReport(head_stopped, nodes, stray)


@dataclass
class StatusReport:
    """Cloud listing and Ray's view of one cluster."""

    head: HeadInfo | None
    instances: list[CloudInstance]
    ray_nodes: list[dict[str, Any]]
    ray_error: str | None = None


def ray_nodes(gcs_address: str, token_path: str, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The Ray nodes of a cluster as the GCS sees them (with our token, in this process)."""
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    from ray._raylet import GcsClient  # type: ignore[attr-defined]
    from ray.core.generated import gcs_pb2

    client = GcsClient(address=gcs_address)
    nodes = client.get_all_node_info(timeout=timeout_s)
    out = []
    for node_id, info in nodes.items():
        out.append({
            "ray_node_id": node_id.hex(), "instance_id": info.instance_id,
            "node_type": info.node_type_name, "address": info.node_manager_address,
            "state": gcs_pb2.GcsNodeInfo.GcsNodeState.Name(info.state),  # type: ignore[attr-defined]
            "is_head": bool(info.is_head_node),
            "resources": {k: v for k, v in info.resources_total.items()
                          if not k.startswith("node:")},
        })
    return out


def status_local(cluster: ClusterFile, *, state_dir: Path | None = None) -> StatusReport:
    """The local cloud's table for the cluster and the GCS's node list."""
    state = (state_dir or cluster.resolved_state_dir()).expanduser().resolve()
    head = HeadInfo.load(state) if state.exists() else None
    instances = local_cloud_for(cluster, state).list_instances(cluster.cluster_name) \
        if state.exists() else []
    nodes: list[dict[str, Any]] = []
    error = None
    if head is not None and any(i.launch_id == head.head_instance_id for i in instances):
        try:
            nodes = ray_nodes(head.gcs_address, head.token_path)
        except Exception as exc:  # noqa: BLE001 - status must show what it can
            error = f"{type(exc).__name__}: {exc}"
    return StatusReport(head=head, instances=instances, ray_nodes=nodes, ray_error=error)


# ------------------------------------------------------------------------------ scaleway

SCW_TOKEN_PATH = "/etc/inventiv/ray_token"  # noqa: S105 (a path)
SCW_SERVICE_TOKEN_PATH = "/etc/inventiv/service_token"  # noqa: S105 (a path)
SCW_ENV_PATH = "/etc/inventiv/scw.env"
SCW_RAY_YAML = "/etc/inventiv/ray-autoscaler.yaml"
SCW_HEAD_JSON = "/etc/inventiv/head.json"
SCW_STATE_DIR = "/var/lib/inventiv/cluster"
HEAD_UNIT = "inventiv-ray-head.service"
SCW_ENV_KEYS = ("SCW_ACCESS_KEY", "SCW_SECRET_KEY", "SCW_DEFAULT_PROJECT_ID",
                "SCW_DEFAULT_ORGANIZATION_ID", "SCW_API_URL")


def scaleway_head_address(cluster: ClusterFile) -> str:
    """``host:port`` workers join: explicit, or ``<cluster>-head.<private network>.internal``."""
    if cluster.head.address:
        return cluster.head.address
    assert cluster.scaleway is not None and cluster.scaleway.private_network_name
    return f"{cluster.cluster_name}-head.{cluster.scaleway.private_network_name}.internal:" \
           f"{cluster.head.port or 6379}"


def render_head_cloud_init(cluster: ClusterFile, *, head_instance_id: str, ray_token: str,
                           scw_env: Mapping[str, str], service_token: str | None = None
                           ) -> str:
    """The head VM's ``#cloud-config``: secrets in 0600 files, the head as a systemd unit."""
    from cluster.bootstrap import dump_cloud_config  # the same YAML dumper as workers

    address = scaleway_head_address(cluster)
    ray_config = render_ray_config(
        cluster, head_address=address, head_instance_id=head_instance_id,
        token_path=SCW_TOKEN_PATH, state_dir=SCW_STATE_DIR,
        service_token_file=SCW_SERVICE_TOKEN_PATH if service_token else None)
    host = address.rsplit(":", 1)[0]
    argv = head_argv(ray_executable=cluster.head.ray_executable, port=cluster.head.port or 6379,
                     dashboard_port=cluster.head.dashboard_port or 8265,
                     dashboard_host="127.0.0.1", include_dashboard=cluster.head.include_dashboard,
                     ray_client_server_port=cluster.head.ray_client_server_port or 10001,
                     dashboard_agent_listen_port=cluster.head.dashboard_agent_listen_port,
                     temp_dir=cluster.head.temp_dir, ray_config_path=SCW_RAY_YAML)
    exec_config = {"argv": argv, "resolve_host": host, "resolve_timeout_s": 300}
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": SCW_TOKEN_PATH,
           "RAY_CLOUD_INSTANCE_ID": head_instance_id, "RAY_NODE_TYPE_NAME": HEAD_NODE_TYPE,
           "RAY_enable_autoscaler_v2": "1",
           "AUTOSCALER_UPDATE_INTERVAL_S": str(cluster.autoscaler.update_interval_s),
           "RAY_USAGE_STATS_ENABLED": "0"}
    exec_start = " ".join([cluster.head.python_executable,
                           *(systemd_quote(a) for a in ("-m", "cluster.head", "exec-head",
                                                        SCW_HEAD_JSON))])
    unit = "\n".join([
        "[Unit]", "Description=Inventiv Ray head (autoscaler v2)",
        "After=network-online.target", "Wants=network-online.target", "",
        "[Service]", "Type=simple", "Restart=always", "RestartSec=5",
        f"EnvironmentFile={SCW_ENV_PATH}",
        *(f"Environment={systemd_quote(f'{k}={v}', exec_line=False)}" for k, v in env.items()),
        f"ExecStart={exec_start}", "", "[Install]", "WantedBy=multi-user.target", ""])
    env_file = "".join(f"{k}={v}\n" for k, v in scw_env.items() if k in SCW_ENV_KEYS and v)
    files: list[dict[str, Any]] = [
        {"path": SCW_TOKEN_PATH, "content": ray_token, "owner": "root:root",
         "permissions": "0600"},
        {"path": SCW_ENV_PATH, "content": env_file, "owner": "root:root",
         "permissions": "0600"},
        {"path": SCW_RAY_YAML, "content": dump_ray_config(ray_config), "owner": "root:root",
         "permissions": "0644"},
        {"path": SCW_HEAD_JSON, "content": json.dumps(exec_config, indent=1),
         "owner": "root:root", "permissions": "0644"},
        {"path": f"/etc/systemd/system/{HEAD_UNIT}", "content": unit, "owner": "root:root",
         "permissions": "0644"},
    ]
    if service_token:
        files.insert(1, {"path": SCW_SERVICE_TOKEN_PATH, "content": service_token,
                         "owner": "root:root", "permissions": "0600"})
    config = {"package_update": False, "package_upgrade": False, "write_files": files,
              "runcmd": [["mkdir", "-p", SCW_STATE_DIR], ["systemctl", "daemon-reload"],
                         ["systemctl", "enable", "--now", HEAD_UNIT]]}
    return dump_cloud_config(config)


def scaleway_cloud_for(cluster: ClusterFile) -> Any:
    """The Scaleway adapter configured from the cluster file (credentials from ``SCW_*``)."""
    from cluster.clouds.scaleway import ScalewayCloud, ScalewayConfig

    scw = cluster.scaleway
    assert scw is not None
    return ScalewayCloud(ScalewayConfig(zones=tuple(scw.zones), project_id=scw.project_id,
                                        boot_timeout_s=scw.boot_timeout_s,
                                        capacity_block_s=scw.capacity_block_s))


def up_scaleway(cluster: ClusterFile, *, cloud: Any | None = None,
                state_dir: Path | None = None,
                on_progress: Callable[[str], None] | None = None) -> HeadInfo:
    """Create the head VM (idempotent: an existing head VM of the cluster is returned)."""
    say = on_progress or (lambda _m: None)
    scw = cluster.scaleway
    assert scw is not None
    cloud = cloud or scaleway_cloud_for(cluster)
    state = (state_dir or cluster.resolved_state_dir()).expanduser().resolve()
    state.mkdir(parents=True, exist_ok=True)
    token_path = state / TOKEN_FILE
    token = ensure_token(token_path)
    address = scaleway_head_address(cluster)
    existing = [i for i in cloud.list_instances(cluster.cluster_name)
                if i.node_type == HEAD_NODE_TYPE]
    if existing:
        inst = existing[0]
        say(f"head VM already exists: {inst.provider_instance_id} ({inst.raw_state})")
        head_id = inst.launch_id or inst.provider_instance_id
    else:
        head_id = str(uuid.uuid4())
        client = cloud.client
        scw_env = {"SCW_ACCESS_KEY": client.access_key or "",
                   "SCW_SECRET_KEY": client.secret_key or "",
                   "SCW_DEFAULT_PROJECT_ID": scw.project_id or client.default_project_id or "",
                   "SCW_API_URL": client.api_url or ""}
        service_token = None
        if cluster.control_api.service_token_file:
            service_token = Path(cluster.control_api.service_token_file).expanduser() \
                .read_text().strip()
        user_data = render_head_cloud_init(cluster, head_instance_id=head_id, ray_token=token,
                                           scw_env=scw_env, service_token=service_token)
        zones = (cluster.head.zone,) if cluster.head.zone else tuple(scw.zones[:1])
        request = LaunchRequest(
            launch_id=head_id, cluster_name=cluster.cluster_name, node_type=HEAD_NODE_TYPE,
            instance_type=cluster.head.instance_type or "", image=cluster.head.image or "",
            zones=zones, root_volume_gb=cluster.head.root_volume_gb, user_data=user_data,
            name=f"{cluster.cluster_name}-head", public_ip=True,
            private_network_id=scw.private_network_id,
            security_group_id=cluster.head.security_group_id)
        say(f"creating the head VM ({cluster.head.instance_type} in {zones[0]})")
        inst = cloud.create(request)
    info = HeadInfo(cluster_name=cluster.cluster_name, cloud="scaleway",
                    head_instance_id=head_id, gcs_address=address, dashboard_url=None,
                    token_path=str(token_path), ray_config_path=SCW_RAY_YAML,
                    state_dir=str(state), provider_instance_id=inst.provider_instance_id)
    info.save()
    say(f"head VM {inst.provider_instance_id} is {inst.raw_state}; public IP "
        f"{inst.public_ip or '-'}; workers join {address}")
    return info


def down_scaleway(cluster: ClusterFile, *, cloud: Any | None = None,
                  on_progress: Callable[[str], None] | None = None) -> int:
    """Terminate every VM tagged with the cluster (workers first, then the head)."""
    say = on_progress or (lambda _m: None)
    cloud = cloud or scaleway_cloud_for(cluster)
    instances = cloud.list_instances(cluster.cluster_name)
    instances.sort(key=lambda i: i.node_type == HEAD_NODE_TYPE)
    for inst in instances:
        say(f"terminating {inst.provider_instance_id} ({inst.node_type})")
        cloud.terminate(inst.provider_instance_id, inst.zone, launch_id=inst.launch_id)
    return len(instances)


def exec_head(config_path: str, *, resolve: Callable[[str], str] = socket.gethostbyname,
              execv: Callable[[str, list[str]], Any] = os.execv,
              sleep: Callable[[float], None] = time.sleep) -> None:
    """On the head VM: resolve our private address, then exec ``ray start --head`` bound to it."""
    config = json.loads(Path(config_path).read_text())
    argv = list(config["argv"])
    host = config.get("resolve_host")
    if host:
        deadline = time.monotonic() + float(config.get("resolve_timeout_s", 300))
        while True:
            try:
                ip = resolve(host)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    raise
                sleep(2)
        argv.append(f"--node-ip-address={ip}")
    execv(argv[0], argv)


def main(argv: list[str] | None = None) -> None:
    """``python -m cluster.head exec-head <config.json>`` (used by the head VM's unit)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "exec-head":
        sys.stderr.write("usage: python -m cluster.head exec-head <config.json>\n")
        raise SystemExit(2)
    exec_head(args[1])


if __name__ == "__main__":  # pragma: no cover
    main()
