"""A fake of the Scaleway Instance/Block/IPAM API paths our adapter uses, over real HTTP.

``serve_in_thread()`` starts it on 127.0.0.1 (uvicorn in a daemon thread) and returns a handle
with the URL to put in ``SCW_API_URL``; ``python -m cluster.fake_scaleway --port 8089`` runs it
standalone (real-time clock) for ``inventiv up --cloud fake-scaleway``.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import uvicorn

from cluster.fake_scaleway.app import create_app
from cluster.fake_scaleway.faults import Fault, FaultBook
from cluster.fake_scaleway.state import FakeClock, FakeConfig, FakeState

# Credentials the SDK accepts (format-checked) and the fake accepts by default.
FAKE_ACCESS_KEY = "SCWFAKEFAKEFAKEFAKE1"
FAKE_SECRET_KEY = "11111111-2222-4333-8444-555555555555"  # noqa: S105 (fake only)
FAKE_PROJECT_ID = "00000000-0000-4000-8000-000000000000"


@dataclass
class FakeScaleway:
    """A running fake: its URL, its state (inspect or drive it directly) and how to stop it."""

    url: str
    state: FakeState
    server: uvicorn.Server
    thread: threading.Thread

    def env(self) -> dict[str, str]:
        """``SCW_*`` variables that point the SDK at this fake."""
        return {"SCW_API_URL": self.url, "SCW_ACCESS_KEY": FAKE_ACCESS_KEY,
                "SCW_SECRET_KEY": FAKE_SECRET_KEY, "SCW_DEFAULT_PROJECT_ID": FAKE_PROJECT_ID,
                "SCW_DEFAULT_ZONE": "fr-par-2", "SCW_DEFAULT_REGION": "fr-par"}

    def stop(self, timeout: float = 5.0) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def serve_in_thread(state: FakeState | None = None, *, host: str = "127.0.0.1",
                    port: int = 0, startup_timeout: float = 10.0,
                    extra_sockets: list[socket.socket] | None = None) -> FakeScaleway:
    """Serve the fake on ``host:port`` (0 = a free port) in a daemon thread; wait until ready.
    ``extra_sockets``: more listening sockets to serve too (e.g. one bound in a namespace)."""
    state = state or FakeState()
    port = port or _free_port(host)
    config = uvicorn.Config(create_app(state), host=host, port=port, log_level="warning",
                            access_log=False, lifespan="off", loop="asyncio", http="h11")
    server = uvicorn.Server(config)
    sockets = None
    if extra_sockets:
        main_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        main_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        main_sock.bind((host, port))
        main_sock.listen(128)
        sockets = [main_sock, *extra_sockets]
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets},
                              name=f"fake-scaleway-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"fake Scaleway did not start on {host}:{port}")
        time.sleep(0.01)
    return FakeScaleway(url=f"http://{host}:{port}", state=state, server=server, thread=thread)


__all__ = [
    "FAKE_ACCESS_KEY", "FAKE_PROJECT_ID", "FAKE_SECRET_KEY", "FakeClock", "FakeConfig",
    "FakeScaleway", "FakeState", "Fault", "FaultBook", "create_app", "serve_in_thread",
]
