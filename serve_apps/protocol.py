"""OpenAI's error wire format, and the errors the ingress answers with.

OpenAI answers ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status; the
``openai`` client turns 401 into ``AuthenticationError``, 403 ``PermissionDeniedError``, 404
``NotFoundError``, 400 ``BadRequestError``, 413 ``APIStatusError``, 429 ``RateLimitError``.
"""

from __future__ import annotations

import json
from typing import Any

# Error types as OpenAI names them.
INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
PERMISSION = "permission_error"
NOT_FOUND = "not_found_error"
RATE_LIMIT = "rate_limit_error"
INSUFFICIENT_QUOTA = "insufficient_quota"
SERVER = "server_error"
# Error codes answered by several refusals.
BUDGET_EXCEEDED = "budget_exceeded"


class OpenAIError(Exception):
    """An error answered to the client in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type: str = INVALID_REQUEST,  # noqa: A002
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def body_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()


def missing_key() -> OpenAIError:
    return OpenAIError(401, "You didn't provide an API key. Send it as `Authorization: Bearer "
                       "<key>`.", type=INVALID_REQUEST, code="missing_api_key")


def invalid_key(code: str = "invalid_api_key") -> OpenAIError:
    reasons = {"invalid_api_key": "Incorrect API key provided.",
               "revoked_api_key": "This API key has been revoked.",
               "expired_api_key": "This API key has expired.",
               "disabled_api_key": "The owner of this API key is disabled."}
    return OpenAIError(401, reasons.get(code, "Incorrect API key provided."),
                       type=INVALID_REQUEST, code=code)


def auth_unavailable() -> OpenAIError:
    return OpenAIError(503, "API key verification is temporarily unavailable; retry shortly.",
                       type=SERVER, code="auth_unavailable", headers={"Retry-After": "5"})


def route_not_found(method: str, path: str) -> OpenAIError:
    return OpenAIError(404, f"Invalid URL ({method} {path})", type=INVALID_REQUEST,
                       code="unknown_url")


def model_not_found(model: str | None) -> OpenAIError:
    return OpenAIError(404, f"The model `{model}` does not exist.", type=INVALID_REQUEST,
                       code="model_not_found", param="model")


def model_not_allowed(model: str) -> OpenAIError:
    return OpenAIError(403, f"This API key may not use the model `{model}`.", type=PERMISSION,
                       code="model_not_allowed", param="model")


def bad_request(message: str, param: str | None = None,
                code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, type=INVALID_REQUEST, code=code, param=param)


def too_large(limit: int) -> OpenAIError:
    return OpenAIError(413, f"Request body too large (limit {limit} bytes).",
                       type=INVALID_REQUEST, code="request_too_large")


def rate_limited(message: str, retry_after_s: float, code: str = "rate_limit_exceeded"
                 ) -> OpenAIError:
    return OpenAIError(429, message, type=RATE_LIMIT, code=code,
                       headers={"Retry-After": str(max(1, int(retry_after_s + 0.999)))})


def quota_exceeded() -> OpenAIError:
    """The key's own monthly budget is spent. ``code`` is ``budget_exceeded`` like every other
    budget refusal (one code for clients to handle); ``type`` stays OpenAI's
    ``insufficient_quota``, which is what OpenAI answers for a spent quota. The ``openai``
    client keys on neither: a 429 is a ``RateLimitError``, and ``x-should-retry: false`` (set by
    the caller) stops its retries."""
    return OpenAIError(429, "You exceeded this API key's monthly budget.",
                       type=INSUFFICIENT_QUOTA, code=BUDGET_EXCEEDED)


def cold_start_timeout(model: str, waited_s: float, retry_after_s: float) -> OpenAIError:
    """The model was at zero replicas and none started within its cold-start limit."""
    return OpenAIError(503, f"The model `{model}` is starting (scaled to zero); no replica was "
                       f"ready after {waited_s:.0f} s. Retry shortly.", type=SERVER,
                       code="model_cold_start_timeout",
                       headers={"Retry-After": str(max(1, int(retry_after_s + 0.999)))})


def origin_not_allowed(origin: str) -> OpenAIError:
    return OpenAIError(403, f"The origin `{origin}` may not call this endpoint (CORS).",
                       type=PERMISSION, code="origin_not_allowed")
