"""The configuration shipped with Inventiv Agents: GPU catalog seed, cluster and deployment
YAMLs, the deployment JSON schema, autoscaler traces, Grafana dashboards, Prometheus config.

It is package data: code reads it through :func:`path` (``importlib.resources``), never
relative to a source file, so an installed wheel finds the same files as a checkout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["path"]


def path(*parts: str) -> Path:
    """The shipped file or directory ``configs/<parts...>`` as a filesystem path.

    Wheels install as plain directories, so the resource is a real file; a zipped install
    (never produced by our build) is refused with a clear error instead of a later
    ``FileNotFoundError``.
    """
    res = resources.files(__name__).joinpath(*parts)
    if not isinstance(res, Path):
        raise RuntimeError(f"configs/{'/'.join(parts)} is not on the filesystem ({res!r}): "
                           "install inventiv-agents as a regular (unzipped) package")
    return res
