"""Typed client of /api/finops, on top of :class:`control_api.client.api.ControlApiClient`."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from control_api.client.api import ControlApiClient


class _Model(BaseModel):
    # Unknown fields are kept: a newer server never breaks an older client.
    model_config = ConfigDict(extra="allow")


class Summary(_Model):
    start: datetime
    end: datetime
    now: datetime
    burn_rate_eur_per_hour: Decimal
    running_instances: int
    windows: dict[str, Decimal]
    month_to_date_eur: Decimal
    month_end_projection_eur: Decimal


class CostItem(_Model):
    key: str | None = None
    name: str | None = None
    cost_eur: Decimal


class Costs(_Model):
    start: datetime
    end: datetime
    group_by: str
    total_eur: Decimal
    items: list[CostItem] = Field(default_factory=list)


class SeriesPoint(_Model):
    start: datetime
    end: datetime
    cost_eur: Decimal
    cumulative_eur: Decimal


class Series(_Model):
    start: datetime
    end: datetime
    bucket: str
    total_eur: Decimal
    items: list[SeriesPoint] = Field(default_factory=list)


class Forecast(_Model):
    now: datetime
    burn_rate_eur_per_hour: Decimal
    minimum_eur_per_hour: Decimal
    projected_eur_per_hour: Decimal
    horizons: dict[str, Decimal]
    month_to_date_eur: Decimal
    month_end_projection_eur: Decimal


class UnitCost(_Model):
    deployment_id: uuid.UUID | None = None
    deployment: str | None = None
    cost_eur: Decimal
    idle_cost_eur: Decimal
    idle_share: Decimal | None = None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    eur_per_million_tokens: Decimal | None = None
    price_override_input_eur_per_1m: Decimal | None = None
    price_override_output_eur_per_1m: Decimal | None = None


class UnitCosts(_Model):
    start: datetime
    end: datetime
    items: list[UnitCost] = Field(default_factory=list)


class ChargebackLine(_Model):
    deployment_id: uuid.UUID | None = None
    deployment: str | None = None
    org_id: uuid.UUID | None = None
    org: str | None = None
    tokens: int
    cost_eur: Decimal


class OrgCharge(_Model):
    org_id: uuid.UUID | None = None
    org: str | None = None
    cost_eur: Decimal


class Chargeback(_Model):
    start: datetime
    end: datetime
    total_eur: Decimal
    items: list[ChargebackLine] = Field(default_factory=list)
    by_org: list[OrgCharge] = Field(default_factory=list)


class Budget(_Model):
    id: uuid.UUID
    scope: str
    target_id: uuid.UUID
    org_id: uuid.UUID | None = None
    monthly_eur: Decimal
    warning_ratio: Decimal
    state: str
    state_changed_at: datetime | None = None
    spent_eur: Decimal | None = None
    ratio: Decimal | None = None
    evaluated_at: datetime | None = None


def _range(window: str | None, start: datetime | None, end: datetime | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if window:
        params["window"] = window
    if start is not None:
        params["start"] = start.isoformat()
    if end is not None:
        params["end"] = end.isoformat()
    return params


class FinopsClient:
    """The /api/finops routes; errors are :class:`control_api.client.api.ControlApiError`."""

    def __init__(self, api: ControlApiClient) -> None:
        self.api = api

    def summary(self) -> Summary:
        return Summary.model_validate(self.api.request("GET", "/api/finops/summary"))

    def costs(self, window: str | None = None, group_by: str = "none", *,
              start: datetime | None = None, end: datetime | None = None) -> Costs:
        params = {**_range(window, start, end), "group_by": group_by}
        return Costs.model_validate(self.api.request("GET", "/api/finops/costs", params=params))

    def series(self, window: str | None = None, bucket: str = "hour", *,
               start: datetime | None = None, end: datetime | None = None) -> Series:
        params = {**_range(window, start, end), "bucket": bucket}
        return Series.model_validate(self.api.request("GET", "/api/finops/series", params=params))

    def forecast(self) -> Forecast:
        return Forecast.model_validate(self.api.request("GET", "/api/finops/forecast"))

    def unit_costs(self, window: str | None = None, *, start: datetime | None = None,
                   end: datetime | None = None) -> UnitCosts:
        return UnitCosts.model_validate(self.api.request(
            "GET", "/api/finops/unit-costs", params=_range(window, start, end)))

    def chargeback(self, window: str | None = None, *, start: datetime | None = None,
                   end: datetime | None = None) -> Chargeback:
        return Chargeback.model_validate(self.api.request(
            "GET", "/api/finops/chargeback", params=_range(window, start, end)))

    def budgets(self, scope: str | None = None) -> list[Budget]:
        body = self.api.request("GET", "/api/finops/budgets",
                                params={"scope": scope} if scope else None)
        return [Budget.model_validate(b) for b in body["items"]]

    def create_budget(self, scope: str, target_id: uuid.UUID | str, monthly_eur: Decimal,
                      warning_ratio: Decimal | None = None) -> Budget:
        body: dict[str, Any] = {"scope": scope, "target_id": str(target_id),
                                "monthly_eur": str(monthly_eur)}
        if warning_ratio is not None:
            body["warning_ratio"] = str(warning_ratio)
        return Budget.model_validate(self.api.request("POST", "/api/finops/budgets", json=body))

    def update_budget(self, budget_id: uuid.UUID | str, *, monthly_eur: Decimal | None = None,
                      warning_ratio: Decimal | None = None) -> Budget:
        body: dict[str, Any] = {}
        if monthly_eur is not None:
            body["monthly_eur"] = str(monthly_eur)
        if warning_ratio is not None:
            body["warning_ratio"] = str(warning_ratio)
        return Budget.model_validate(self.api.request(
            "PATCH", f"/api/finops/budgets/{budget_id}", json=body))

    def delete_budget(self, budget_id: uuid.UUID | str) -> None:
        self.api.request("DELETE", f"/api/finops/budgets/{budget_id}")
