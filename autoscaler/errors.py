"""The root of the autoscaler's exceptions, so an edge (the CLI) can catch them once.

Its subclasses (``traces.TraceError``, ``simulator.SimulationError``) stay ``ValueError``s too:
they are bad input (a trace, a deployment the simulator cannot map), as they always were."""

from __future__ import annotations

__all__ = ["AutoscalerError"]


class AutoscalerError(Exception):
    """Base of every error the autoscaler package raises."""
