"""Fast parts of `inventiv up` / `inventiv down` (cli/laptop.py); the whole laptop cluster runs
in tests/e2e/test_laptop.py."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import configs
from cli import laptop as lp
from cli.config import load_credentials
from cli.main import app as cli_app
from control_api.client.api import ControlApiClient
from tests.cli.conftest import LiveServer
from tests.conftest import ADMIN_PASSWORD


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_check_ports_names_the_taken_port_and_its_option(listening: int) -> None:
    free = free_port()
    lp.check_ports("127.0.0.1", {"api": free, "serve": free_port()})
    with pytest.raises(lp.LaptopError) as err:
        lp.check_ports("127.0.0.1", {"api": free, "dashboard": listening})
    assert err.value.code == "port_in_use"
    assert f"dashboard port {listening} (--dashboard-port)" in err.value.message
    assert "api port" not in err.value.message


def test_a_port_whose_server_just_stopped_is_free() -> None:
    """`down` then `up`: the old server's connections in TIME_WAIT must not block the port."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and Ray do
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the server side closes first: its end of the connection goes TIME_WAIT
    server.close()
    client.close()
    assert not lp.port_in_use("127.0.0.1", port)


def test_up_refuses_a_taken_port_in_one_line(listening: int, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_app, [
        "up", "--state-dir", str(tmp_path / "state"), "--api-port", str(listening),
        "--serve-port", str(free_port()), "--dashboard-port", str(free_port())],
        env={"INVENTIV_CONFIG_DIR": str(tmp_path / "cfg")})
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: port_in_use: already in use on 127.0.0.1: api port {listening} (--api-port); "
        "stop what uses it or choose another port")
    assert result.stdout == ""
    # Nothing was started, no secret written.
    assert not (tmp_path / "state" / lp.STATE_FILE).exists()
    assert not (tmp_path / "state" / lp.SERVICE_TOKEN_FILE).exists()


def _state(tmp_path: Path) -> lp.LaptopState:
    return lp.LaptopState(host="127.0.0.1", api_port=18080, serve_port=18000,
                          dashboard_port=18265, cluster_name="local")


def test_control_api_env_points_it_at_serve_with_our_secrets_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = lp.control_api_env(tmp_path, _state(tmp_path), base={
        "PATH": "/bin", "INVENTIV_SERVICE_TOKEN": "leaked", "RAY_AUTH_TOKEN": "leaked",
        "INVENTIV_COOKIE_SECURE": "true"})
    assert env["PATH"] == "/bin"
    assert "INVENTIV_SERVICE_TOKEN" not in env and "RAY_AUTH_TOKEN" not in env
    assert env["INVENTIV_COOKIE_SECURE"] == "true"  # the user's choice is kept
    assert env[lp.MARKER_ENV] == str(tmp_path)
    assert env["INVENTIV_DATA_DIR"] == str(tmp_path / "data")
    assert env["INVENTIV_SERVICE_TOKEN_FILE"] == str(tmp_path / "service_token")
    assert env["INVENTIV_SERVE_SERVICE_TOKEN_FILE"] == str(tmp_path / "service_token")
    assert env["INVENTIV_RAY_DASHBOARD_URL"] == "http://127.0.0.1:18265"
    assert env["INVENTIV_RAY_AUTH_TOKEN_FILE"] == str(tmp_path / "cluster" / "ray_token")
    assert (env["INVENTIV_SERVE_HTTP_HOST"], env["INVENTIV_SERVE_HTTP_PORT"]) == \
        ("127.0.0.1", "18000")
    assert env["INVENTIV_SERVE_CONTROL_API_URL"] == "http://127.0.0.1:18080"
    assert env["INVENTIV_SERVE_SPOOL_DIR"] == str(tmp_path / "serve-spool")
    # What the control API reads back: the Serve client's configuration.
    from control_api.serve_client import serve_config
    from control_api.settings import Settings

    lp.ensure_secret_file(tmp_path / "service_token")
    for name, value in env.items():
        if name.startswith("INVENTIV_"):
            monkeypatch.setenv(name, value)
    config = serve_config(Settings())
    assert config is not None and config.target.http_port == 18000
    assert config.target.ingress_options == {
        "control_api_url": "http://127.0.0.1:18080",
        "service_token_file": str(tmp_path / "service_token"),
        "spool_dir": str(tmp_path / "serve-spool")}


