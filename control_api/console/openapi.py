"""OpenAPI security schemes, so Swagger's *Authorize* works (bearer session token or API cookie).

Each operation's ``security`` follows its declared access level (``x-access``): none for
``public``; the service token for ``service``; the session (bearer JWT from ``POST
/api/auth/login`` or the session cookie) for every other level.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

SCHEMES: dict[str, dict[str, Any]] = {
    "session": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "The access_token of POST /api/auth/login."},
    "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "inventiv_session",
                      "description": "The session cookie set by POST /api/auth/login."},
    "serviceToken": {"type": "http", "scheme": "bearer",
                     "description": "A data-plane service token (internal routes)."},
}


def install_security_schemes(app: FastAPI, cookie_name: str) -> None:
    """Wrap ``app.openapi`` so the schema carries the schemes and per-operation security."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                             description=app.description)
        schemes = {k: dict(v) for k, v in SCHEMES.items()}
        schemes["sessionCookie"]["name"] = cookie_name
        schema.setdefault("components", {})["securitySchemes"] = schemes
        for ops in schema.get("paths", {}).values():
            for op in ops.values():
                if not isinstance(op, dict):
                    continue
                level = op.get("x-access")
                if level == "public" or level is None:
                    continue
                if level == "service":
                    op["security"] = [{"serviceToken": []}]
                else:
                    op["security"] = [{"session": []}, {"sessionCookie": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
