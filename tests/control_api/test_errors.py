"""One error root for the control plane, mapped once at the HTTP edge
(``control_api.app.install_error_handlers``)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from control_api.app import install_error_handlers
from control_api.errors import ApiError, ControlPlaneError, NotFound
from control_api.reconcile import ReconcilerNotWired
from control_api.routes.health import NotReady
from control_api.routes.reconcile import ReconcilerNotConfigured
from control_api.security import TokenError


def test_every_error_of_the_control_plane_has_the_one_root() -> None:
    for cls in (ApiError, NotFound, NotReady, ReconcilerNotConfigured, TokenError,
                ReconcilerNotWired):
        assert issubclass(cls, ControlPlaneError), cls
    # Still a ValueError: a setting that cannot be honoured.
    assert issubclass(ReconcilerNotWired, ValueError)


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/not-found")
    def not_found() -> None:
        raise NotFound("no such thing", details={"id": 1}, headers={"X-Why": "test"})

    @app.get("/not-ready")
    def not_ready() -> None:
        raise NotReady("database unavailable: OperationalError")

    @app.get("/token")
    def token() -> None:
        raise TokenError("Signature verification failed")

    return app


def test_api_errors_answer_their_status_and_code() -> None:
    with TestClient(_app()) as client:
        r = client.get("/not-found")
        assert r.status_code == 404 and r.headers["x-why"] == "test"
        assert r.json() == {"error": {"code": "not_found", "message": "no such thing",
                                      "details": {"id": 1}}}
        r = client.get("/not-ready")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"


def test_other_control_plane_errors_are_a_500_that_shows_nothing() -> None:
    with TestClient(_app()) as client:
        r = client.get("/token")
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal_error", "message": "internal server error"}}
