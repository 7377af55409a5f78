"""Fixtures for the control API tests that drive a cloud: the fake Scaleway API of the cluster
tests (imported, not copied)."""

from tests.cluster.conftest import fake_server, scw

__all__ = ["fake_server", "scw"]
