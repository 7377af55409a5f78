"""The gate: the ingress's ASGI middleware in front of Ray's FastAPI app, run on every request
before anything parses the body.

1. Only ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``,
   ``POST /v1/embeddings`` and ``GET /healthz`` exist; anything else is an OpenAI-shaped 404
   (Ray's ``/tokenize``, ``/detokenize``, ``/v1/score``, ``/v1/audio/transcriptions``,
   ``/v1/models/{id}``, FastAPI's ``/docs`` …, and any route a later Ray adds).
2. The bearer key is checked (format + checksum, then the control API through
   :class:`serve_apps.auth.KeyCache`) before the body is even read.
3. The body is read up to the largest ``max_body_bytes`` of all deployments (413 beyond).
4. The raw JSON goes to ``precheck`` (:class:`serve_apps.validation.Validation`), which applies
   every limit before FastAPI parses it into vLLM's request models.
5. Every response carries ``x-inventiv-request-id``, the id of its usage event.

Errors are answered here as JSON, not raised: Ray's exception middleware would turn unknown
exceptions into 500s.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from core.spec import DeploymentSpec
from serve_apps import limits as lim
from serve_apps import protocol
from serve_apps.asgi import (
    REQUEST_ID_HEADER,
    header,
    send_error,
    send_json,
    with_response_headers,
)
from serve_apps.auth import KeyCache, Principal
from serve_apps.metering import Meter
from serve_apps.metrics import IngressMetrics

log = logging.getLogger(__name__)

ALLOWED_ROUTES = {
    "/v1/models": "GET",
    "/v1/chat/completions": "POST",
    "/v1/completions": "POST",
    "/v1/embeddings": "POST",
}
HEALTH_PATH = "/healthz"


@dataclass
class RequestContext:
    """What the gate learnt about a request, for the route method."""

    request_id: str
    principal: Principal
    body_bytes: int
    body: dict[str, Any] | None
    # Set by the precheck for generation/embedding requests:
    dep: DeploymentSpec | None = None
    meter: Meter | None = None
    checked: lim.Checked | None = None


Precheck = Callable[[str, RequestContext], Awaitable[None]]


class _Refused(Exception):
    """The body cannot be taken: answered with ``error`` (None: the client went away)."""

    def __init__(self, error: protocol.OpenAIError | None) -> None:
        self.error = error


class Gate:
    """ASGI middleware: route allow-list, auth, body bound, precheck (see the module)."""

    def __init__(self, app: Any, *, keys: KeyCache, precheck: Precheck, max_body_bytes: int,
                 metrics: IngressMetrics) -> None:
        self.app = app
        self.keys = keys
        self.precheck = precheck
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan
            return
        method, path = scope["method"], scope["path"]
        if path == HEALTH_PATH and method in ("GET", "HEAD"):
            await send_json(send, 200, b'{"status":"ok"}', head=method == "HEAD")
            return
        if ALLOWED_ROUTES.get(path) != method:
            await send_error(send, protocol.route_not_found(method, path))
            return
        request_id = f"req-{uuid.uuid4().hex}"
        try:
            principal = await self.keys.authenticate(header(scope, b"authorization"))
        except protocol.OpenAIError as err:
            self.metrics.error("", "", err.status)
            await send_error(send, err, request_id)
            return
        try:
            body = await self._read_body(scope, receive) if method == "POST" else b""
            parsed = _parse(body)
        except _Refused as refused:
            if refused.error is not None:
                await send_error(send, refused.error, request_id)
            return
        ctx = RequestContext(request_id=request_id, principal=principal, body_bytes=len(body),
                             body=parsed)
        if not await self._precheck(path, ctx, send):
            return
        scope.setdefault("state", {})["inventiv"] = ctx
        try:
            await self.app(scope, _replay(body, receive), with_response_headers(
                send, [(REQUEST_ID_HEADER.encode(), request_id.encode())]))
        finally:
            if ctx.meter is not None and not ctx.meter.finished:
                # Admitted by us, refused by FastAPI's parsing of the body (a 400): still one
                # usage event, and the reservation is settled.
                ctx.meter.finish("rejected")

    async def _read_body(self, scope: Any, receive: Any) -> bytes:
        limit = self.max_body_bytes
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _Refused(protocol.too_large(limit))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Refused(None)
            part = message.get("body", b"")
            size += len(part)
            if size > limit:
                raise _Refused(protocol.too_large(limit))
            chunks.append(part)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _precheck(self, path: str, ctx: RequestContext, send: Any) -> bool:
        """Run the precheck; False when it refused the request (answered here)."""
        try:
            # Our limits run on the raw JSON before FastAPI parses it into vLLM's models.
            await self.precheck(path, ctx)
            return True
        except protocol.OpenAIError as err:
            await send_error(send, err, ctx.request_id)
        except Exception:  # noqa: BLE001 - a bug must still answer in OpenAI's shape
            log.exception("precheck failed for %s", ctx.request_id)
            if ctx.meter is not None and not ctx.meter.finished:
                ctx.meter.finish("error")
            await send_error(send, protocol.OpenAIError(
                500, "Internal error while checking the request.", type=protocol.SERVER,
                code="internal_error"), ctx.request_id)
        return False


def _parse(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object; None when empty or not an object (FastAPI answers the 400)."""
    if not body:
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    except RecursionError:  # absurdly nested: refuse before anything else parses it
        raise _Refused(protocol.bad_request(
            "The request body is not valid JSON (nested too deeply).",
            code="invalid_json")) from None
    return value if isinstance(value, dict) else None


def _replay(body: bytes, receive: Any) -> Any:
    """``receive`` that hands the app the body the gate already read, then the real stream."""
    replayed = False

    async def replay() -> Any:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay

