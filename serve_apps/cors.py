"""CORS for browsers calling the OpenAI routes with an API key: the outermost middleware of the
ingress.

With ``options.cors_allow_origins``, ``OPTIONS`` preflights on the served ``/v1`` routes are
answered here (no key needed: a preflight carries none) and responses to allowed origins carry
``Access-Control-Allow-Origin``; other origins get no CORS header at all. Ray Serve LLM's app
carries its own ``CORSMiddleware`` that allows every origin (with credentials): on any request
with an ``Origin``, its ``Access-Control-*`` headers are replaced by what our list allows.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from serve_apps import protocol
from serve_apps.asgi import REQUEST_ID_HEADER, header, send_error, with_response_headers


class Cors:
    """The CORS policy (no cookies, so no ``Allow-Credentials``). ``origins`` are exact
    origins (``https://app.example.com``), or ``*`` for any. Empty: CORS is off."""

    # What the official JS client sends besides Authorization/Content-Type: a browser refuses
    # the call unless the preflight allows them.
    CLIENT_HEADER_PREFIXES = ("x-stainless-", "openai-")
    MAX_AGE_S = 600

    def __init__(self, origins: list[str]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(o.rstrip("/") for o in origins if o != "*")

    @property
    def enabled(self) -> bool:
        return self.any or bool(self.origins)

    def allowed(self, origin: str) -> bool:
        return self.any or origin in self.origins

    def response_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        """What a response to an allowed ``origin`` carries."""
        return [(b"access-control-allow-origin", origin.encode("latin-1")),
                (b"vary", b"Origin"),
                (b"access-control-expose-headers",
                 f"{REQUEST_ID_HEADER}, retry-after".encode())]

    async def preflight(self, send: Any, origin: str, requested: str | None) -> None:
        """Answer an ``OPTIONS`` preflight: 204 with the Allow headers, or 403 (without any
        CORS header, so the browser blocks the call) for an origin not in the list."""
        if not self.allowed(origin):
            await send_error(send, protocol.origin_not_allowed(origin))
            return
        headers = ["Authorization", "Content-Type"]
        for name in (requested or "").split(","):
            name = name.strip().lower()
            if name.startswith(self.CLIENT_HEADER_PREFIXES) and name.isascii():
                headers.append(name)
        await send({"type": "http.response.start", "status": 204, "headers": [
            *self.response_headers(origin),
            (b"access-control-allow-methods", b"GET, POST"),
            (b"access-control-allow-headers", ", ".join(headers).encode()),
            (b"access-control-max-age", str(self.MAX_AGE_S).encode())]})
        await send({"type": "http.response.body", "body": b""})


class CorsMiddleware:
    """ASGI middleware applying :class:`Cors` to the ``paths`` the ingress serves (preflights)
    and to every response of a request that carries an ``Origin``."""

    def __init__(self, app: Any, cors: Cors, paths: Collection[str]) -> None:
        self.app = app
        self.cors = cors
        self.paths = paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        origin = header(scope, b"origin") if scope["type"] == "http" else None
        if origin is None:
            await self.app(scope, receive, send)
            return
        cors = self.cors
        if (cors.enabled and scope["method"] == "OPTIONS" and scope["path"] in self.paths
                and header(scope, b"access-control-request-method") is not None):
            await cors.preflight(send, origin, header(scope, b"access-control-request-headers"))
            return
        add = cors.response_headers(origin) if cors.allowed(origin) else []
        await self.app(scope, receive,
                       with_response_headers(send, add, drop_prefix=b"access-control-"))
