"""Typed client of /api/finops, on top of :class:`control_api.client.api.ControlApiClient`.

Answers are parsed with the server's response models (:mod:`control_api.schemas.finops`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from control_api.client.api import ControlApiClient
from control_api.schemas.finops import (
    BudgetList,
    BudgetOut,
    ChargebackOut,
    CostsOut,
    ForecastOut,
    SeriesOut,
    Summary,
    UnitCostsOut,
    UsageRecordList,
)


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
              start: datetime | None = None, end: datetime | None = None) -> CostsOut:
        params = {**_range(window, start, end), "group_by": group_by}
        return CostsOut.model_validate(self.api.request("GET", "/api/finops/costs", params=params))

    def series(self, window: str | None = None, bucket: str = "hour", *,
               start: datetime | None = None, end: datetime | None = None) -> SeriesOut:
        params = {**_range(window, start, end), "bucket": bucket}
        return SeriesOut.model_validate(
            self.api.request("GET", "/api/finops/series", params=params))

    def forecast(self) -> ForecastOut:
        return ForecastOut.model_validate(self.api.request("GET", "/api/finops/forecast"))

    def unit_costs(self, window: str | None = None, *, start: datetime | None = None,
                   end: datetime | None = None, split_overhead: bool = False) -> UnitCostsOut:
        params = _range(window, start, end)
        if split_overhead:
            params["split_overhead"] = "true"
        return UnitCostsOut.model_validate(self.api.request(
            "GET", "/api/finops/unit-costs", params=params))

    def chargeback(self, window: str | None = None, *, start: datetime | None = None,
                   end: datetime | None = None, split_overhead: bool = False) -> ChargebackOut:
        params = _range(window, start, end)
        if split_overhead:
            params["split_overhead"] = "true"
        return ChargebackOut.model_validate(self.api.request(
            "GET", "/api/finops/chargeback", params=params))

    def usage_records(self, *, request_id: str | None = None, key_id: uuid.UUID | None = None,
                      since: datetime | None = None, limit: int | None = None,
                      cursor: str | None = None) -> UsageRecordList:
        params: dict[str, Any] = {}
        for name, value in (("request_id", request_id), ("key_id", key_id),
                            ("since", since.isoformat() if since else None), ("limit", limit),
                            ("cursor", cursor)):
            if value is not None:
                params[name] = str(value)
        return UsageRecordList.model_validate(self.api.request(
            "GET", "/api/finops/usage/records", params=params))

    def budgets(self, scope: str | None = None) -> list[BudgetOut]:
        body = self.api.request("GET", "/api/finops/budgets",
                                params={"scope": scope} if scope else None)
        return BudgetList.model_validate(body).items

    def create_budget(self, scope: str, target_id: uuid.UUID | str, monthly_eur: Decimal,
                      warning_ratio: Decimal | None = None) -> BudgetOut:
        body: dict[str, Any] = {"scope": scope, "target_id": str(target_id),
                                "monthly_eur": str(monthly_eur)}
        if warning_ratio is not None:
            body["warning_ratio"] = str(warning_ratio)
        return BudgetOut.model_validate(self.api.request("POST", "/api/finops/budgets", json=body))

    def update_budget(self, budget_id: uuid.UUID | str, *, monthly_eur: Decimal | None = None,
                      warning_ratio: Decimal | None = None) -> BudgetOut:
        body: dict[str, Any] = {}
        if monthly_eur is not None:
            body["monthly_eur"] = str(monthly_eur)
        if warning_ratio is not None:
            body["warning_ratio"] = str(warning_ratio)
        return BudgetOut.model_validate(self.api.request(
            "PATCH", f"/api/finops/budgets/{budget_id}", json=body))

    def delete_budget(self, budget_id: uuid.UUID | str) -> None:
        self.api.request("DELETE", f"/api/finops/budgets/{budget_id}")
