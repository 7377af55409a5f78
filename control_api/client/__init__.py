"""Typed HTTP clients of the control API.

``control_api.client.internal`` is what the data plane uses (/api/internal, with retries and a
durable spool); ``control_api.client.api`` is what the CLI uses (the user-facing REST routes).
"""

from control_api.client.internal import (
    ClientStats,
    ControlApiUnavailable,
    FlushReport,
    InternalApiError,
    InternalClient,
    InternalClientError,
    KeyRejected,
    Sent,
    exponential_backoff,
)
from control_api.client.spool import Spool, SpoolError, SpoolFull

__all__ = [
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
