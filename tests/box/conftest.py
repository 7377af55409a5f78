"""The booting fake for the box tests: one per module, torn down even when a test fails."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from scaleway_core.client import Client

from cluster.clouds.scaleway import ScalewayCloud, ScalewayConfig
from cluster.fake_scaleway import FAKE_ACCESS_KEY, FAKE_PROJECT_ID, FAKE_SECRET_KEY
from cluster.fake_scaleway.booting import BootingFake, seed_box_network, serve_booting
from cluster.fake_scaleway.box import BoxUnavailable, require_box_tools


def _box_or_skip() -> None:
    try:
        require_box_tools()
    except BoxUnavailable as exc:  # CI runs as root with iproute2 + nftables
        if os.environ.get("INVENTIV_REQUIRE_BOX") == "1":  # set by .ci/run: never skipped
            pytest.fail(f"the box tests must run here: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def booting() -> Iterator[BootingFake]:
    _box_or_skip()
    fake = serve_booting()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def box(booting: BootingFake) -> Iterator[BootingFake]:
    yield booting
    booting.state.reset()  # halts every VM of the test
    seed_box_network(booting.state)


def adapter(fake: BootingFake) -> ScalewayCloud:
    client = Client(access_key=FAKE_ACCESS_KEY, secret_key=FAKE_SECRET_KEY, api_url=fake.url,
                    default_project_id=FAKE_PROJECT_ID, default_zone="fr-par-2",
                    default_region="fr-par")
    return ScalewayCloud(ScalewayConfig(zones=("fr-par-2",), poll_interval_s=0.05,
                                        boot_timeout_s=30, connect_timeout_s=2,
                                        read_timeout_s=10), client=client)
