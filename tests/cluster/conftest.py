"""Fixtures for the cluster tests: one fake Scaleway API over real HTTP for the session, reset
before every test, with a frozen clock that the adapter's injected ``sleep`` advances."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from scaleway_core.client import Client

from cluster.clouds.scaleway import ScalewayCloud, ScalewayConfig
from cluster.fake_scaleway import (
    FAKE_ACCESS_KEY,
    FAKE_PROJECT_ID,
    FAKE_SECRET_KEY,
    FakeClock,
    FakeConfig,
    FakeScaleway,
    FakeState,
    serve_in_thread,
)

# One local Ray head per test session, shared by every module that needs it.
from tests.cluster.ray_fixtures import local_ray_cluster  # noqa: E402,F401

ZONES = ("fr-par-2", "pl-waw-2")


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeScaleway]:
    fake = serve_in_thread(FakeState())
    yield fake
    fake.stop()


@dataclass
class ScwEnv:
    """The fake, its clock, and helpers to build adapters and drive the fake over HTTP."""

    fake: FakeScaleway
    clock: FakeClock
    sleeps: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.fake.url

    @property
    def state(self) -> FakeState:
        return self.fake.state

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)

    def client(self, api_url: str | None = None) -> Client:
        return Client(access_key=FAKE_ACCESS_KEY, secret_key=FAKE_SECRET_KEY,
                      api_url=api_url or self.url, default_project_id=FAKE_PROJECT_ID,
                      default_zone="fr-par-2", default_region="fr-par")

    def cloud(self, api_url: str | None = None, **overrides: Any) -> ScalewayCloud:
        settings: dict[str, Any] = {"zones": ZONES, "connect_timeout_s": 1.0,
                                    "read_timeout_s": 2.0, "poll_interval_s": 5.0,
                                    "boot_timeout_s": 600.0, "ambiguous_settle_s": 1.0,
                                    "max_attempts": 3}
        settings.update(overrides)
        return ScalewayCloud(ScalewayConfig(**settings), client=self.client(api_url),
                             clock=self.clock, sleep=self.sleep, jitter=lambda: 1.0)

    def arm(self, op: str, kind: str, **kw: Any) -> dict[str, Any]:
        resp = requests.post(f"{self.url}/_fake/faults", json={"op": op, "kind": kind, **kw},
                             timeout=5)
        assert resp.status_code == 201, resp.text
        return resp.json()

    def calls(self, op: str | None = None) -> list[dict[str, Any]]:
        params = {"op": op} if op else {}
        resp = requests.get(f"{self.url}/_fake/calls", params=params, timeout=5)
        resp.raise_for_status()
        return resp.json()["items"]

    def admin(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = requests.post(f"{self.url}/_fake/{path}", json=body, timeout=5)
        assert resp.status_code < 300, resp.text
        return resp.json() if resp.content else {}

    def servers(self) -> list[dict[str, Any]]:
        return requests.get(f"{self.url}/_fake/state", timeout=5).json()["servers"]

    def volumes(self) -> list[dict[str, Any]]:
        return requests.get(f"{self.url}/_fake/state", timeout=5).json()["volumes"]


@pytest.fixture
def scw(fake_server: FakeScaleway) -> ScwEnv:
    state = fake_server.state
    state.reset()
    clock = FakeClock()
    state.clock = clock
    state.config = FakeConfig()
    return ScwEnv(fake=fake_server, clock=clock)
