"""The `inventiv` command line: every sub-command calls into the packages, mostly through the
control API client (`control_api.client.api`)."""

from __future__ import annotations

from importlib import metadata
from typing import Annotated

import typer

from cli import (
    api,
    auth,
    catalog,
    cluster,
    costs,
    db,
    deploy,
    instances,
    keys,
    logs,
    models,
    orgs,
    reconcile,
    secrets,
    simulate,
    up,
    users,
)

app = typer.Typer(
    name="inventiv",
    help="Inventiv Agents: LLM inference on Ray, with keys, metering and FinOps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # errors are one line; a traceback means a bug
)

DISTRIBUTION = "inventiv-agents"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"{DISTRIBUTION} {metadata.version(DISTRIBUTION)}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version,
        help="Print the installed version and exit.")] = False,
) -> None:
    # No docstring: the help text is the Typer's; this callback only carries global options.
    del version


app.add_typer(api.app, name="api")
app.add_typer(db.app, name="db")
app.command("login")(auth.login)
app.command("logout")(auth.logout)
app.command("whoami")(auth.whoami)
app.add_typer(users.app, name="users")
app.add_typer(orgs.app, name="orgs")
app.add_typer(keys.app, name="keys")
app.add_typer(secrets.app, name="secrets")
app.add_typer(instances.app, name="instances")
app.command("logs")(logs.logs)
app.add_typer(costs.app, name="costs")
app.add_typer(cluster.app, name="cluster")
app.add_typer(catalog.app, name="catalog")
app.add_typer(reconcile.app, name="reconcile")
app.add_typer(models.app, name="models")
app.command("deploy")(deploy.deploy)
app.add_typer(deploy.app, name="deployments")
app.command("up")(up.up)
app.command("down")(up.down)
app.command("status")(up.status)
app.command("simulate")(simulate.simulate)

if __name__ == "__main__":  # pragma: no cover
    app()
