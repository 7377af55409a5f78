"""What the control API drives but does not import: the data plane's adapters, as ports.

The control API sits below the data plane (``cluster``, ``serve_apps``), which reaches it only
through :mod:`control_api.client` and :mod:`core.wire`. The reconciler still needs cloud adapters
and the Serve sync job still needs the Serve config the builder consumes: both come in through a
:class:`DataPlane` handed to :func:`control_api.app.create_app` by the composition root
(:mod:`cli.compose`, used by ``inventiv api serve`` and ``inventiv up``). An app built without one
reconciles no cloud and renders no Serve config (deployments stay ``pending`` with the reason).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from control_api.serve_client import ServeTarget
from core.clouds import Cloud

# Cluster name -> that cluster's cloud settings (``{"cloud": "scaleway", "zones": [...], ...}``)
# -> the cloud adapters to reconcile, by cluster name. Raises ValueError for a bad setting.
CloudsFactory = Callable[[Mapping[str, Any]], Mapping[str, Cloud]]


class RenderServeConfig(Protocol):
    """Renders the Serve declarative config (``serve_apps.serve_config.render_serve_config``)
    from what the control API read: the stored specs of the non-deleted deployments (in order),
    Serve's GET (None: unknown), the budget guard's capped replica counts and the replica start
    estimates, both by deployment name. Pure: no database, no Serve call. Raises
    ``pydantic.ValidationError`` for a stored spec that no longer validates."""

    def __call__(self, target: ServeTarget, specs: Sequence[Mapping[str, Any]], *,
                 details: Mapping[str, Any] | None, caps: Mapping[str, int],
                 replica_start_s: Mapping[str, float]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class DataPlane:
    """The data plane's adapters the control API is given (each ``None`` = not wired)."""

    clouds: CloudsFactory | None = None
    render_serve_config: RenderServeConfig | None = None


NO_DATA_PLANE = DataPlane()
