"""Importing the CLI's REST client (and with it the server's wire schemas) loads no server code:
no FastAPI app, routes, services or auth, no password hashing nor JWT library, no database.

Run in a fresh interpreter: this test process has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import json, sys
import control_api.client.api, control_api.client.finops
print(json.dumps(sorted(sys.modules)))
"""


def _loaded() -> set[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE], check=True, capture_output=True,
                         text=True, timeout=120)
    return set(json.loads(out.stdout))


def _hits(loaded: set[str], roots: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if m in roots or m.startswith(tuple(r + "." for r in roots)))


def test_the_client_loads_no_server_code_nor_auth_libraries() -> None:
    loaded = _loaded()
    assert not _hits(loaded, ("argon2", "jwt", "fastapi", "uvicorn", "alembic")), \
        _hits(loaded, ("argon2", "jwt", "fastapi", "uvicorn", "alembic"))
    server = ("control_api.app", "control_api.routes", "control_api.services",
              "control_api.deps", "control_api.security", "control_api.pagination",
              "control_api.settings", "control_api.errors")
    assert not _hits(loaded, server), _hits(loaded, server)


def test_the_client_loads_no_sqlalchemy() -> None:
    loaded = _loaded()
    assert not _hits(loaded, ("sqlalchemy", "core.models", "core.db")), \
        _hits(loaded, ("sqlalchemy", "core.models", "core.db"))
