"""The laptop cluster, end to end: the REAL ``inventiv up`` in a subprocess, once per module.

``inventiv up`` runs with a temporary state dir, free ports for everything (control API, Serve
HTTP, Ray dashboard; the head's own ports are 0 = free in ``cluster.yaml``), a temporary CLI
config dir, and this directory's cluster and deployment files: a fast-scaling local cluster
(1 s autoscaler loop, idle nodes gone after 12 s) and ``tiny-chat`` at 0..2 replicas next to
the embedding model at 1. ``inventiv down`` runs at module end, also after a failure, and the
teardown asserts that no process carrying the cluster's (or the control API's) marker is left.

The module fixture ends with its module, so this vLLM stack never overlaps the session-wide one
of ``tests/serve_apps`` (which runs later, alphabetically).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli.laptop import CLUSTER_DIR, find_marked_processes
from cluster.clouds.local import find_marked
from tests.client.conftest import free_port
from tests.serve_apps.conftest import require_modules

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CLUSTER_FILE = HERE / "cluster.yaml"
DEPLOYMENTS_FILE = HERE / "deployments.yaml"
# Startup is 2-4 min on 2 idle cores; shared CI machines are slower.
READY_TIMEOUT_S = float(os.environ.get("INVENTIV_SERVE_READY_TIMEOUT", "900"))
MIN_AVAILABLE_GIB = 7.0


def available_gib() -> float:
    """Memory available to a new process (``MemAvailable`` on Linux), through psutil."""
    import psutil

    return float(psutil.virtual_memory().available) / 1024**3


def wait_for_memory(limit_s: float = 600) -> None:
    """A vLLM stack needs ~4.5 GiB per pair of engines: wait (bounded) for room on a shared box."""
    deadline = time.monotonic() + limit_s
    while available_gib() < MIN_AVAILABLE_GIB and time.monotonic() < deadline:
        time.sleep(15)


@dataclass
class Laptop:
    """A running laptop cluster and how to drive it."""

    state_dir: Path
    config_dir: Path
    env_lines: dict[str, str]
    up_json: dict[str, Any]
    api_port: int
    serve_port: int
    dashboard_port: int
    up_seconds: float

    @property
    def base_url(self) -> str:
        return self.env_lines["OPENAI_BASE_URL"]

    @property
    def api_key(self) -> str:
        return self.env_lines["OPENAI_API_KEY"]

    @property
    def api_url(self) -> str:
        return self.env_lines["INVENTIV_API_URL"]

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a user has after ``eval "$(inventiv up --env)"``."""
        env = cli_env(self.config_dir)
        env.update(self.env_lines)
        env.update(extra)
        return env

    def cli(self, *args: str, timeout: float = 120, check: bool = True,
            **extra_env: str) -> subprocess.CompletedProcess[str]:
        """Run ``inventiv ARGS`` as a user would (stdout/stderr captured)."""
        proc = subprocess.run([sys.executable, "-m", "cli.main", *args], env=self.env(**extra_env),
                              cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"inventiv {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stderr[-3000:]}\n{proc.stdout[-2000:]}")
        return proc

    def up_args(self) -> list[str]:
        return ["up", "--state-dir", str(self.state_dir), "--api-port", str(self.api_port),
                "--serve-port", str(self.serve_port), "--dashboard-port",
                str(self.dashboard_port), "--cluster", str(CLUSTER_FILE), "-f",
                str(DEPLOYMENTS_FILE), "--update-interval", "1",
                "--timeout", str(int(READY_TIMEOUT_S))]

    def serve_client(self) -> Any:
        from control_api.serve_client import ServeClient

        return ServeClient(f"http://127.0.0.1:{self.dashboard_port}",
                           token_file=self.state_dir / CLUSTER_DIR / "ray_token", timeout_s=15)

    def leftover_processes(self) -> list[int]:
        cluster = [pid for procs in find_marked(self.state_dir / CLUSTER_DIR).values()
                   for pid, *_ in procs]
        return cluster + find_marked_processes(self.state_dir)


def cli_env(config_dir: Path) -> dict[str, str]:
    """The test's environment for the CLI: its own config dir, nothing inherited that would
    point it at another database, API or Ray cluster."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("INVENTIV_", "RAY_", "OPENAI_"))}
    env["INVENTIV_CONFIG_DIR"] = str(config_dir)
    # Share the tiny model's cache with the rest of the suite (one build per machine).
    env["INVENTIV_MODEL_CACHE"] = os.environ.get("INVENTIV_MODEL_CACHE",
                                                 str(REPO / ".cache" / "models"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def laptop() -> Iterator[Laptop]:
    """``inventiv up`` (real, in a subprocess) for this module; ``inventiv down`` after it."""
    require_modules("vllm", "torch", "openai")
    wait_for_memory()
    root = Path(tempfile.mkdtemp(prefix="ia-laptop-"))
    state_dir = root / "state"
    config_dir = root / "config"
    lap = Laptop(state_dir=state_dir, config_dir=config_dir, env_lines={}, up_json={},
                 api_port=free_port(), serve_port=free_port(), dashboard_port=free_port(),
                 up_seconds=0.0)
    try:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "cli.main", *lap.up_args(), "--json"],
                              env=cli_env(config_dir), cwd=REPO, capture_output=True, text=True,
                              timeout=READY_TIMEOUT_S + 300, check=False)
        lap.up_seconds = time.monotonic() - started
        if proc.returncode != 0:
            pytest.fail(f"inventiv up exited {proc.returncode} after {lap.up_seconds:.0f}s:\n"
                        f"{proc.stderr[-5000:]}")
        lap.up_json = json.loads(proc.stdout)
        lap.env_lines = lap.up_json["env"]
        print(f"\ninventiv up: ready in {lap.up_seconds:.0f}s", file=sys.stderr)
        yield lap
    finally:
        down = subprocess.run([sys.executable, "-m", "cli.main", "down", "--state-dir",
                               str(state_dir), "--json"], env=cli_env(config_dir), cwd=REPO,
                              capture_output=True, text=True, timeout=300, check=False)
        deadline = time.monotonic() + 30
        while lap.leftover_processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        left = lap.leftover_processes()
        if os.environ.get("INVENTIV_KEEP_LAPTOP_STATE") != "1":
            shutil.rmtree(root, ignore_errors=True)
        assert down.returncode == 0, f"inventiv down failed:\n{down.stderr[-3000:]}"
        assert not left, f"processes left after inventiv down: {left}"
