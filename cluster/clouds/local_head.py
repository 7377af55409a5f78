"""The ``local`` cloud's Ray head: a supervised ``ray start --head --block`` process.

The head runs as a node of the local cloud (:mod:`cluster.clouds.local`: own process group, log
in ``<state_dir>/nodes/``, recorded in the local cloud's table), with token auth:
``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH=<state_dir>/ray_token`` (generated once, 0600),
``RAY_CLOUD_INSTANCE_ID=<head id>``, ``RAY_NODE_TYPE_NAME=head``, ``RAY_enable_autoscaler_v2=1``,
``AUTOSCALER_UPDATE_INTERVAL_S`` and ``--autoscaling-config=<rendered Ray YAML>``. Every port is
explicit (0 in the cluster file = a free port) so two clusters on one machine do not clash, and
the temp dir is short (Ray's socket paths must stay under the AF_UNIX limit).

``down`` never runs ``ray stop``: that kills every Ray process of the machine, other clusters'
included. It stops the head's process group first (so the autoscaler launches nothing more),
then every node of the cluster's local table, then any process still carrying the cluster's
marker. Processes are looked at through :mod:`core.procs` (psutil), so this runs where ``/proc``
does not exist (macOS).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cluster.clouds.local import LocalCloud, LocalConfig, default_ray_executable, find_marked
from cluster.cluster_config import HEAD_NODE_TYPE, ClusterFile, dump_ray_config, render_ray_config
from cluster.head import (
    HEAD_FILE,
    PACKAGES_DIR,
    RAY_YAML,
    TOKEN_FILE,
    HeadError,
    HeadInfo,
    Progress,
    StatusReport,
    driver_env,
    ensure_token,
    free_port,
    head_argv,
    ray_nodes,
)
from core import procs
from core.clouds import LaunchRequest

HEAD_INSTANCE_TYPE = "local-head"


@dataclass
class DownReport:
    """What ``down`` stopped."""

    head_stopped: bool
    nodes_stopped: int
    stray_groups_killed: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LocalHead:
    """The local head of one cluster file, behind :class:`cluster.head.Head`."""

    def __init__(self, cluster: ClusterFile) -> None:
        self.cluster = cluster

    def up(self, *, state_dir: Path | None = None, update_interval_s: int | None = None,
           on_progress: Progress | None = None) -> HeadInfo:
        return up_local(self.cluster, state_dir=state_dir, update_interval_s=update_interval_s,
                        on_progress=on_progress)

    def down(self, *, state_dir: Path | None = None,
             on_progress: Progress | None = None) -> DownReport:
        return down_local(self.cluster, state_dir=state_dir, on_progress=on_progress)

    def status(self, *, state_dir: Path | None = None) -> StatusReport:
        return status_local(self.cluster, state_dir=state_dir)


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
    # The monitor imports cluster.node_provider: make our packages importable even when they
    # are a checkout that is not installed.
    paths = [str(PACKAGES_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


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


# ------------------------------------------------------------------------------ up


def up_local(cluster: ClusterFile, *, state_dir: Path | None = None,
             update_interval_s: int | None = None, ray_executable: str | None = None,
             extra_env: Mapping[str, str] | None = None,
             on_progress: Progress | None = None) -> HeadInfo:
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
        if not procs.alive(pid):  # exited (a zombie counts as exited)
            raise HeadError(f"ray start --head exited; last log lines:\n{_tail(text)}")
        time.sleep(0.2)
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    raise HeadError(f"the head did not start in {timeout_s:.0f}s; last log lines:\n"
                    f"{_tail(text)}")


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])


# ------------------------------------------------------------------------------ down, status


def down_local(cluster: ClusterFile, *, state_dir: Path | None = None,
               on_progress: Progress | None = None) -> DownReport:
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
        left = [pid for members in find_marked(cloud.state_dir).values()
                for pid, *_ in members]
        if not left or time.monotonic() >= deadline:
            break
        for pid in left:
            stray += 1
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    if left:
        raise HeadError(f"processes {left} of cluster {cluster.cluster_name} survived SIGKILL")
    if head is not None:
        (state / HEAD_FILE).unlink(missing_ok=True)
    return DownReport(head_stopped, nodes, stray)


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
