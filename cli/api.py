"""`inventiv api …`: run the control API."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="Run the control API.", no_args_is_help=True)


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(envvar="INVENTIV_HOST",
                                      help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="INVENTIV_PORT", min=1, max=65535,
                                      help="TCP port.")] = 8080,
) -> None:
    """Serve the control API (migrates the database and bootstraps the admin on start)."""
    # Imported late: keeps `inventiv --help` fast.
    from cli.compose import data_plane
    from control_api.serve import serve as run

    run(host=host, port=port, plane=data_plane())
