"""What the control API drives but does not import: the data plane's adapters, as ports.

The control API sits below the data plane (``cluster``, ``serve_apps``), which reaches it only
through :mod:`control_api.client` and :mod:`core.wire`. The reconciler still needs cloud adapters
and the Serve sync job still needs the Serve config the builder consumes: both come in through a
:class:`DataPlane` handed to :func:`control_api.app.create_app` by the composition root
(:mod:`cli.compose`, used by ``inventiv api serve`` and ``inventiv up``). An app built without one
reconciles no cloud and renders no Serve config (deployments stay ``pending`` with the reason).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core.clouds import Cloud

# Cluster name -> that cluster's cloud settings (``{"cloud": "scaleway", "zones": [...], ...}``)
# -> the cloud adapters to reconcile, by cluster name. Raises ValueError for a bad setting.
CloudsFactory = Callable[[Mapping[str, Any]], Mapping[str, Cloud]]


@dataclass(frozen=True)
class DataPlane:
    """The data plane's adapters the control API is given (each ``None`` = not wired)."""

    clouds: CloudsFactory | None = None
    # Renders the Serve declarative config from the stored deployments (see
    # ``serve_apps.serve_config``); its signature is owned by the Serve sync service.
    render_serve_config: Callable[..., dict[str, Any]] | None = None


NO_DATA_PLANE = DataPlane()
