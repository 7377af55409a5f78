"""Small ASGI helpers shared by the ingress's middlewares (raw ASGI: no per-request objects)."""

from __future__ import annotations

from typing import Any

from serve_apps import protocol

# The id of a request's usage event, on every response the gate let through or refused.
REQUEST_ID_HEADER = "x-inventiv-request-id"


def header(scope: Any, name: bytes) -> str | None:
    """The value of request header ``name`` (lower case bytes), or None."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


async def send_json(send: Any, status: int, body: bytes,
                    headers: list[tuple[bytes, bytes]] | None = None, *,
                    head: bool = False) -> None:
    """A complete JSON response (``head``: headers only, as for ``HEAD``)."""
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def send_error(send: Any, err: protocol.OpenAIError, request_id: str | None = None
                     ) -> None:
    """``err`` as OpenAI's JSON error, with its headers and the request id when known."""
    headers = [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    if request_id:
        headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
    await send_json(send, err.status, err.body_bytes(), headers)


def with_response_headers(send: Any, add: list[tuple[bytes, bytes]],
                          drop_prefix: bytes | None = None) -> Any:
    """``send`` with ``add`` appended to the response start (every response, errors and
    streams included), after removing the headers whose name starts with ``drop_prefix``."""

    async def wrapped(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            kept = message.get("headers", [])
            if drop_prefix is not None:
                kept = [(k, v) for k, v in kept if not k.lower().startswith(drop_prefix)]
            message["headers"] = [*kept, *add]
        await send(message)

    return wrapped
