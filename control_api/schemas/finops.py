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
    """A monthly (UTC calendar month) budget; thresholds 50/80/100 % notify the webhooks once
    per month. Negative amounts, unknown scopes and currencies are 422s naming the field."""

    model_config = ConfigDict(extra="forbid")

    scope: BudgetScope
    target_id: uuid.UUID
    monthly_eur: Decimal = Field(gt=0, max_digits=18, decimal_places=6)
    warning_ratio: Decimal = Field(default=Decimal("0.8"), gt=0, lt=1, decimal_places=4)
    currency: Literal["EUR"] = "EUR"
    period: Literal["month"] = "month"


class BudgetPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    monthly_eur: Decimal | None = Field(default=None, gt=0, max_digits=18, decimal_places=6)
    warning_ratio: Decimal | None = Field(default=None, gt=0, lt=1, decimal_places=4)
    currency: Literal["EUR"] | None = None


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
    currency: Literal["EUR"] = "EUR"
    period: Literal["month"] = "month"


class BudgetList(BaseModel):
    items: list[BudgetOut]


class WebhookCreate(BaseModel):
    """A budget notification target: https (http only to a loopback host). ``org_id`` None:
    every budget's thresholds (platform admins only). ``secret`` signs each delivery
    (HMAC-SHA256); generated when omitted and shown once."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=8, max_length=2000)
    kind: Literal["generic", "slack"] = "generic"
    org_id: uuid.UUID | None = None
    secret: str | None = Field(default=None, min_length=16, max_length=200)


class WebhookOut(Out):
    """``url`` is shown as scheme://host/… (its path may carry a token); ``secret`` only in the
    answer to the creation."""

    id: uuid.UUID
    org_id: uuid.UUID | None
    url: str
    kind: str
    enabled: bool
    created_at: datetime
    secret: str | None = None


class WebhookList(BaseModel):
    items: list[WebhookOut]


class UsageRecordOut(Out):
    """One OpenAI-endpoint request as metered. ``cost_eur``: its tokens x the deployment's token
    price when it has one, else its token share of the deployment's attributed cost that UTC
    day (None when unknown)."""

    request_id: str
    api_key_id: uuid.UUID | None
    org_id: uuid.UUID | None
    user_id: uuid.UUID | None
    deployment: str | None
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    status: str
    streamed: bool
    ttft_ms: float | None
    latency_ms: float | None
    at: datetime
    cost_eur: Decimal | None


class UsageRecordList(BaseModel):
    items: list[UsageRecordOut]
    next_cursor: str | None = None
