"""Cloud adapters from cluster settings: the factory the control API is handed as
``DataPlane.clouds`` (:mod:`control_api.ports`, wired by :mod:`cli.compose`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.clouds import Cloud

CLUSTERS_SETTING = "INVENTIV_RECONCILE_CLUSTERS"


def clouds_from_config(config: Mapping[str, Any]) -> dict[str, Cloud]:
    """One adapter per cluster of ``config`` (``{"<cluster>": {"cloud": "scaleway", "zones":
    [...], ...}}``: the other keys are the adapter's settings; credentials come from the SDK's
    ``SCW_*`` environment). Raises ``ValueError`` for a cluster of another cloud."""
    clouds: dict[str, Cloud] = {}
    for cluster, cfg in config.items():
        if not isinstance(cfg, Mapping) or cfg.get("cloud") != "scaleway":
            raise ValueError(f"{CLUSTERS_SETTING}[{cluster!r}]: only cloud 'scaleway' is"
                             " supported")
        # Imported here: the Scaleway SDK loads only when a Scaleway cluster is configured.
        from cluster.clouds.scaleway import ScalewayCloud, ScalewayConfig

        clouds[str(cluster)] = ScalewayCloud(ScalewayConfig.from_mapping(cfg))
    return clouds
