"""Cloud adapters behind one protocol (:mod:`core.clouds`)."""

from core.clouds import (
    AuthError,
    BootFailed,
    BootTimeout,
    Cloud,
    CloudError,
    CloudInstance,
    InstanceStatus,
    InvalidRequest,
    LaunchRequest,
    NotFound,
    Offer,
    OutOfStock,
    QuotaExceeded,
    Transient,
    Unavailable,
)

__all__ = [
    "AuthError",
    "BootFailed",
    "BootTimeout",
    "Cloud",
    "CloudError",
    "CloudInstance",
    "InstanceStatus",
    "InvalidRequest",
    "LaunchRequest",
    "NotFound",
    "Offer",
    "OutOfStock",
    "QuotaExceeded",
    "Transient",
    "Unavailable",
]
