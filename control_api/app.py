"""The control API application (:func:`create_app`) and the HTTP edge of its errors.

What runs it with the data plane's adapters wired is the composition root:
``uvicorn --factory cli.compose:app_factory`` or ``inventiv api serve``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_api import bootstrap, console, migrate
from control_api.background import PeriodicJobs, finops_refresh
from control_api.console.openapi import install_security_schemes
from control_api.errors import ERROR_RESPONSES, ApiError, ControlPlaneError, error_body
from control_api.ports import NO_DATA_PLANE, DataPlane
from control_api.reconcile import (
    ReconcilerNotWired,
    reconciler_from_settings,
    start_reconciler_thread,
)
from control_api.routes import (
    action_logs,
    api_keys,
    auth,
    catalog,
    console_reset,
    console_sessions,
    deployments,
    finops,
    health,
    instances,
    internal,
    internal_budgets,
    internal_weights,
    orgs,
    playground,
    reconcile,
    secrets,
    service_tokens,
    users,
)
from control_api.security import JwtCodec, Passwords
from control_api.serve_client import client_from_settings
from control_api.services.deployments import serve_sync_job
from control_api.settings import Settings, get_settings
from core.db import make_engine, make_sessionmaker, session_scope
from finops import metrics as finops_metrics

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the HTTP edge of the errors

_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "validation_error", 429: "too_many_requests",
}


def _clean_validation_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Never echo submitted values back: they may be passwords or keys.
    out = []
    for e in errors:
        out.append({"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""),
                    "type": e.get("type", "")})
    return out


def _internal_error() -> JSONResponse:
    return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """The one place errors become ``{"error": {"code", "message"}}`` answers: the control
    plane's own (:class:`control_api.errors.ControlPlaneError`), request validation, Starlette's
    HTTP errors (404 route, 405 method...) and anything unexpected (500, logged)."""

    @app.exception_handler(ControlPlaneError)
    async def _control_plane_error(_: Request, exc: ControlPlaneError) -> JSONResponse:
        if isinstance(exc, ApiError):
            return JSONResponse(
                error_body(exc.code, exc.message, exc.details), status_code=exc.status_code,
                headers=exc.headers,
            )
        # Not meant for clients (a bug where it escapes a route): logged, message not shown.
        log.error("unhandled %s (%s)", type(exc).__name__, exc.code, exc_info=exc)
        return _internal_error()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = _clean_validation_errors(list(exc.errors()))
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(p for p in first["loc"] if p not in ("body",)) or "request"
        return JSONResponse(
            error_body("validation_error", f"{where}: {first['msg']}", details), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return JSONResponse(
            error_body(code, message), status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", type(exc).__name__)
        return _internal_error()


# ---------------------------------------------------------------- request body bound


class BodySizeLimit:
    """Reject request bodies over ``limit`` bytes with 413, before the app reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = True
                if too_big:
                    await _send_413(send, self.limit)
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await _send_413(send, self.limit)


class _TooLarge(Exception):
    pass


async def _send_413(send: Send, limit: int) -> None:
    import json

    body = json.dumps(error_body("payload_too_large",
                                 f"request body exceeds {limit} bytes")).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None, *, plane: DataPlane | None = None) -> FastAPI:
    """Build the app; the lifespan migrates the database and bootstraps admin and catalog.

    ``plane``: the data plane's adapters (clouds to reconcile, the Serve config renderer), wired
    by the composition root (:func:`cli.compose.control_api_app`); none by default.
    """
    settings = settings or get_settings()
    engine = make_engine(settings.resolved_database_url())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.run_migrations:
            migrate.upgrade(engine)
        with session_scope(app.state.sessionmaker) as s:
            bootstrap.seed_catalog(s, bootstrap.load_catalog(settings.catalog_seed_file))
            result = bootstrap.ensure_admin(
                s, app.state.passwords, username=settings.admin_username,
                email=settings.admin_email,
                password=settings.admin_password.get_secret_value()
                if settings.admin_password else None,
            )
        app.state.admin_bootstrap = result
        if result.generated_password:
            # Printed once on the console for the laptop default; never sent to the logger.
            print(f"Created admin user '{result.username}' with password: "
                  f"{result.generated_password}", flush=True)
        jobs = None
        if settings.background_jobs:
            jobs = PeriodicJobs(app.state.sessionmaker, {"finops": finops_refresh},
                                settings.finops_refresh_seconds)
            jobs.start()
        serve_jobs = None
        if settings.background_jobs and app.state.serve_client is not None:
            # Re-applies the desired deployments after a Serve restart or a failed apply.
            # Also the budget guard: a change of a deployment's scale-up cap is applied here.
            serve_jobs = PeriodicJobs(app.state.sessionmaker,
                                      {"serve_sync": serve_sync_job(app.state.serve_client,
                                                                   app.state.plane)},
                                      settings.serve_sync_seconds)
            serve_jobs.start()
        app.state.jobs = jobs
        reconciler_thread = None
        if settings.background_jobs:
            # Clusters to reconcile: settings.reconcile_clusters, with the plane's adapters.
            try:
                rec = reconciler_from_settings(app.state.sessionmaker, settings,
                                               app.state.plane.clouds)
            except ReconcilerNotWired as exc:
                log.warning("no reconciliation: %s", exc)
                rec = None
            if rec is not None:
                app.state.reconciler = rec
                reconciler_thread = start_reconciler_thread(
                    rec, interval_s=settings.reconcile_interval_seconds)
        yield
        if reconciler_thread is not None:
            reconciler_thread.stop()
        if jobs is not None:
            jobs.stop()
        if serve_jobs is not None:
            serve_jobs.stop()
        if app.state.serve_client is not None:
            app.state.serve_client.close()
        engine.dispose()

    app = FastAPI(
        title="Inventiv Agents control API",
        version="0.1.0",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.plane = plane or NO_DATA_PLANE
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.passwords = Passwords(settings.argon2_time_cost, settings.argon2_memory_cost,
                                    settings.argon2_parallelism)
    app.state.jwt = JwtCodec(settings.resolved_jwt_secret(), settings.jwt_issuer,
                             settings.jwt_audience)
    app.state.metrics_registry = CollectorRegistry()
    # The Serve REST client (Ray dashboard), when settings.ray_dashboard_url is set.
    app.state.serve_client = client_from_settings(settings)
    finops_metrics.install(app)
    install_error_handlers(app)
    for module in (health, auth, users, orgs, api_keys, service_tokens, catalog, deployments,
                   finops, instances, action_logs, internal, internal_budgets, reconcile,
                   secrets, internal_weights, playground, console_sessions):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    # Password-reset links: the admin half under /api/users, the public half under /api/auth.
    app.include_router(console_reset.admin_router, responses=ERROR_RESPONSES)
    app.include_router(console_reset.public_router, responses=ERROR_RESPONSES)
    # The web console at / (page shells and static files; its data comes from /api).
    console.install(app)
    install_security_schemes(app, settings.cookie_name)
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    return app
