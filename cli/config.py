"""Where the CLI keeps its credentials, and which URL and token a command uses.

``credentials.json`` (mode 0600) lives in ``$INVENTIV_CONFIG_DIR``, else
``$XDG_CONFIG_HOME/inventiv``, else ``~/.config/inventiv``. ``INVENTIV_API_URL`` and
``INVENTIV_TOKEN`` override what the file holds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_api.client.api import DEFAULT_URL, ControlApiClient

CREDENTIALS_FILE = "credentials.json"


def config_dir() -> Path:
    """The CLI's configuration directory (not created here)."""
    explicit = os.environ.get("INVENTIV_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "inventiv"


def credentials_path() -> Path:
    return config_dir() / CREDENTIALS_FILE


@dataclass(frozen=True)
class Credentials:
    url: str
    token: str | None = None
    username: str | None = None
    expires_at: str | None = None

    def __repr__(self) -> str:  # never show the token
        return f"Credentials(url={self.url!r}, username={self.username!r})"


def load_credentials() -> Credentials | None:
    """The stored credentials, or ``None`` when there are none (or the file is unreadable)."""
    path = credentials_path()
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        return None
    token = data.get("token")
    return Credentials(url=data["url"], token=token if isinstance(token, str) else None,
                       username=data.get("username"), expires_at=data.get("expires_at"))


def save_credentials(creds: Credentials) -> Path:
    """Write the credentials with mode 0600 (the directory 0700), replacing the file atomically."""
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / CREDENTIALS_FILE
    tmp = directory / f".{CREDENTIALS_FILE}.{os.getpid()}.tmp"
    payload = {"url": creds.url, "token": creds.token, "username": creds.username,
               "expires_at": creds.expires_at}
    # Created 0600 from the start: the token is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def delete_credentials() -> bool:
    """Remove the credentials file; ``True`` if there was one."""
    path = credentials_path()
    if path.exists():
        path.unlink()
        return True
    return False


def resolve_url(explicit: str | None = None) -> str:
    """``--url``, else ``INVENTIV_API_URL``, else the stored URL, else the laptop default."""
    if explicit:
        return explicit.rstrip("/")
    env = os.environ.get("INVENTIV_API_URL")
    if env:
        return env.rstrip("/")
    creds = load_credentials()
    return (creds.url if creds else DEFAULT_URL).rstrip("/")


def resolve_token() -> str | None:
    """``INVENTIV_TOKEN``, else the stored token."""
    env = os.environ.get("INVENTIV_TOKEN")
    if env:
        return env
    creds = load_credentials()
    return creds.token if creds else None


def make_client(url: str | None = None) -> ControlApiClient:
    """A client on the resolved URL with the resolved token."""
    return ControlApiClient(resolve_url(url), token=resolve_token())
