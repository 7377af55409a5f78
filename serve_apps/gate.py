"""The gate: the ingress's ASGI middleware in front of Ray's FastAPI app, run on every request
before anything parses the body.

1. Only ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``,
   ``POST /v1/completions``, ``POST /v1/embeddings`` and ``GET /healthz`` exist; anything else
   is an OpenAI-shaped 404 (Ray's ``/tokenize``, ``/detokenize``, ``/v1/score``,
   ``/v1/audio/transcriptions``, FastAPI's ``/docs`` …, and any route a later Ray adds).
2. The bearer key is checked (format + checksum, then the control API through
   :class:`serve_apps.auth.KeyCache`) before the body is even read.
3. The body is read up to the largest ``max_body_bytes`` of all deployments (413 beyond).
4. The raw JSON goes to ``precheck`` (:class:`serve_apps.validation.Validation`), which applies
   every limit before FastAPI parses it into vLLM's request models.
5. Every ``/v1`` response, errors included, carries ``x-request-id`` (and the older
   ``x-inventiv-request-id``), the ``request_id`` of its usage record. Serve's proxy already
   puts one on every request (the client's own ``x-request-id`` when it sent one, else a
   fresh UUID) and echoes it on every response, so the gate adopts it rather than add a
   second, different header; without a proxy in front (tests) the gate makes and sends its
   own. A client-supplied id is honoured when well-formed (1-128 of ``A-Za-z0-9._:-``) and not
   used before on this replica (usage records are deduplicated by ``request_id``: a reused id
   would drop usage); otherwise the request is a 400 ``invalid_request_id``.
6. The rate-limit headers the admission answered (``x-ratelimit-*``) go on the response.

Errors are answered here as JSON, not raised: Ray's exception middleware would turn unknown
exceptions into 500s.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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
from serve_apps.catalog import Target
from serve_apps.metering import Meter
from serve_apps.metrics import IngressMetrics

log = logging.getLogger(__name__)

ALLOWED_ROUTES = {
    "/v1/models": "GET",
    "/v1/chat/completions": "POST",
    "/v1/completions": "POST",
    "/v1/embeddings": "POST",
}
MODEL_PREFIX = "/v1/models/"  # GET /v1/models/{id}: the id may hold `/` and `:`
HEALTH_PATH = "/healthz"
OPENAI_REQUEST_ID = "x-request-id"
REQUEST_ID_FORM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# Request ids this replica saw recently (a reuse is refused, see 5. above).
RECENT_IDS = 200_000


def allowed(method: str, path: str) -> bool:
    """Whether the gate serves ``method path`` (the allow-list above)."""
    if ALLOWED_ROUTES.get(path) == method:
        return True
    return method == "GET" and path.startswith(MODEL_PREFIX) and len(path) > len(MODEL_PREFIX)


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
    # ``x-ratelimit-*`` headers of the admission, put on the response.
    rate_headers: dict[str, str] = field(default_factory=dict)
    # What ``model`` named (a deployment, or one of its LoRA adapters).
    target: Target | None = None


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
        # The key lookup takes the client's address (failed-auth throttling) when it can.
        self._pass_client = "client" in inspect.signature(keys.authenticate).parameters
        self._recent: OrderedDict[str, None] = OrderedDict()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan
            return
        method, path = scope["method"], route_path(scope)
        if path == HEALTH_PATH and method in ("GET", "HEAD"):
            await send_json(send, 200, b'{"status":"ok"}', head=method == "HEAD")
            return
        given = header(scope, OPENAI_REQUEST_ID.encode())
        request_id = given if given is not None else str(uuid.uuid4())
        if given is None:  # no Serve proxy in front: the gate sends the header itself
            send = with_response_headers(send, [(OPENAI_REQUEST_ID.encode(),
                                                 request_id.encode())])
        if not allowed(method, path):
            await send_error(send, protocol.route_not_found(method, path), request_id)
            return
        try:
            authorization = header(scope, b"authorization")
            if self._pass_client:
                principal = await self.keys.authenticate(authorization,
                                                         client=_client_address(scope))
            else:
                principal = await self.keys.authenticate(authorization)
        except protocol.OpenAIError as err:
            self.metrics.error("", "", err.status)
            await send_error(send, err, request_id)
            return
        if not self._claim(request_id):
            await send_error(send, protocol.bad_request(
                "The `x-request-id` header must be 1-128 letters, digits or `._:-`, and "
                "unique: this id was already used.", code="invalid_request_id"), request_id)
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
        added = [(REQUEST_ID_HEADER.encode(), request_id.encode()),
                 *((k.lower().encode(), v.encode()) for k, v in ctx.rate_headers.items())]
        try:
            await self.app(scope, _replay(body, receive), with_response_headers(send, added))
        finally:
            if ctx.meter is not None and not ctx.meter.finished:
                # Admitted by us, refused by FastAPI's parsing of the body (a 400): still one
                # usage event (0 tokens: no engine saw it), and the reservation is settled.
                ctx.meter.prompt_tokens = ctx.meter.completion_tokens = 0
                ctx.meter.finish("rejected")

    def _claim(self, request_id: str) -> bool:
        """Whether ``request_id`` is well-formed and new here (then remembered)."""
        if not REQUEST_ID_FORM.match(request_id) or request_id in self._recent:
            return False
        self._recent[request_id] = None
        if len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)
        return True

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


def route_path(scope: Any) -> str:
    """The request's path under the app's route prefix: Serve (like any ASGI server with a
    root path) puts the prefix in ``root_path`` and keeps it in ``path``; the routes are
    matched without it, as Starlette's router does. ``root_path`` is the server's, never the
    client's."""
    path: str = scope["path"]
    root: str = (scope.get("root_path") or "").rstrip("/")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("/", ""):
        return path[len(root):] or "/"
    return path


def _client_address(scope: Any) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


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

