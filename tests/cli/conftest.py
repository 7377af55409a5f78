"""The real control API served by uvicorn on a free 127.0.0.1 port, and a CLI runner on it.

Built on the ``settings`` and ``db`` fixtures of tests/conftest.py, so every test here runs on
Postgres and on SQLite.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result

from cli.main import app as cli_app
from control_api.app import create_app
from control_api.settings import Settings
from tests.conftest import ADMIN_PASSWORD

ASGIApp = Callable[[dict[str, Any], Callable[..., Any], Callable[..., Any]], Any]


def session_commits_before_response() -> bool:
    """Whether the request's database session is committed before the response is sent.

    With FastAPI's default dependency scope ("request"), the code after ``yield`` in
    ``control_api.deps.get_db`` (the commit) runs *after* the response has been sent, so a fast
    client can be answered 200/201 and then not see its own write (a fresh login token refused
    as "session revoked", a logout not yet effective). ``Depends(get_db, scope="function")``
    commits before answering.
    """
    from control_api.deps import SessionDep

    return any(getattr(meta, "scope", None) == "function" for meta in get_args(SessionDep)[1:])


class CommitBeforeResponse:
    """Test-side stand-in for that fix: hold each response until the endpoint (and its
    dependencies' exit code) has finished. Applied only while the server lacks the fix."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any],
                       send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: list[dict[str, Any]] = []

        async def hold(message: dict[str, Any]) -> None:
            held.append(message)

        await self.app(scope, receive, hold)
        for message in held:
            await send(message)


@dataclass
class LiveServer:
    url: str
    app: FastAPI


class ServerThread:
    """A uvicorn server on a pre-bound socket (no port race), in a daemon thread."""

    def __init__(self, app: ASGIApp) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the control API did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


@pytest.fixture
def live_server(db: sessionmaker[Session], settings: Settings) -> Iterator[LiveServer]:
    """The control API (catalog seeded, admin bootstrapped) over real HTTP."""
    app = create_app(settings)
    asgi: ASGIApp = app if session_commits_before_response() else CommitBeforeResponse(app)
    with ServerThread(asgi) as server:
        yield LiveServer(server.url, app)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class Cli:
    """Runs `inventiv …` in-process with its own config dir, against ``url``."""

    def __init__(self, url: str, config_dir: Path) -> None:
        self.url = url
        self.config_dir = config_dir
        self.runner = CliRunner()

    def env(self, **extra: str | None) -> dict[str, str | None]:
        env: dict[str, str | None] = {
            "INVENTIV_CONFIG_DIR": str(self.config_dir), "INVENTIV_API_URL": self.url,
            "INVENTIV_TOKEN": None, "XDG_CONFIG_HOME": None, "COLUMNS": "250",
        }
        env.update(extra)
        return env

    def __call__(self, *args: str, input: str | None = None, **env: str | None) -> Result:
        return self.runner.invoke(cli_app, list(args), input=input, env=self.env(**env))

    def ok(self, *args: str, input: str | None = None, **env: str | None) -> Result:
        result = self(*args, input=input, **env)
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr,
                                       result.exception)
        return result

    def json(self, *args: str, **env: str | None) -> Any:
        import json

        return json.loads(self.ok(*args, "--json", **env).stdout)

    def login(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> Result:
        return self.ok("login", "--username", username, "--password", password)


@pytest.fixture
def make_cli(live_server: LiveServer, tmp_path: Path) -> Callable[[], Cli]:
    """A factory of CLIs on the live server, each with a fresh config dir (one per user)."""

    def make() -> Cli:
        directory = tmp_path / f"config-{uuid.uuid4().hex[:8]}"
        return Cli(live_server.url, directory)

    return make


@pytest.fixture
def cli(make_cli: Callable[[], Cli]) -> Cli:
    return make_cli()


@pytest.fixture
def admin_cli(cli: Cli) -> Cli:
    """A CLI logged in as the bootstrap admin."""
    cli.login()
    return cli
