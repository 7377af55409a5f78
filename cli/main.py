"""The `inventiv` command line: every sub-command calls into the packages, mostly through the
control API client (`control_api.client.api`)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli import api, auth, cluster, costs, db, instances, keys, logs, orgs, users
from cli.config import make_client
from cli.output import JsonOpt, handles_errors, print_json, print_table

app = typer.Typer(
    name="inventiv",
    help="Inventiv Agents: LLM inference on Ray, with keys, metering and FinOps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # errors are one line; a traceback means a bug
)

app.add_typer(api.app, name="api")
app.add_typer(db.app, name="db")
app.command("login")(auth.login)
app.command("logout")(auth.logout)
app.command("whoami")(auth.whoami)
app.add_typer(users.app, name="users")
app.add_typer(orgs.app, name="orgs")
app.add_typer(keys.app, name="keys")
app.add_typer(instances.app, name="instances")
app.command("logs")(logs.logs)
app.add_typer(costs.app, name="costs")
app.add_typer(cluster.app, name="cluster")

# The read side of the catalog. (When `catalog sync` lands, these move to their own module.)
catalog_app = typer.Typer(help="The GPU catalog: providers, zones, instance types and prices.",
                          no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("types")
@handles_errors
def catalog_types(
    provider: Annotated[str | None, typer.Option("--provider", help="e.g. scaleway, local.")]
    = None,
    zone: Annotated[str | None, typer.Option("--zone", help="e.g. fr-par-2.")] = None,
    gpu_model: Annotated[str | None, typer.Option("--gpu-model", help="e.g. L4, H100.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Instance types with their GPUs, current hourly EUR price and zones."""
    with make_client() as client:
        types = client.list_instance_types(provider=provider, zone=zone, gpu_model=gpu_model)
    if json_out:
        print_json({"items": types})
        return
    print_table("Instance types",
                ["provider", "name", "GPUs", "GPU", "VRAM GB", "vCPU", "RAM GB", "EUR/h",
                 "zones"],
                [(t.provider, t.name, t.gpu_count, t.gpu_model, t.gpu_vram_gb, t.vcpus, t.ram_gb,
                  t.hourly_eur, [z.zone for z in t.zones]) for t in types],
                empty="no instance type")


@catalog_app.command("providers")
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


@catalog_app.command("zones")
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


if __name__ == "__main__":  # pragma: no cover
    app()
