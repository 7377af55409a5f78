"""Weight downloads per node (imported by :mod:`core.models`). Filled by the weights work (#11)."""

from __future__ import annotations
