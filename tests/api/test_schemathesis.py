"""Property-based run over the whole control API's OpenAPI spec: no request yields a 5xx.

Schemathesis generates valid and invalid requests for every operation of ``/api/openapi.json``
(whatever routes exist when the suite runs) and sends them in-process to the app, on both
database backends, twice: as the platform admin (service endpoints with the service token) and
unauthenticated. Each authenticated case gets a fresh admin session, so a generated logout or
password change cannot silently turn the rest of the run into 401s. One app (and database state,
which grows as generated requests create things) serves all operations of a backend.

Responses of 2xx are also validated against their documented schema.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.python import asgi as st_asgi
from sqlalchemy import Engine, select

from control_api.app import create_app
from control_api.settings import Settings
from core.db import utcnow
from core.models import User, UserSession
from tests.conftest import ADMIN_PASSWORD, JWT_SECRET, SERVICE_TOKEN, truncate_all

# Per operation and generation phase; keeps the whole run within a couple of minutes on 2 cores.
SETTINGS = hypothesis.settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)


ANONYMOUS_REFUSALS = frozenset({400, 401, 405, 413, 415, 422})


def _openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the app as built now, with every router registered.

    Building the app touches no database (engines connect lazily), so this runs at import time,
    which schemathesis' pytest integration needs to generate one test per operation.
    """
    settings = Settings(database_url="sqlite://", data_dir=Path(tempfile.gettempdir()),
                        jwt_secret="openapi-only-" + "z" * 40,  # type: ignore[arg-type]
                        run_migrations=False)
    return create_app(settings).openapi()


schema = schemathesis.openapi.from_dict(_openapi_document())


@pytest.fixture(scope="module")
def app(engine: Engine, db_url: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """One started app per backend on an emptied database (catalog seeded, admin bootstrapped)."""
    truncate_all(engine)
    settings = Settings(
        database_url=db_url, data_dir=tmp_path_factory.mktemp("schemathesis"),
        admin_password=ADMIN_PASSWORD, jwt_secret=JWT_SECRET,  # type: ignore[arg-type]
        service_token=SERVICE_TOKEN, cookie_secure=False,  # type: ignore[arg-type]
        run_migrations=False, argon2_time_cost=1, argon2_memory_cost=8192,
    )
    application = create_app(settings)
    with TestClient(application):
        yield application


def _access(case: Any) -> str | None:
    level = case.operation.definition.raw.get("x-access")
    return str(level) if level is not None else None


def _fresh_admin_headers(app: FastAPI) -> dict[str, str]:
    """A new session for the bootstrapped admin, as a login would create it."""
    with app.state.sessionmaker() as s, s.begin():
        admin = s.scalar(select(User).where(User.username == app.state.settings.admin_username))
        assert admin is not None
        sess = UserSession(user_id=admin.id, expires_at=utcnow() + timedelta(hours=1))
        s.add(sess)
        s.flush()
        uid, sid = admin.id, sess.id
    token, _ = app.state.jwt.encode(uid, sid, timedelta(hours=1))
    return {"Authorization": f"Bearer {token}"}


def _call(case: Any, app: FastAPI, headers: dict[str, str] | None) -> Any:
    # An in-process client on the fixture's app, whose lifespan the fixture already ran.
    session = st_asgi.ASGIClient(app)  # type: ignore[arg-type]
    response = case.call(base_url="http://testserver", session=session, headers=headers)
    # The one property that must hold for every generated request.
    case.validate_response(response, checks=[not_a_server_error], headers=headers)
    if 200 <= response.status_code < 300:
        case.validate_response(response, checks=[response_schema_conformance], headers=headers)
    return response


@schema.parametrize()
@SETTINGS
def test_no_server_error_as_platform_admin(case: Any, app: FastAPI) -> None:
    if _access(case) == "service":
        headers = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    else:
        headers = _fresh_admin_headers(app)
    _call(case, app, headers)


@schema.parametrize()
@SETTINGS
def test_no_server_error_unauthenticated(case: Any, app: FastAPI) -> None:
    response = _call(case, app, None)
    if _access(case) not in ("public", None):
        # Anonymous callers get nothing from a non-public route: 401, or a refusal of the request
        # itself that FastAPI makes before authentication runs (405 undeclared method, 400/422 body
        # that is not JSON, 413 too large) -- never data, never a 403/404 that reveals anything.
        assert response.status_code in ANONYMOUS_REFUSALS, (case.operation.label,
                                                             response.status_code)


def test_every_operation_declares_an_access_level() -> None:
    spec = schema.raw_schema
    missing = [f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m, op in ops.items()
               if "x-access" not in op and p not in ("/healthz", "/readyz")]
    assert missing == []
    assert len(spec["paths"]) > 10


def test_admin_session_minting_works(app: FastAPI) -> None:
    """The authenticated pass really is authenticated (a 401 there would prove nothing)."""
    client = TestClient(app)
    r = client.get("/api/auth/me", headers=_fresh_admin_headers(app))
    assert r.status_code == 200, r.text
    assert r.json()["is_platform_admin"] is True
    assert client.get(f"/api/instances/{uuid.uuid4()}",
                      headers=_fresh_admin_headers(app)).status_code == 404
    service = client.post("/api/internal/usage", json={"records": []},
                          headers={"Authorization": f"Bearer {SERVICE_TOKEN}"})
    assert service.status_code == 200, service.text
