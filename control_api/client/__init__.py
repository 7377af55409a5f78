"""Typed HTTP clients of the control API.

``control_api.client.internal`` is what the data plane uses (/api/internal, with retries and a
durable spool); ``control_api.client.api`` is what the CLI uses (the user-facing REST routes),
parsing answers with the server's own response models (:mod:`control_api.schemas`). Every error
is a :class:`control_api.client.errors.ClientError`.
"""

from control_api.client.errors import (
    ClientError,
    ControlApiUnavailable,
    InternalApiError,
    InternalClientError,
    KeyRejected,
    SpoolError,
    SpoolFull,
)
from control_api.client.internal import (
    ClientStats,
    FlushReport,
    InternalClient,
    Sent,
    exponential_backoff,
)
from control_api.client.spool import Spool

__all__ = [
    "ClientError",
    "ClientStats",
    "ControlApiUnavailable",
    "FlushReport",
    "InternalApiError",
    "InternalClient",
    "InternalClientError",
    "KeyRejected",
    "Sent",
    "Spool",
    "SpoolError",
    "SpoolFull",
    "exponential_backoff",
]
