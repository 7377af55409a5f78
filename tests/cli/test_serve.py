"""`inventiv api serve`: the laptop default's generated admin password, kept in the data dir."""

from __future__ import annotations

import os
import queue
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import cast

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from control_api.client.api import ControlApiClient, ControlApiError
from control_api.serve import ADMIN_PASSWORD_FILE, banner, build_server, display_url
from control_api.settings import Settings
from tests.cli.conftest import ASGIApp, ServerThread, closed_port_url
from tests.conftest import ADMIN_PASSWORD


def _app(server: uvicorn.Server) -> ASGIApp:
    return cast(ASGIApp, server.config.app)


def _laptop(settings: Settings) -> Settings:
    # The laptop default: no admin password configured.
    return settings.model_copy(update={"admin_password": None})


def test_first_start_generates_a_0600_password_and_later_starts_keep_it(
        db: sessionmaker[Session], settings: Settings) -> None:
    laptop = _laptop(settings)
    server, admin = build_server("127.0.0.1", 0, laptop, log_level="warning")
    path = laptop.data_dir / ADMIN_PASSWORD_FILE
    assert admin.source == "generated" and admin.password_file == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    password = path.read_text().strip()
    assert admin.password == password and len(password) >= 20
    assert password not in repr(admin)
    first_banner = banner("http://127.0.0.1:8080", admin)
    assert password in first_banner and str(path) in first_banner
    assert "http://127.0.0.1:8080/api/docs" in first_banner and "--username admin" in first_banner

    with ServerThread(_app(server)) as running, ControlApiClient(running.url) as client:
        assert client.login("admin", password).user.username == "admin"
        with pytest.raises(ControlApiError), ControlApiClient(running.url) as other:
            other.login("admin", ADMIN_PASSWORD)  # the test default is not in use here

    before = (path.read_text(), path.stat().st_mtime_ns)
    again, admin2 = build_server("127.0.0.1", 0, laptop, log_level="warning")
    assert admin2.source == "existing" and admin2.password is None
    assert (path.read_text(), path.stat().st_mtime_ns) == before
    second_banner = banner("http://127.0.0.1:8080", admin2)
    assert str(path) in second_banner and password not in second_banner
    with ServerThread(_app(again)) as running, ControlApiClient(running.url) as client:
        assert client.login("admin", password).user.username == "admin"


def test_a_fresh_database_reuses_the_kept_password(db: sessionmaker[Session],
                                                   settings: Settings) -> None:
    laptop = _laptop(settings)
    path = laptop.data_dir / ADMIN_PASSWORD_FILE
    path.write_text("kept-password-from-before\n")
    os.chmod(path, 0o600)
    server, admin = build_server("127.0.0.1", 0, laptop, log_level="warning")
    assert admin.source == "file" and admin.password is None
    assert "kept-password-from-before" not in banner("http://x", admin)
    with ServerThread(_app(server)) as running, ControlApiClient(running.url) as client:
        assert client.login("admin", "kept-password-from-before").user.username == "admin"
    assert path.read_text() == "kept-password-from-before\n"


def test_a_configured_password_writes_no_file(db: sessionmaker[Session],
                                              settings: Settings) -> None:
    configured = settings.model_copy(update={"admin_password": SecretStr("configured-pass-1")})
    server, admin = build_server("127.0.0.1", 0, configured, log_level="warning")
    assert admin.source == "configured" and admin.password_file is None
    assert not (configured.data_dir / ADMIN_PASSWORD_FILE).exists()
    assert "configured-pass-1" not in banner("http://x", admin)
    with ServerThread(_app(server)) as running, ControlApiClient(running.url) as client:
        assert client.login("admin", "configured-pass-1").user.username == "admin"


def test_display_url() -> None:
    assert display_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"  # noqa: S104
    assert display_url("::1", 80) == "http://[::1]:80"
    assert display_url("10.0.0.5", 9000) == "http://10.0.0.5:9000"


# ---------------------------------------------------------------- the real console script


class Process:
    """`inventiv api serve` in a subprocess, its stdout read line by line in a thread."""

    def __init__(self, data_dir: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INVENTIV_")}
        env.update(INVENTIV_DATA_DIR=str(data_dir), INVENTIV_COOKIE_SECURE="false",
                   PYTHONUNBUFFERED="1")
        script = Path(sys.executable).with_name("inventiv")
        self.proc = subprocess.Popen(
            [str(script), "api", "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.url = f"http://127.0.0.1:{port}"
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def read_until(self, needle: str, timeout: float = 60) -> str:
        seen = ""
        deadline = time.monotonic() + timeout
        while needle not in seen:
            try:
                seen += self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError(f"{needle!r} not printed; got:\n{seen}") from None
        return seen

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, "the server exited"
            time.sleep(0.05)
        raise AssertionError("the server did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def test_inventiv_api_serve_prints_the_password_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = int(closed_port_url().rsplit(":", 1)[1])
    first = Process(data_dir, port)
    try:
        out = first.read_until("Password:")
        out += first.read_until("\n")
        first.wait_ready()
        password = re.search(r"Password:\s+(\S+)", out).group(1)  # type: ignore[union-attr]
        assert (data_dir / ADMIN_PASSWORD_FILE).read_text().strip() == password
        assert f"http://127.0.0.1:{port}/api/docs" in out
        with ControlApiClient(first.url) as client:
            assert client.login("admin", password).user.is_platform_admin
    finally:
        first.stop()
    log = "".join(iter_queue(first.lines))
    assert password not in log  # printed once, in the banner only

    second = Process(data_dir, port)
    try:
        out = second.read_until("Password:")
        out += second.read_until("\n")
        second.wait_ready()
        assert password not in out
        assert f"in {data_dir / ADMIN_PASSWORD_FILE}" in out
        with ControlApiClient(second.url) as client:
            assert client.login("admin", password).user.username == "admin"
    finally:
        second.stop()


def iter_queue(q: queue.Queue[str]) -> list[str]:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out
