"""Cloud adapters behind one protocol (:mod:`core.clouds`), each with its Ray head beside it.

- ``local``: :mod:`cluster.clouds.local` (nodes are local ``ray start`` processes) and
  :mod:`cluster.clouds.local_head` (the head as a supervised local process);
- ``scaleway``: :mod:`cluster.clouds.scaleway` (the Instance API adapter) and
  :mod:`cluster.clouds.scaleway_head` (the head VM and its cloud-init).

:func:`cluster.head.head_for` picks a cluster file's head; :mod:`cluster.clouds.registry` builds
adapters for the control API.
"""

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
