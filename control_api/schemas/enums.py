"""The enums the schemas share with the database models (one class each, stored and sent),
from :mod:`core.states`, which loads no SQLAlchemy."""

from __future__ import annotations

from core.states import Availability, BudgetScope, BudgetState, InstanceState, Role

__all__ = ["Availability", "BudgetScope", "BudgetState", "InstanceState", "Role"]
