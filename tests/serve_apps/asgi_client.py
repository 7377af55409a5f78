"""A raw ASGI call for the ingress middlewares' unit tests: one request in, the response's
status, headers and body out, and whether the app read the body."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    body_read: bool = False

    def json(self) -> Any:
        return json.loads(self.body)


def call(app: Any, method: str, path: str, *, headers: dict[str, str] | None = None,
         chunks: list[bytes] | None = None) -> Answer:
    """Send one HTTP request through ``app`` (``chunks``: the body, as the client sends it)."""
    answer = Answer()
    pending = list(chunks or [b""])
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1"))
           for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": method, "path": path, "headers": raw,
             "query_string": b"", "http_version": "1.1", "scheme": "http",
             "server": ("test", 80), "client": ("test", 1234), "root_path": ""}

    async def receive() -> dict[str, Any]:
        answer.body_read = True
        if not pending:
            return {"type": "http.disconnect"}
        part = pending.pop(0)
        return {"type": "http.request", "body": part, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            for k, v in message.get("headers", []):
                answer.headers[k.decode("latin-1")] = v.decode("latin-1")
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return answer
