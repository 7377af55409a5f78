"""A cluster's Ray head: what every cloud's head shares, and which head a cluster file gets.

Each cloud's head lives beside that cloud's adapter: the local head (a supervised
``ray start --head`` process) in :mod:`cluster.clouds.local_head`, the Scaleway head (a VM booted
by its cloud-init) in :mod:`cluster.clouds.scaleway_head`. :func:`head_for` hands the CLI the
right one behind one small interface (:class:`Head`: ``up``, ``down``, ``status``).

Shared here: the state file ``up`` writes (:class:`HeadInfo`, ``<state_dir>/head.json``), the
cluster's Ray token (:func:`ensure_token`, generated once, 0600), the environment of a driver of
the cluster (:func:`driver_env`: FACTS: a stray ``~/.ray/auth_token`` turns auth on by itself, so
we always pass ours explicitly), the ``ray start --head`` command line (:func:`head_argv`, every
port explicit) and Ray's view of the cluster (:func:`ray_nodes`, through the one GCS probe in
:mod:`core.ray_private`).

``python -m cluster.head exec-head <config.json>`` is the command the Scaleway head VM's systemd
unit runs (rendered into its cloud-init); it is served by
:func:`cluster.clouds.scaleway_head.exec_head`.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import core
from cluster.errors import ClusterError
from core.clouds import CloudInstance
from core.ray_private import GcsProbe

if TYPE_CHECKING:
    from cluster.cluster_config import ClusterFile

TOKEN_FILE = "ray_token"  # noqa: S105 (a file name)
HEAD_FILE = "head.json"
RAY_YAML = "ray-autoscaler.yaml"
# The directory holding our top-level packages (``cluster``, ``core``, ``cli``...): the checkout
# when run from one, ``site-packages`` when installed from the wheel. Processes we start import
# our packages from there (PYTHONPATH of the head, cwd of ``python -m`` children).
PACKAGES_DIR = Path(core.__file__).resolve().parent.parent
# Variables that must never leak from the caller into a head or driver (auth, identity).
_SCRUB = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS",
          "RAY_CLOUD_INSTANCE_ID", "RAY_NODE_TYPE_NAME")

Progress = Callable[[str], None]


class HeadError(ClusterError, RuntimeError):
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
    public_ip: str | None = None
    public_url: str | None = None  # the TLS front door (Scaleway)
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


@dataclass
class StatusReport:
    """Cloud listing and Ray's view of one cluster."""

    head: HeadInfo | None
    instances: list[CloudInstance]
    ray_nodes: list[dict[str, Any]]
    ray_error: str | None = None


class DownSummary(Protocol):
    """What a head's ``down`` stopped, as the CLI prints it."""

    def as_dict(self) -> dict[str, Any]: ...


class Head(Protocol):
    """One cloud's head, as ``inventiv cluster up|down|status`` drives it."""

    def up(self, *, state_dir: Path | None = None, update_interval_s: int | None = None,
           on_progress: Progress | None = None) -> HeadInfo:
        """Start the head (idempotent: a running head is returned)."""
        ...

    def down(self, *, state_dir: Path | None = None,
             on_progress: Progress | None = None) -> DownSummary:
        """Stop the head and every node of the cluster."""
        ...

    def status(self, *, state_dir: Path | None = None) -> StatusReport:
        """The cloud's instances of the cluster and Ray's nodes (when it can ask Ray)."""
        ...


def head_for(cluster: ClusterFile) -> Head:
    """The head of ``cluster``'s cloud (the Scaleway SDK loads only for a Scaleway cluster)."""
    if cluster.cloud == "local":
        from cluster.clouds.local_head import LocalHead

        return LocalHead(cluster)
    from cluster.clouds.scaleway_head import ScalewayHead

    return ScalewayHead(cluster)


# ------------------------------------------------------------------------------ shared pieces


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


def ray_nodes(gcs_address: str, token_path: str, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The Ray nodes of a cluster as the GCS sees them (with our token, in this process)."""
    # The probe reads token auth from the process environment, as Ray does.
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    return [node.as_dict() for node in GcsProbe(gcs_address, timeout_s).nodes()]


def main(argv: list[str] | None = None) -> None:
    """``python -m cluster.head exec-head <config.json>`` (used by the head VM's unit)."""
    from cluster.clouds.scaleway_head import main as scaleway_main

    scaleway_main(argv)


if __name__ == "__main__":  # pragma: no cover
    main()
