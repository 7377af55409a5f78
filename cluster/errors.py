"""The root of the ``cluster`` package's errors.

Every cluster-level exception (an invalid cluster file, a head that cannot start or stop, a
node bootstrap that cannot be rendered) derives from :class:`ClusterError`, so an edge (the
CLI) maps the whole package with one ``except``. Each subclass keeps the builtin base it had
(``ValueError`` for bad input, ``RuntimeError`` for a failed operation) and stays importable
from its own module. Cloud errors are :class:`core.clouds.CloudError` (the protocol's, shared
with the control API), not ours.
"""

from __future__ import annotations

__all__ = ["ClusterError"]


class ClusterError(Exception):
    """Something of the cluster package failed; the message says what and where."""
