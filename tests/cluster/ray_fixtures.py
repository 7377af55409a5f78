"""Shared Ray fixtures: one real local Ray head (2.60, token auth, autoscaler v2 with our provider
on the ``local`` cloud) for the session, drivers run against it with its token, and the
control API served over real HTTP on the port the provider reports to.

Import the fixtures into a test module (``from tests.cluster.ray_fixtures import ...``). The
head is started once per session even when several modules import the fixture (a module-level
registry with a reference count), and everything it started is stopped after the session's
last test that uses it (or at session end) -- also when a test fails: ``down`` kills the
head's process group, every node of the local cloud's table and any process still carrying
the cluster's marker, then the test asserts none is left.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml

from cluster.clouds.local import find_marked
from cluster.clouds.local_head import down_local, up_local
from cluster.cluster_config import ClusterFile, load_cluster
from cluster.head import HeadInfo, driver_env

CLUSTER_NAME = "e2e"
NODE_TYPE = "local-L4"
IDLE_TIMEOUT_MINUTES = 0.2  # 12 s
UPDATE_INTERVAL_S = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalRayCluster:
    """A running local cluster: its file, head, state dir and the control API it reports to."""

    cluster: ClusterFile
    cluster_file: Path
    head: HeadInfo
    state_dir: Path
    control_api_url: str
    control_api_port: int
    service_token_file: Path
    started_in_s: float

    def driver_env(self) -> dict[str, str]:
        return driver_env(self.head.token_path, self.head.gcs_address)

    def leftover_processes(self) -> list[int]:
        return [pid for procs in find_marked(self.state_dir).values() for pid, *_ in procs]


_registry: dict[str, Any] = {"cluster": None, "refs": 0}
_registry_lock = threading.Lock()


def _start(tmp_root: Path) -> LocalRayCluster:
    from tests.conftest import SERVICE_TOKEN

    state_dir = tmp_root / "state"
    state_dir.mkdir(parents=True)
    token_file = tmp_root / "service_token"
    token_file.write_text(SERVICE_TOKEN)
    token_file.chmod(0o600)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = {
        "cluster_name": CLUSTER_NAME, "cloud": "local", "state_dir": str(state_dir),
        "head": {"port": 0, "dashboard_port": 0, "ray_client_server_port": 0,
                 "include_dashboard": False, "start_timeout_s": 60},
        "autoscaler": {"idle_timeout_minutes": IDLE_TIMEOUT_MINUTES, "max_workers": 2,
                       "update_interval_s": UPDATE_INTERVAL_S, "cache_ttl_s": 0.5},
        "control_api": {"url": url, "service_token_file": str(token_file)},
        "local": {"max_nodes": 2, "stop_grace_s": 10},
        "node_types": {NODE_TYPE: {"instance_type": "local-L4", "max_workers": 1}},
    }
    cluster_file = tmp_root / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(data))
    cluster = load_cluster(cluster_file)
    t0 = time.monotonic()
    head = up_local(cluster)
    return LocalRayCluster(cluster=cluster, cluster_file=cluster_file, head=head,
                           state_dir=state_dir.resolve(),
                           control_api_url=url, control_api_port=port,
                           service_token_file=token_file,
                           started_in_s=time.monotonic() - t0)


class _StopAfterLastUser:
    """A plugin that runs ``stop`` once the session's last test using ``fixture`` is torn down:
    an idle head costs ~9 % of a core (its autoscaler loop) and ~0.65 GB, and its users run in
    the database-parametrized groups, long before the tiers that need the machine most."""

    def __init__(self, items: list[pytest.Item], fixture: str, stop: Any) -> None:
        users = [item.nodeid for item in items if fixture in getattr(item, "fixturenames", ())]
        self.last = users[-1] if users else None
        self.stop = stop

    @pytest.hookimpl(trylast=True)  # after the item's own fixtures are torn down
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        if item.nodeid == self.last:
            self.stop()


@pytest.fixture(scope="session")
def local_ray_cluster(request: pytest.FixtureRequest,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayCluster]:
    """The session's local Ray cluster (started on first use, stopped after the last test that
    uses it, or at session end)."""
    with _registry_lock:
        if _registry["cluster"] is None:
            _registry["cluster"] = _start(tmp_path_factory.mktemp("ray-e2e"))
        _registry["refs"] += 1
        running: LocalRayCluster = _registry["cluster"]
    stopped: list[bool] = []

    def stop() -> None:
        if stopped:
            return
        stopped.append(True)
        with _registry_lock:
            _registry["refs"] -= 1
            last = _registry["refs"] == 0
            if last:
                _registry["cluster"] = None
        if last:
            down_local(running.cluster, state_dir=running.state_dir)
            left = running.leftover_processes()
            if running.head.temp_dir and running.head.temp_dir.startswith("/tmp/ia-"):
                shutil.rmtree(running.head.temp_dir, ignore_errors=True)
            assert not left, f"processes of the test cluster survived `down`: {left}"

    plugin = _StopAfterLastUser(request.session.items, "local_ray_cluster", stop)
    request.config.pluginmanager.register(plugin)
    try:
        yield running
    finally:
        request.config.pluginmanager.unregister(plugin)
        stop()


def run_driver(cluster: LocalRayCluster, code: str, timeout_s: float = 120.0) -> Any:
    """Run a driver script against the cluster in a subprocess; return its last stdout line
    parsed as JSON.

    A subprocess, not ``ray.init`` here: Ray reads ``RAY_AUTH_MODE`` once per process, when it
    is first imported, and other tests of the session import Ray without it.
    """
    script = textwrap.dedent(code)
    proc = subprocess.run([sys.executable, "-c", script], env=cluster.driver_env(),
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"driver failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


@dataclass
class ControlApiServer:
    """The control API served by uvicorn in a thread."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def serve_control_api(settings: Any, port: int, timeout_s: float = 20.0) -> ControlApiServer:
    """Run ``create_app(settings)`` (lifespan on: catalog seeded) on ``127.0.0.1:port``."""
    from control_api.app import create_app

    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                            log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"control-api-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the control API did not start on port {port}")
        time.sleep(0.05)
    return ControlApiServer(url=f"http://127.0.0.1:{port}", server=server, thread=thread)


__all__ = ["ControlApiServer", "LocalRayCluster", "local_ray_cluster", "run_driver",
           "serve_control_api"]
