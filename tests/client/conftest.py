"""A real control API served by uvicorn on 127.0.0.1, and a fault-injecting proxy in front."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from control_api.app import create_app
from control_api.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """The control API app served by uvicorn in a background thread (real sockets)."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.port = port
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning",
                                lifespan="on", access_log=False, timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{port}",
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@dataclass
class Servers:
    """Starts control API servers for a test (on a chosen port) and stops them afterwards."""

    settings: Settings
    running: list[ServerThread] = field(default_factory=list)

    def start(self, port: int | None = None) -> ServerThread:
        server = ServerThread(self.settings, port or free_port()).start()
        self.running.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.running:
            server.stop()
        self.running.clear()


@pytest.fixture
def servers(db: sessionmaker[Session], settings: Settings) -> Iterator[Servers]:
    """Start/stop real control API servers on an emptied database (both backends)."""
    s = Servers(settings)
    yield s
    s.stop_all()


@pytest.fixture
def live_server(servers: Servers) -> ServerThread:
    return servers.start()


class FaultyProxy:
    """An HTTP proxy in front of the control API that misbehaves on cue.

    ``plan`` lists what to do with each request, in order; once empty it forwards. Actions:
    ``forward``; ``503``/``429``/``400`` (answer that status without forwarding); ``drop``
    (forward, let the server apply it, then close the connection without an answer: the
    response is lost); ``hang`` (never answer until the proxy stops).
    """

    def __init__(self, upstream: str, plan: list[str], retry_after: str | None = None) -> None:
        self.upstream = upstream
        self.plan: deque[str] = deque(plan)
        self.retry_after = retry_after
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                action = proxy.next_action(self.path)
                if action in ("503", "429", "400"):
                    payload = json.dumps({"error": {"code": f"injected_{action}",
                                                    "message": "injected by the test proxy"}})
                    self.send_response(int(action))
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    if action == "429" and proxy.retry_after is not None:
                        self.send_header("retry-after", proxy.retry_after)
                    self.end_headers()
                    self.wfile.write(payload.encode())
                    return
                if action == "hang":
                    proxy._release.wait(30)
                    self.close_connection = True
                    return
                upstream = httpx.post(
                    proxy.upstream + self.path, content=body, timeout=30,
                    headers={k: v for k, v in self.headers.items()
                             if k.lower() in ("authorization", "content-type")})
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(upstream.status_code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def next_action(self, path: str) -> str:
        with self._lock:
            action = self.plan.popleft() if self.plan else "forward"
            self.seen.append((path, action))
            return action

    def stop(self) -> None:
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def faulty_proxy() -> Iterator[Callable[..., FaultyProxy]]:
    made: list[FaultyProxy] = []

    def make(upstream: str, plan: list[str], retry_after: str | None = None) -> FaultyProxy:
        p = FaultyProxy(upstream, plan, retry_after)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()
