"""The composition root: the control API wired to the data plane's adapters.

The control API does not import ``cluster`` or ``serve_apps`` (they sit above it and reach it only
through :mod:`control_api.client`); what it drives of them, the cloud adapters its reconciler
lists and the renderer of the Serve config its deployment service applies, is handed to it here,
at the top of the layers.
``inventiv api serve``, ``inventiv up`` and ``uvicorn --factory cli.compose:app_factory`` build
the control API through this module.
"""

from __future__ import annotations

from typing import Any

from control_api.ports import DataPlane
from control_api.settings import Settings


def data_plane() -> DataPlane:
    """The real adapters: the clouds of ``cluster`` and the Serve config renderer of
    ``serve_apps`` (beside the builder that consumes the config)."""
    from cluster.clouds.registry import clouds_from_config
    from serve_apps.serve_config import render_serve_config

    return DataPlane(clouds=clouds_from_config, render_serve_config=render_serve_config)


def control_api_app(settings: Settings | None = None) -> Any:
    """The control API app with the data plane wired in."""
    from control_api.app import create_app

    return create_app(settings, plane=data_plane())


def app_factory() -> Any:
    """Entry point for ``uvicorn --factory cli.compose:app_factory``."""
    return control_api_app()
