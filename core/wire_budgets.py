"""Wire format of ``POST /api/internal/budgets/applicable``: the budgets that apply to one
(org, API key, deployment) with what is left of each, for the ingress's admission.

Shared by the route (:mod:`control_api.routes.internal_budgets`) and the ingress's client
(:meth:`control_api.client.internal.InternalClient.applicable_budgets`).
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, Field

from core.states import BudgetScope
from core.wire import UtcDatetime, _Request


class ApplicableBudgetsRequest(_Request):
    """Who is asking and for which deployment (its name, as in the deployment YAML)."""

    org_id: uuid.UUID
    api_key_id: uuid.UUID
    deployment: Annotated[str, Field(min_length=1, max_length=128)]


class BudgetView(BaseModel):
    """One budget that applies: its limit for the current period and what is left of it, as
    of ``as_of`` (the spend figure's time; usage after it is counted by the ingress)."""

    budget_id: uuid.UUID
    scope: BudgetScope
    target_id: uuid.UUID
    limit_eur: Decimal
    spent_eur: Decimal
    left_eur: Decimal
    as_of: UtcDatetime
    period_end: UtcDatetime


class ApplicableBudgets(BaseModel):
    """Every budget on the org, the key and the deployment (an empty list when none)."""

    budgets: list[BudgetView] = Field(default_factory=list)
