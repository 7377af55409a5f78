"""Liveness and readiness (open) and the Prometheus metrics.

``/metrics`` shows burn rate, costs, tokens per deployment and budget states, so it is not open:
with ``INVENTIV_METRICS_TOKEN`` (or ``_FILE``) set, a scrape must send
``Authorization: Bearer <token>`` (401 otherwise); without one, only loopback and private-network
clients may scrape it (403 otherwise). A scrape only reads (see :mod:`finops.metrics`).
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from control_api.errors import ApiError

router = APIRouter(tags=["health"])


class NotReady(ApiError):
    status_code = 503
    code = "not_ready"


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> dict[str, str]:
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any database failure means not ready
        raise NotReady(f"database unavailable: {type(exc).__name__}") from None
    return {"status": "ready"}


class MetricsUnauthorized(ApiError):
    status_code = 401
    code = "metrics_token_required"


class MetricsForbidden(ApiError):
    status_code = 403
    code = "metrics_forbidden"


def _private_peer(host: str | None) -> bool:
    if host is None:
        return True  # not a network peer (unix socket, in-process client)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return True  # not an IP address: an in-process transport, not the network
    return ip.is_loopback or ip.is_private


def require_scrape_access(request: Request) -> None:
    """The scrape token when one is set (bearer, constant-time compare), else a private peer."""
    token = request.app.state.settings.metrics_token
    if token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), token.get_secret_value().encode()):
            raise MetricsUnauthorized("a valid metrics scrape token is required "
                                      "(Authorization: Bearer)")
        return
    if not _private_peer(request.client.host if request.client else None):
        raise MetricsForbidden("/metrics is served to private networks only unless "
                               "INVENTIV_METRICS_TOKEN is set")


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    require_scrape_access(request)
    registry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
