"""`inventiv login`, `inventiv logout`, `inventiv whoami`."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from cli.config import (
    Credentials,
    credentials_path,
    delete_credentials,
    load_credentials,
    make_client,
    resolve_token,
    resolve_url,
    save_credentials,
)
from cli.output import (
    JsonOpt,
    handles_errors,
    info,
    print_fields,
    print_json,
    print_table,
    warn,
)
from control_api.client.api import ControlApiClient, ControlApiError, ControlApiUnreachable


@handles_errors
def login(
    username: Annotated[str, typer.Option("--username", "-u", prompt=True,
                                          help="Username or email.")],
    password: Annotated[str, typer.Option("--password", "-p", prompt=True, hide_input=True,
                                          help="Password (prompted, hidden, when omitted).")],
    url: Annotated[str | None, typer.Option(
        "--url", help="Control API URL (default: INVENTIV_API_URL, the stored URL, "
                      "or http://127.0.0.1:8080).")] = None,
) -> None:
    """Log in and store the session token (mode 0600) for the next commands."""
    base = resolve_url(url)
    with ControlApiClient(base) as client:
        result = client.login(username, password)
    path = save_credentials(Credentials(
        url=base, token=result.access_token, username=result.user.username,
        expires_at=result.expires_at.isoformat() if result.expires_at else None))
    until = f" until {result.expires_at:%Y-%m-%d %H:%M:%SZ}" if result.expires_at else ""
    info(f"Logged in to {base} as {result.user.username}{until}; token saved in {path}")
    if os.environ.get("INVENTIV_TOKEN"):
        warn("note: INVENTIV_TOKEN is set and takes precedence over the stored token")


def logout() -> None:
    """Revoke the session on the server (when reachable) and forget the stored token."""
    creds = load_credentials()
    if creds is None or not creds.token:
        info("Not logged in.")
        delete_credentials()
        return
    with ControlApiClient(creds.url, token=creds.token) as client:
        try:
            client.logout()
        except ControlApiUnreachable as exc:
            warn(f"warning: {exc.message}; the session was not revoked on the server")
        except ControlApiError as exc:
            if exc.status != 401:  # 401: the session had already ended
                warn(f"warning: {exc.code}: {exc.message}")
    delete_credentials()
    info(f"Logged out of {creds.url}; removed {credentials_path()}")


@handles_errors
def whoami(json_out: JsonOpt = False) -> None:
    """Show the logged-in user and their organisations."""
    if not resolve_token():
        raise ControlApiError(401, "not_logged_in", f"no token for {resolve_url()}")
    with make_client() as client:
        me = client.me()
    if json_out:
        print_json(me)
        return
    print_fields(f"{me.username} on {client.base_url}", [
        ("id", me.id), ("username", me.username), ("email", me.email),
        ("platform admin", me.is_platform_admin),
    ])
    print_table("Organisations", ["org", "org id", "role"],
                [(m.org_name, m.org_id, m.role) for m in me.memberships],
                empty="no organisation")
