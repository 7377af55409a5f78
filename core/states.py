"""The instance lifecycle states (one state machine, driven by the control API)."""

from __future__ import annotations

import enum


class InstanceState(str, enum.Enum):
    REQUESTED = "requested"
    PROVISIONING = "provisioning"
    BOOTING = "booting"
    JOINING = "joining"
    READY = "ready"
    DRAINING = "draining"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    FAILED = "failed"
    ARCHIVED = "archived"