def test_effective_cluster_fills_in_ports_state_and_control_api(tmp_path: Path) -> None:
    cluster = lp.effective_cluster(lp.DEFAULT_CLUSTER_FILE, tmp_path, _state(tmp_path))
    assert cluster.head.dashboard_port == 18265 and cluster.head.include_dashboard
    assert cluster.state_dir == str(tmp_path / "cluster")
    assert cluster.control_api.url == "http://127.0.0.1:18080"
    assert cluster.control_api.service_token_file == str(tmp_path / "service_token")
    saved = yaml.safe_load((tmp_path / lp.CLUSTER_FILE).read_text())
    assert saved["head"]["dashboard_port"] == 18265


def test_effective_cluster_refuses_a_scaleway_file(tmp_path: Path) -> None:
    with pytest.raises(lp.LaptopError) as err:
        lp.effective_cluster(configs.path("clusters", "scaleway.yaml"), tmp_path,
                             _state(tmp_path))
    assert err.value.code == "invalid_cluster_file"


def test_secret_files_are_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "token"
    first = lp.ensure_secret_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) >= 32
    assert lp.ensure_secret_file(path) == first
    path.chmod(0o644)
    with pytest.raises(lp.LaptopError):
        lp.ensure_secret_file(path)


def test_down_stops_the_control_api_group_and_is_idempotent(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    assert lp.down(tmp_path / "missing") == lp.DownResult(state_dir=str(tmp_path / "missing"))
    # A stand-in for the control API with a child in its group, carrying the marker.
    env = {**os.environ, lp.MARKER_ENV: str(state)}
    proc = subprocess.Popen(["bash", "-c", "sleep 300 & sleep 300"], env=env,
                            start_new_session=True)
    try:
        st = _state(tmp_path)
        st.api_pid = proc.pid
        st.save(state)
        deadline = time.monotonic() + 5
        while len(lp.find_marked_processes(state)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(lp.find_marked_processes(state)) >= 2
        result = lp.down(state)
        assert result.control_api_stopped and not result.purged
        assert lp.find_marked_processes(state) == []
        assert proc.wait(5) is not None
        assert lp.LaptopState.load(state).api_pid is None  # type: ignore[union-attr]
        again = lp.down(state)
        assert not again.control_api_stopped and again.stray_processes_killed == 0
        assert lp.down(state, purge=True).purged and not state.exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)


@pytest.mark.parametrize("revoke", [False, True])
def test_api_key_is_reused_while_valid(live_server: LiveServer, tmp_path: Path,
                                       revoke: bool) -> None:
    with ControlApiClient(live_server.url) as client:
        client.login("admin", ADMIN_PASSWORD)
        key = lp.ensure_api_key(client, tmp_path, "default")
        path = tmp_path / lp.API_KEY_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        saved = json.loads(path.read_text())
        assert saved["key"] == key and saved["org"] == "default"
        if revoke:
            client.revoke_api_key(saved["id"])
        again = lp.ensure_api_key(client, tmp_path, "default")
        assert (again == key) is not revoke


def test_login_cli_writes_what_inventiv_login_writes(live_server: LiveServer, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVENTIV_CONFIG_DIR", str(tmp_path / "cfg"))
    with ControlApiClient(live_server.url) as client:
        lp.login_cli(client, live_server.url, ADMIN_PASSWORD)
    creds = load_credentials()
    assert creds is not None and creds.url == live_server.url and creds.username == "admin"
    result = CliRunner().invoke(cli_app, ["whoami", "--json"],
                                env={"INVENTIV_CONFIG_DIR": str(tmp_path / "cfg")})
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["username"] == "admin"


def test_status_of_nothing(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_app, ["status", "--state-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"state_dir": str(tmp_path.resolve()), "running": False}


def test_help_lists_up_down_status() -> None:
    out = subprocess.run([sys.executable, "-m", "cli.main", "--help"], capture_output=True,
                         text=True, check=True, env={**os.environ, "COLUMNS": "200"}).stdout
    for name in ("up", "down", "status"):
        assert f" {name} " in out
