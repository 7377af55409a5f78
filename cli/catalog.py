"""`inventiv catalog …`: the GPU catalog -- live sync from a cloud, and listing.

``sync`` talks to the cloud (credentials from the SDK's ``SCW_*`` environment or config file, so
``SCW_API_URL`` points it at a fake) and writes the configured database directly
(``INVENTIV_DATABASE_URL``, default SQLite in the data dir): it is an admin command run on the
control-API host, like ``inventiv db upgrade``. ``list`` reads through the control API.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.config import make_client
from cli.output import (
    JsonOpt,
    fail,
    fmt,
    handles_errors,
    info,
    print_json,
    print_table,
    warn,
)

app = typer.Typer(help="The GPU catalog: sync live types, prices and availability; list them.",
                  no_args_is_help=True)

CLOUDS = ("scaleway",)


@app.command("sync")
def sync(
    cloud: Annotated[str, typer.Option("--cloud", help="Cloud to read: scaleway.")] = "scaleway",
    zones: Annotated[list[str] | None, typer.Option(
        "--zone", help="Zone to read (repeatable; default: the zones the catalog knows for "
                       "this cloud).")] = None,
    gpu_only: Annotated[bool, typer.Option("--gpu-only", help="Only GPU types.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report, write nothing.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Store the cloud's live instance types, prices (a new price row only when it changed)
    and zone availability in the database."""
    if cloud not in CLOUDS:
        raise fail("unsupported_cloud", f"catalog sync supports {', '.join(CLOUDS)}, not {cloud}")
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from cluster.clouds.scaleway import ScalewayCloud, ScalewayConfig
    from control_api.catalog_sync import run_sync
    from control_api.settings import Settings
    from core.clouds import CloudError
    from core.db import make_engine, make_sessionmaker
    from core.models import Zone

    engine = make_engine(Settings().resolved_database_url())
    try:
        maker = make_sessionmaker(engine)
        if not zones:
            try:
                with maker() as s:
                    zones = list(s.scalars(select(Zone.code).where(
                        Zone.provider_code == cloud).order_by(Zone.code)))
            except SQLAlchemyError as exc:
                raise fail("database_error", _first_line(exc)) from None
        try:
            adapter = ScalewayCloud(ScalewayConfig(zones=tuple(zones or ("fr-par-2",))))
            offers = adapter.catalog()
        except CloudError as exc:
            raise fail(exc.code, str(exc)) from None
        try:
            report = run_sync(maker, cloud, offers, dry_run=dry_run, gpu_only=gpu_only)
        except SQLAlchemyError as exc:
            raise fail("database_error", _first_line(exc)) from None
    finally:
        engine.dispose()
    if json_out:
        print_json(report.to_dict())
        return
    for w in report.warnings:
        warn(w)
    print_table("Prices changed" + (" (dry run)" if dry_run else ""),
                ["type", "old EUR/h", "new EUR/h", "effective from"],
                [(p.instance_type, p.old_hourly_eur, p.new_hourly_eur, p.effective_from)
                 for p in report.prices_changed], empty="no price change")
    print_table("Availability changed", ["type", "zone", "old", "new"],
                [(a.instance_type, a.zone, a.old, a.new) for a in report.availability_changed],
                empty="no availability change")
    info(f"{report.offers} offers from {cloud} in {', '.join(zones or [])}: "
         f"{len(report.types_created)} new types, {len(report.types_updated)} updated, "
         f"{len(report.prices_changed)} price changes, {len(report.zones_created)} new zones"
         + (" (dry run: nothing written)" if dry_run else ""))


ProviderOpt = Annotated[str | None, typer.Option("--provider", help="e.g. scaleway, local.")]
ZoneOpt = Annotated[str | None, typer.Option("--zone", help="e.g. fr-par-2.")]
GpuModelOpt = Annotated[str | None, typer.Option("--gpu-model", help="e.g. L4, H100.")]


def _instance_types(provider: str | None, zone: str | None, gpu_model: str | None,
                    json_out: bool) -> list[Any] | None:
    """Fetch instance types; print them as JSON and return None when --json was asked."""
    with make_client() as client:
        types = client.list_instance_types(provider=provider, zone=zone, gpu_model=gpu_model)
    if json_out:
        print_json({"items": types})
        return None
    return list(types)


@app.command("list")
@handles_errors
def list_types(provider: ProviderOpt = None, zone: ZoneOpt = None, gpu_model: GpuModelOpt = None,
               json_out: JsonOpt = False) -> None:
    """Instance types with their current price and availability per zone (via the API)."""
    types = _instance_types(provider, zone, gpu_model, json_out)
    if types is None:
        return
    print_table("Instance types",
                ["provider", "name", "GPUs", "GPU", "VRAM GB", "EUR/h", "since", "zones"],
                [(t.provider, t.name, t.gpu_count, t.gpu_model, t.gpu_vram_gb, t.hourly_eur,
                  t.price_effective_from,
                  [f"{z.zone}:{fmt(z.availability)}" for z in t.zones]) for t in types],
                empty="no instance type")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# The read commands that lived on `inventiv catalog` in cli/main.py, so this app replaces it.


@app.command("types")
@handles_errors
def catalog_types(provider: ProviderOpt = None, zone: ZoneOpt = None,
                  gpu_model: GpuModelOpt = None, json_out: JsonOpt = False) -> None:
    """Instance types with their GPUs, current hourly EUR price and zones."""
    types = _instance_types(provider, zone, gpu_model, json_out)
    if types is None:
        return
    print_table("Instance types",
                ["provider", "name", "GPUs", "GPU", "VRAM GB", "vCPU", "RAM GB", "EUR/h",
                 "zones"],
                [(t.provider, t.name, t.gpu_count, t.gpu_model, t.gpu_vram_gb, t.vcpus, t.ram_gb,
                  t.hourly_eur, [z.zone for z in t.zones]) for t in types],
                empty="no instance type")


@app.command("providers")
@handles_errors
def catalog_providers(json_out: JsonOpt = False) -> None:
    """Cloud providers known to the catalog."""
    with make_client() as client:
        providers = client.list_providers()
    if json_out:
        print_json({"items": providers})
        return
    print_table("Providers", ["code", "name", "billing granularity s", "billing minimum s"],
                [(p.code, p.name, p.billing_granularity_seconds, p.billing_minimum_seconds)
                 for p in providers])


@app.command("zones")
@handles_errors
def catalog_zones(json_out: JsonOpt = False) -> None:
    """Zones known to the catalog."""
    with make_client() as client:
        zones = client.list_zones()
    if json_out:
        print_json({"items": zones})
        return
    print_table("Zones", ["zone", "region", "provider"],
                [(z.code, z.region, z.provider) for z in zones])
