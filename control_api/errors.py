"""The control plane's errors: values with a stable code, under one root.

Every error ``control_api`` raises on purpose is a :class:`ControlPlaneError`. The HTTP edge
(:func:`control_api.app.install_error_handlers`) maps them once: an :class:`ApiError` becomes
``{"error": {"code", "message"}}`` with its status; any other one is a bug where it escapes a
route, answered as 500 ``internal_error`` (logged, its message not shown). This module holds
values only (no web framework), so light modules may raise these too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ControlPlaneError(Exception):
    """Root of the control plane's errors. ``code`` is stable; the message is for people."""

    code = "internal_error"


class ApiError(ControlPlaneError):
    """An error answered to the client with ``status_code`` and ``code``."""

    status_code = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details
        self.headers = headers


class BadRequest(ApiError):
    status_code = 400
    code = "bad_request"


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class Unprocessable(ApiError):
    status_code = 422
    code = "validation_error"


class TooManyRequests(ApiError):
    status_code = 429
    code = "too_many_requests"


class InvalidTransition(Conflict):
    code = "invalid_transition"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The body of every error answer: ``{"error": {"code", "message"[, "details"]}}``."""
    err: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        err["details"] = details
    return {"error": err}


# ---------------------------------------------------------------- OpenAPI documentation


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any | None = None


class ErrorResponse(BaseModel):
    """The body of every error answered by the control API."""

    error: ErrorDetail


_DESCRIPTIONS = {
    "400": "Bad request", "401": "Not authenticated", "403": "Forbidden", "404": "Not found",
    "409": "Conflict", "413": "Body too large", "422": "Invalid request",
    "429": "Too many requests",
}
# Passed to include_router so the spec documents the real error shape (and replaces FastAPI's
# default 422 ``{detail: [...]}`` schema, which this app never answers).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc} for code, desc in _DESCRIPTIONS.items()
}
