"""The states and roles stored in the database and sent on the wire: the instance lifecycle
(one state machine, driven by the control API), membership roles, budget scope and state, and
catalog availability. Plain enums, no SQLAlchemy: clients import them from here."""

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


class Role(str, enum.Enum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"

    @property
    def rank(self) -> int:
        return {"viewer": 0, "member": 1, "admin": 2, "owner": 3}[self.value]


class BudgetScope(str, enum.Enum):
    ORG = "org"
    DEPLOYMENT = "deployment"
    API_KEY = "api_key"


class BudgetState(str, enum.Enum):
    OK = "ok"
    WARNING = "warning"
    EXCEEDED = "exceeded"


class Availability(str, enum.Enum):
    AVAILABLE = "available"
    SCARCE = "scarce"
    SHORTAGE = "shortage"
    UNKNOWN = "unknown"
