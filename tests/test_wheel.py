"""The wheel installs and runs outside the repository (issue #17, deliverable 4).

The wheel is built from a copy of the distribution's sources (pyproject's package list, so a
stale ``build/`` of the checkout can neither hide nor add a file) and installed with ``--no-deps``
into a fresh venv in a temporary directory. The third-party dependencies are the project venv's,
made visible by a ``.pth`` line naming its site-packages: a plain path line does not run that
directory's own ``.pth`` files, so the editable install of the checkout stays off, which the first
test proves. Every command then runs with ``cwd`` outside the repository and no ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGES = [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]
VERSION = PYPROJECT["project"]["version"]
# Files the running code reads from the installed package, not from a checkout.
SHIPPED = [
    "configs/catalog/seed.yaml",
    "configs/schemas/deployment.schema.json",
    "configs/clusters/local.yaml",
    "configs/clusters/scaleway.yaml",
    "configs/deployments/local.yaml",
    "configs/deployments/examples/gpu-chat.yaml",
    "configs/prometheus/prometheus.yml",
    "control_api/migrations/env.py",
    "control_api/migrations/script.py.mako",
    "control_api/console/templates/base.html",
    "control_api/console/static/console.js",
    "control_api/console/static/vendor/uplot/uPlot.iife.min.js",
    "control_api/console/static/vendor/uplot/LICENSE",
]
# And every file of the checkout matching these (each must match at least one).
SHIPPED_GLOBS = ["configs/traces/*.csv", "configs/grafana/dashboards/*.json",
                 "configs/grafana/provisioning/**/*.yaml", "control_api/migrations/versions/*.py",
                 "control_api/console/templates/*.html", "configs/prometheus/rules/*.yml"]
SERVER_START_S = 90.0


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    site_packages: Path
    workdir: Path  # the cwd of every command: outside the repository
    env: dict[str, str]

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), cwd=self.workdir, env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def python(self, code: str) -> str:
        out = self.run(self.bin("python"), "-c", code)
        assert out.returncode == 0, out.stderr
        return out.stdout


def _outside_repo(path: Path) -> Path:
    path = path.resolve()
    assert not path.is_relative_to(ROOT), path
    return path


def _project_site_packages() -> list[str]:
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def _clean_env(venv: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("INVENTIV_", "PYTHON", "VIRTUAL_ENV", "RAY_ADDRESS"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
               VIRTUAL_ENV=str(venv), PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1",
               INVENTIV_DATA_DIR=str(home / "data"), INVENTIV_CONFIG_DIR=str(home / "config"))
    return env


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    tmp = _outside_repo(Path(tempfile.mkdtemp(prefix="inventiv-wheel-")))
    try:
        src = tmp / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, src / name)
        for pkg in PACKAGES:
            shutil.copytree(ROOT / pkg, src / pkg,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        dist = tmp / "dist"
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--no-index", "-q", "-w", str(dist), str(src)],
            cwd=tmp, capture_output=True, text=True, timeout=300, check=False)
        assert build.returncode == 0, build.stdout + build.stderr
        (wheel,) = dist.glob("inventiv_agents-*.whl")

        venv = tmp / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                       check=True, capture_output=True, timeout=120)
        install = subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
             "--no-deps", "--no-index", "-q", str(wheel)],
            cwd=tmp, capture_output=True, text=True, timeout=300, check=False)
        assert install.returncode == 0, install.stdout + install.stderr
        site = Path(subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
             "['purelib'])"], check=True, capture_output=True, text=True).stdout.strip())
        # The project venv's third-party packages, after ours on sys.path.
        (site / "_inventiv_test_deps.pth").write_text(
            "".join(p + "\n" for p in _project_site_packages()), encoding="utf-8")
        workdir = tmp / "work"
        workdir.mkdir()
        yield Installed(wheel, venv, site, workdir, _clean_env(venv, tmp / "home"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_packages_import_from_the_venv_not_the_checkout(installed: Installed) -> None:
    code = (
        "import importlib, json, sys\n"
        f"mods = {PACKAGES!r}\n"
        "files = {m: importlib.import_module(m).__file__ for m in mods}\n"
        "print(json.dumps({'files': files, 'path': sys.path,\n"
        "                  'finders': [type(f).__name__ for f in sys.meta_path],\n"
        "                  'modules': sorted(m for m in sys.modules if 'editable' in m)}))\n")
    seen = json.loads(installed.python(code))
    for mod, file in seen["files"].items():
        path = Path(file).resolve()
        assert path.is_relative_to(installed.site_packages.resolve()), (mod, file)
        assert not path.is_relative_to(ROOT), (mod, file)
    assert str(ROOT) not in seen["path"], seen["path"]
    assert not seen["modules"], seen["modules"]  # the checkout's editable finder stayed off
    assert not any("Editable" in f for f in seen["finders"]), seen["finders"]


def test_wheel_ships_the_configs_and_the_migrations(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as zf:
        names = set(zf.namelist())
    missing = [f for f in SHIPPED if f not in names]
    for pattern in SHIPPED_GLOBS:
        expected = {p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern)}
        assert expected, pattern
        missing += sorted(expected - names)
    assert not missing, missing
    # configs.path resolves them inside the venv.
    code = ("import configs, json; print(json.dumps([str(configs.path(*p.split('/')[1:])) "
            f"for p in {SHIPPED[:7]!r}]))")
    for path in json.loads(installed.python(code)):
        assert Path(path).is_file() and Path(path).is_relative_to(installed.site_packages), path


def test_version(installed: Installed) -> None:
    out = installed.run(installed.bin("inventiv"), "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"inventiv-agents {VERSION}\n"
    assert VERSION == metadata.version("inventiv-agents")  # the checkout is the same release


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"inventiv api serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"inventiv api serve not healthy in {SERVER_START_S}s:\n{log.read_text()}")


def test_api_serve_answers_with_the_catalog_seed_loaded(installed: Installed) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    password = secrets.token_urlsafe(12)
    data = installed.workdir / "api"
    data.mkdir()
    env = {**installed.env, "INVENTIV_DATA_DIR": str(data),
           "INVENTIV_DATABASE_URL": f"sqlite:///{data / 'inventiv.db'}",
           "INVENTIV_ADMIN_PASSWORD": password, "INVENTIV_COOKIE_SECURE": "false"}
    log = installed.workdir / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [installed.bin("inventiv"), "api", "serve", "--host", "127.0.0.1", "--port",
             str(port)], cwd=installed.workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        _wait_healthy(proc, url, log)
        login = httpx.post(f"{url}/api/auth/login", json={"username": "admin",
                                                          "password": password}, timeout=10)
        assert login.status_code == 200, login.text
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        listed = httpx.get(f"{url}/api/catalog/instance-types", headers=auth, timeout=10)
        assert listed.status_code == 200, listed.text
        seed = yaml.safe_load((ROOT / "configs" / "catalog" / "seed.yaml").read_text())
        expected = {(p["code"], t["name"]) for p in seed["providers"]
                    for t in p.get("instance_types", [])}
        got = {(t["provider"], t["name"]) for t in listed.json()["items"]}
        assert expected and expected <= got, (expected - got, listed.json())
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        # The console's pages and vendored script are served from the wheel's package data.
        page = httpx.get(f"{url}/login", timeout=10)
        assert page.status_code == 200 and 'id="login-form"' in page.text, page.text[:500]
        script = httpx.get(f"{url}/static/vendor/uplot/uPlot.iife.min.js", timeout=10)
        assert script.status_code == 200 and "uPlot" in script.text

        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()
        text = log.read_text()
        assert f"Inventiv Agents control API on {url}" in text
        assert "Application shutdown complete." in text, text
        assert "Traceback" not in text, text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_simulate_runs_a_shipped_trace(installed: Installed) -> None:
    trace, deployment = installed.python(
        "import configs; print(configs.path('traces', 'bursty-chat.csv')); "
        "print(configs.path('deployments', 'examples', 'gpu-chat.yaml'))").split()
    for p in (trace, deployment):
        assert Path(p).is_relative_to(installed.site_packages), p
    out = installed.run(installed.bin("inventiv"), "simulate", "--trace", trace,
                        "--deployment", deployment, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result["requests"] > 0 and result["served"] > 0, result
    assert float(result["cost_eur"]) > 0, result
