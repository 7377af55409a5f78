"""Request and response schemas of /api/finops. Money is Decimal (a JSON string), EUR."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from control_api.schemas.enums import BudgetScope, BudgetState


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class RangeOut(Out):
    start: datetime
    end: datetime


class Summary(RangeOut):
    """``start``/``end``: the month to date."""

    now: datetime
    currency: Literal["EUR"] = "EUR"
    burn_rate_eur_per_hour: Decimal
    running_instances: int
    windows: dict[str, Decimal]
    month_to_date_eur: Decimal
    month_end_projection_eur: Decimal


class CostItem(Out):
    key: str | None
    name: str | None = None
    cost_eur: Decimal


class CostsOut(RangeOut):
    group_by: str
    total_eur: Decimal
    items: list[CostItem]


class SeriesPoint(Out):
    start: datetime
    end: datetime
    cost_eur: Decimal
    cumulative_eur: Decimal


class SeriesOut(RangeOut):
    bucket: str
    total_eur: Decimal
    items: list[SeriesPoint]


class ForecastOut(Out):
    now: datetime
    burn_rate_eur_per_hour: Decimal
    minimum_eur_per_hour: Decimal
    projected_eur_per_hour: Decimal
    horizons: dict[str, Decimal]
    month_to_date_eur: Decimal
    month_end_projection_eur: Decimal


class UnitCostItem(Out):
    deployment_id: uuid.UUID | None
    deployment: str | None
    cost_eur: Decimal
    idle_cost_eur: Decimal
    idle_share: Decimal | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    eur_per_million_tokens: Decimal | None
    price_override_input_eur_per_1m: Decimal | None
    price_override_output_eur_per_1m: Decimal | None


class UnitCostsOut(RangeOut):
    items: list[UnitCostItem]


class ChargebackItem(Out):
    deployment_id: uuid.UUID | None
    deployment: str | None
    org_id: uuid.UUID | None
    org: str | None
    tokens: int
    cost_eur: Decimal


class OrgCharge(Out):
    org_id: uuid.UUID | None
    org: str | None
    cost_eur: Decimal


class ChargebackOut(RangeOut):
    total_eur: Decimal
    items: list[ChargebackItem]
    by_org: list[OrgCharge]


class UsageItem(Out):
    key: dict[str, str | None]
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageOut(RangeOut):
    group_by: list[str]
    items: list[UsageItem]


class BudgetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: BudgetScope
    target_id: uuid.UUID
    monthly_eur: Decimal = Field(gt=0, max_digits=18, decimal_places=6)
    warning_ratio: Decimal = Field(default=Decimal("0.8"), gt=0, lt=1, decimal_places=4)


class BudgetPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    monthly_eur: Decimal | None = Field(default=None, gt=0, max_digits=18, decimal_places=6)
    warning_ratio: Decimal | None = Field(default=None, gt=0, lt=1, decimal_places=4)


class BudgetOut(Out):
    id: uuid.UUID
    scope: BudgetScope
    target_id: uuid.UUID
    org_id: uuid.UUID | None
    monthly_eur: Decimal
    warning_ratio: Decimal
    state: BudgetState
    state_changed_at: datetime | None
    spent_eur: Decimal | None
    ratio: Decimal | None
    evaluated_at: datetime | None
    created_at: datetime


class BudgetList(BaseModel):
    items: list[BudgetOut]
