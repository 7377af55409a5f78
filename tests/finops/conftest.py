"""FinOps tests reuse the live-server CLI fixtures of tests/cli (real HTTP, both backends)."""

from tests.cli.conftest import admin_cli, cli, live_server, make_cli  # noqa: F401
