"""`inventiv costs …` against the real control API over HTTP (Postgres and SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from control_api.background import finops_refresh
from tests.cli.conftest import Cli, LiveServer
from tests.finops.helpers import Seed

NOW = datetime(2025, 3, 11, 12, 0, tzinfo=UTC)


def _seed(server: LiveServer) -> None:
    server.app.state.finops_clock = lambda: NOW
    with server.app.state.sessionmaker() as s, s.begin():
        seed = Seed(s)
        dep = seed.deployment("llama")
        inst = seed.instance("local", "local-L4", zone="local-1", deployment_id=dep)
        seed.interval(inst, NOW - timedelta(hours=5, minutes=30), None)
        org = seed.org("acme")
        seed.usage(NOW - timedelta(hours=1), (600, 400), deployment="llama", org_id=org,
                   api_key_id=seed.api_key(org))
        finops_refresh(s, NOW)  # the background job's part (reads never write)


def test_costs_commands_print_real_figures(admin_cli: Cli, live_server: LiveServer) -> None:
    _seed(live_server)
    s = admin_cli.json("costs", "summary")
    assert Decimal(s["burn_rate_eur_per_hour"]) == Decimal("0.75")
    assert Decimal(s["windows"]["day"]) == Decimal("4.125")  # 5.5 h x 0.75
    out = admin_cli.ok("costs", "show", "--window", "day", "--by", "instance_type").stdout
    # Half-even rounding to the cent, everywhere: 4.125 -> 4.12.
    assert "local-L4" in out and "4.12 €" in out
    out = admin_cli.ok("costs", "series", "--window", "day", "--bucket", "hour").stdout
    assert "█" in out and "total: 4.12 €" in out
    cb = admin_cli.json("costs", "chargeback", "--window", "day")
    assert cb["by_org"] == [{"org_id": cb["by_org"][0]["org_id"], "org": "acme",
                             "cost_eur": "4.12"}]
    u = admin_cli.json("costs", "unit", "--window", "day")
    assert Decimal(u["items"][0]["eur_per_million_tokens"]) == Decimal("4125")
    out = admin_cli.ok("costs", "forecast").stdout
    assert "month-end projection" in out


def test_budgets_commands_and_clean_errors(admin_cli: Cli, live_server: LiveServer) -> None:
    _seed(live_server)
    with live_server.app.state.sessionmaker() as s:
        from core.models import Deployment

        dep_id = s.query(Deployment.id).filter(Deployment.name == "llama").scalar()
    b = admin_cli.json("costs", "budgets", "set", "deployment", str(dep_id), "5")
    assert (b["state"], b["spent_eur"]) == ("warning", "4.120000")
    assert "warning" in admin_cli.ok("costs", "budgets", "list").stdout
    bad = admin_cli("costs", "show", "--window", "fortnight")
    assert bad.exit_code == 1 and "error: validation_error: unknown window" in bad.stderr
    admin_cli.ok("costs", "budgets", "delete", b["id"])
    assert admin_cli.json("costs", "budgets", "list") == []
