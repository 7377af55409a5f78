"""Cloud adapters behind one protocol (:mod:`cluster.clouds.base`)."""

from cluster.clouds.base import (
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
