"""Catalog sync from the fake Scaleway API (real SDK over HTTP) into a real database (both
backends): new types, price changes as new effective-from rows, availability, dry run, CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from cli.catalog import app as catalog_cli
from control_api import bootstrap
from control_api.catalog_sync import run_sync
from control_api.settings import Settings
from core.models import (
    ActionLog,
    Availability,
    InstanceType,
    InstanceTypePrice,
    ZoneAvailability,
)
from tests.cluster.conftest import ScwEnv
from tests.control_api.reconcile.helpers import seed_catalog, snapshot

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def cat(db: sessionmaker[Session]) -> sessionmaker[Session]:
    seed_catalog(db)
    return db


def prices(db: sessionmaker[Session], name: str) -> list[tuple[datetime, Decimal]]:
    with db() as s:
        return [(p.effective_from, p.hourly_eur) for p in s.scalars(
            select(InstanceTypePrice).join(InstanceType).where(InstanceType.name == name)
            .order_by(InstanceTypePrice.effective_from))]


def availability(db: sessionmaker[Session], name: str) -> dict[str, str]:
    with db() as s:
        return {a.zone_code: a.availability.value for a in s.scalars(
            select(ZoneAvailability).join(InstanceType).where(InstanceType.name == name))}


def test_first_sync_adds_types_and_keeps_unchanged_prices(cat: sessionmaker[Session],
                                                          scw: ScwEnv) -> None:
    scw.admin("availability", {"zone": "pl-waw-2", "instance_type": "L4-1-24G",
                               "availability": "scarce"})
    report = run_sync(cat, "scaleway", scw.cloud().catalog(), now=T0)

    # The seed's L4 price (0.75) is the live one: no new row; DEV1-S is new.
    assert prices(cat, "L4-1-24G") == [(bootstrap.SEED_EFFECTIVE_FROM, Decimal("0.75"))]
    assert "DEV1-S" in report.types_created and "L4-1-24G" not in report.types_created
    assert prices(cat, "DEV1-S") == [(T0, Decimal("0.0088"))]
    assert availability(cat, "L4-1-24G") == {"fr-par-2": "available", "pl-waw-2": "scarce"}
    with cat() as s:
        l4 = s.scalars(select(InstanceType).where(InstanceType.name == "L4-1-24G")).one()
        assert (l4.gpu_count, l4.gpu_model, l4.gpu_vram_gb) == (1, "L4", 24)
        h100 = s.scalars(select(InstanceType).where(InstanceType.name == "DEV1-S")).one()
        assert h100.gpu_count == 0 and h100.ray_resources is None
        assert s.scalars(select(ActionLog).where(ActionLog.type == "catalog.sync")).one()
    assert [p.instance_type for p in report.prices_changed if p.old_hourly_eur] == []

    # A second sync with nothing new changes nothing.
    again = run_sync(cat, "scaleway", scw.cloud().catalog(), now=T0 + timedelta(hours=1))
    assert not again.changed and again.prices_changed == []
    assert len(prices(cat, "DEV1-S")) == 1


def test_price_change_adds_an_effective_from_row_and_keeps_old_ones(
        cat: sessionmaker[Session], scw: ScwEnv) -> None:
    run_sync(cat, "scaleway", scw.cloud().catalog(), now=T0)
    product = scw.state.products["L4-1-24G"]
    old_price = product.hourly_price
    product.hourly_price = 0.81
    try:
        t1 = T0 + timedelta(days=3)
        report = run_sync(cat, "scaleway", scw.cloud().catalog(), now=t1)
    finally:
        product.hourly_price = old_price
    assert [(p.instance_type, Decimal(p.old_hourly_eur or "0"), Decimal(p.new_hourly_eur))
            for p in report.prices_changed] == [("L4-1-24G", Decimal("0.75"), Decimal("0.81"))]
    assert prices(cat, "L4-1-24G") == [(bootstrap.SEED_EFFECTIVE_FROM, Decimal("0.75")),
                                       (t1, Decimal("0.81"))]


def test_availability_changes_and_dry_run_writes_nothing(cat: sessionmaker[Session],
                                                         scw: ScwEnv) -> None:
    run_sync(cat, "scaleway", scw.cloud().catalog(), now=T0)
    scw.admin("availability", {"zone": "fr-par-2", "instance_type": "H100-1-80G",
                               "availability": "shortage"})
    scw.state.products["DEV1-S"].hourly_price = 0.01
    try:
        before = snapshot(cat), prices(cat, "DEV1-S"), availability(cat, "H100-1-80G")
        dry = run_sync(cat, "scaleway", scw.cloud().catalog(), now=T0 + timedelta(days=1),
                       dry_run=True)
        assert (snapshot(cat), prices(cat, "DEV1-S"),
                availability(cat, "H100-1-80G")) == before
        assert dry.dry_run and [p.instance_type for p in dry.prices_changed] == ["DEV1-S"]
        assert [(a.instance_type, a.zone, a.old, a.new) for a in dry.availability_changed] == [
            ("H100-1-80G", "fr-par-2", "available", "shortage")]

        real = run_sync(cat, "scaleway", scw.cloud().catalog(), now=T0 + timedelta(days=1))
        assert real.to_dict()["changed"] is True
        assert availability(cat, "H100-1-80G")["fr-par-2"] == Availability.SHORTAGE.value
        assert len(prices(cat, "DEV1-S")) == 2
    finally:
        scw.state.products["DEV1-S"].hourly_price = 0.0088


def test_cli_catalog_sync_against_the_fake(cat: sessionmaker[Session], scw: ScwEnv,
                                           settings: Settings) -> None:
    env = {**scw.fake.env(), "INVENTIV_DATABASE_URL": settings.database_url,
           "INVENTIV_DATA_DIR": str(settings.data_dir)}
    runner = CliRunner()
    dry = runner.invoke(catalog_cli, ["sync", "--cloud", "scaleway", "--dry-run", "--json"],
                        env=env)
    assert dry.exit_code == 0, (dry.stdout, dry.stderr)
    body = json.loads(dry.stdout)
    assert body["dry_run"] is True and "DEV1-S" in body["types_created"]
    assert prices(cat, "DEV1-S") == []

    result = runner.invoke(catalog_cli, ["sync", "--cloud", "scaleway", "--zone", "fr-par-2",
                                         "--gpu-only"], env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "offers from scaleway in fr-par-2" in result.stdout
    assert prices(cat, "DEV1-S") == []  # --gpu-only
    assert availability(cat, "L40S-1-48G")["fr-par-2"] == "available"

    bad = runner.invoke(catalog_cli, ["sync", "--cloud", "aws"], env=env)
    assert bad.exit_code == 1 and "unsupported_cloud" in bad.stderr
    # A non-retryable cloud error is one line on stderr (retryable ones back off in real time).
    scw.arm("list_servers_types", "denied_authentication", count=-1)
    down = runner.invoke(catalog_cli, ["sync", "--zone", "fr-par-2"], env=env)
    assert down.exit_code == 1 and "error: auth" in down.stderr
