"""Run the control API with uvicorn (``inventiv api serve``), laptop default included.

When no admin password is configured (``INVENTIV_ADMIN_PASSWORD`` or ``_FILE``) and the database
has no user yet, a password is generated, kept in ``<data_dir>/admin_password`` (mode 0600) and
handed to the bootstrap; it is printed once on the console, and later starts print where it is.
It never goes through ``logging``.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from pydantic import SecretStr
from sqlalchemy import inspect, select

from control_api.app import create_app
from control_api.ports import DataPlane
from control_api.settings import Settings, get_settings
from core.db import make_engine
from core.models import User

ADMIN_PASSWORD_FILE = "admin_password"  # noqa: S105 (a file name)


@dataclass(frozen=True)
class AdminLogin:
    """How to log in as the bootstrap admin, for the start-up banner."""

    username: str
    # "generated" (new now: printed once), "file" (fresh database, password reused from the
    # file), "existing" (users exist already), "configured" (from the environment).
    source: str
    password_file: Path | None = None
    password: str | None = None

    def __repr__(self) -> str:  # the password must not end up in a traceback
        return f"AdminLogin(username={self.username!r}, source={self.source!r})"


def _database_has_users(settings: Settings) -> bool:
    engine = make_engine(settings.resolved_database_url())
    try:
        if not inspect(engine).has_table(User.__tablename__):
            return False
        with engine.connect() as conn:
            return conn.execute(select(User.id).limit(1)).first() is not None
    finally:
        engine.dispose()


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL and mode 0600 at creation: never readable by others, never overwritten.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def prepare_admin(settings: Settings) -> tuple[Settings, AdminLogin]:
    """Settings whose bootstrap admin password is known, and how to tell the user about it."""
    username = settings.admin_username
    if settings.admin_password is not None:
        return settings, AdminLogin(username, "configured")
    path = settings.data_dir / ADMIN_PASSWORD_FILE
    if _database_has_users(settings):
        return settings, AdminLogin(username, "existing", path if path.exists() else None)
    if path.exists():
        # A fresh database next to a kept password (the database file was deleted): reuse it,
        # so the file stays the truth.
        password = path.read_text().strip()
        source = "file"
    else:
        password = secrets.token_urlsafe(18)
        _write_secret(path, password)
        source = "generated"
    updated = settings.model_copy(update={"admin_password": SecretStr(password)})
    return updated, AdminLogin(username, source, path,
                               password if source == "generated" else None)


def display_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 (display only)
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def banner(url: str, admin: AdminLogin) -> str:
    """What ``inventiv api serve`` prints before it starts serving."""
    lines = [
        f"Inventiv Agents control API on {url}",
        f"  API docs:  {url}/api/docs",
        f"  Log in:    inventiv login --url {url} --username {admin.username}",
    ]
    if admin.source == "generated":
        lines.append(f"  Password:  {admin.password}")
        lines.append(f"             (generated now, shown once; also kept in {admin.password_file},"
                     " mode 0600)")
    elif admin.source == "file" or (admin.source == "existing" and admin.password_file):
        lines.append(f"  Password:  in {admin.password_file} (the initial one; if you changed it,"
                     " use yours)")
    elif admin.source == "configured":
        lines.append("  Password:  the one in INVENTIV_ADMIN_PASSWORD (or _FILE)")
    else:
        lines.append("  Password:  the one set for this database (not kept in the data dir)")
    return "\n".join(lines)


def build_server(host: str, port: int, settings: Settings | None = None,
                 *, log_level: str = "info",
                 plane: DataPlane | None = None) -> tuple[uvicorn.Server, AdminLogin]:
    """A uvicorn server on the app built by the factory, and the admin login to announce.

    ``plane``: the data plane's adapters, from the composition root (:mod:`cli.compose`)."""
    settings, admin = prepare_admin(settings or get_settings())
    app = create_app(settings, plane=plane)
    # X-Forwarded-For is believed only from INVENTIV_TRUSTED_PROXIES (uvicorn's default trusts
    # 127.0.0.1, which lets any local client pick its address and dodge the login limits).
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, server_header=False,
                            **settings.uvicorn_proxy_options())
    return uvicorn.Server(config), admin


def serve(host: str = "127.0.0.1", port: int = 8080, settings: Settings | None = None,
          *, plane: DataPlane | None = None) -> None:
    """Serve the control API until interrupted, after printing the URL and how to log in."""
    server, admin = build_server(host, port, settings, plane=plane)
    print(banner(display_url(host, port), admin), flush=True)
    server.run()
