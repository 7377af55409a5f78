"""The errors of :mod:`control_api.client`: one root, :class:`ClientError`.

Each error has a stable ``code`` and a ``message`` for people; the CLI maps the root once
(:func:`cli.output.handles_errors`) to ``error: <code>: <message>`` and exit code 1. The classes
stay importable where they are raised (``control_api.client.api``, ``.internal``, ``.spool``).
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Root of the control API clients' errors. ``code`` is stable; ``message`` is for people."""

    code = "client_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


# ---------------------------------------------------------------- the durable spool


class SpoolError(ClientError):
    """Base of spool errors."""

    code = "spool_error"


class SpoolFull(SpoolError):
    """The spool reached its size bound; the batch was NOT written."""

    code = "spool_full"


# ---------------------------------------------------------------- the data plane's client


class InternalClientError(ClientError):
    """Base of the internal client's errors."""

    code = "internal_client_error"


class ControlApiUnavailable(InternalClientError):
    """The control API did not answer usefully after all retries (down, 5xx, 429, timeouts)."""

    code = "unavailable"


class InternalApiError(InternalClientError):
    """A non-retryable answer (4xx other than 429) with the API's ``error.code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status = status

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.code}: {self.message}"


class KeyRejected(InternalApiError):
    """Key verification said no: unknown, revoked, expired or disabled key (see ``code``)."""


# ---------------------------------------------------------------- the CLI's REST client


class ControlApiError(ClientError):
    """An error answer of the control API (or a transport failure, with ``status == 0``)."""

    def __init__(self, status: int, code: str, message: str, *, details: Any = None,
                 retry_after: str | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.details = details
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ControlApiUnreachable(ControlApiError):
    """The control API could not be reached (connection refused, DNS, timeout)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(0, "unreachable", f"cannot reach the control API at {url} ({reason})")
        self.url = url
