"""Routes under /api/finops: costs, series, forecast, unit costs, chargeback, usage, budgets.

Ranges: ``window`` (minute, hour, day, 7d, 30d, 365d, month = month to date) or ``start`` and
optional ``end`` (default now), at most 5 years; naive datetimes are UTC. Access levels: see
:mod:`control_api.services.finops`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from control_api.deps import AdminDep, PrincipalDep, SessionDep, access
from control_api.errors import Unprocessable
from control_api.schemas import finops as sch
from control_api.schemas.fields import DEFAULT_LIMIT, MAX_LIMIT
from control_api.services import finops as svc
from control_api.services import finops_records as records
from control_api.services import finops_webhooks as webhooks
from core.models import BudgetScope

router = APIRouter(prefix="/api/finops", tags=["finops"])

WindowQ = Annotated[str | None, Query(
    max_length=16, description="minute, hour, day, 7d, 30d, 365d or month (to date)")]
StartQ = Annotated[datetime | None, Query(description="Range start (UTC ISO-8601)")]
EndQ = Annotated[datetime | None, Query(description="Range end (default now)")]
SplitQ = Annotated[bool, Query(description="Share platform overhead (head, system nodes) "
                                           "out across deployments by token share")]


def _now(request: Request) -> datetime:
    return svc.clock_of(request.app.state)()


@router.get("/summary", response_model=sch.Summary, openapi_extra=access("platform_admin"))
def get_summary(request: Request, _: AdminDep, db: SessionDep) -> sch.Summary:
    """Burn rate, spend over the standard windows, month to date and month-end projection."""
    return svc.summary(db, _now(request))


@router.get("/costs", response_model=sch.CostsOut, openapi_extra=access("platform_admin"))
def get_costs(request: Request, _: AdminDep, db: SessionDep, window: WindowQ = None,
              start: StartQ = None, end: EndQ = None,
              group_by: Annotated[str, Query(max_length=32)] = "none") -> sch.CostsOut:
    """Cost of a range, by provider, zone, instance_type, instance, deployment, org or none."""
    now = _now(request)
    return svc.costs(db, now, svc.resolve(now, window, start, end), group_by)


@router.get("/series", response_model=sch.SeriesOut, openapi_extra=access("platform_admin"))
def get_series(request: Request, _: AdminDep, db: SessionDep, window: WindowQ = None,
               start: StartQ = None, end: EndQ = None,
               bucket: Annotated[str, Query(max_length=16)] = "hour") -> sch.SeriesOut:
    """Cost per minute, hour or day bucket, with the cumulative cost."""
    now = _now(request)
    return svc.series(db, now, svc.resolve(now, window, start, end), bucket)


@router.get("/forecast", response_model=sch.ForecastOut, openapi_extra=access("platform_admin"))
def get_forecast(request: Request, _: AdminDep, db: SessionDep) -> sch.ForecastOut:
    """Projected spend over 1h/24h/30d/365d and at month end."""
    return svc.forecast(db, _now(request))


@router.get("/unit-costs", response_model=sch.UnitCostsOut, openapi_extra=access("user"))
def get_unit_costs(request: Request, principal: PrincipalDep, db: SessionDep,
                   window: WindowQ = None, start: StartQ = None,
                   end: EndQ = None, split_overhead: SplitQ = False) -> sch.UnitCostsOut:
    """EUR per million tokens per deployment (attributed node cost, idle included), with the
    idle share of the cost; platform overhead is its own line (admins) unless split."""
    now = _now(request)
    return svc.unit_costs(db, principal, now,
                          svc.resolve(now, window, start, end, default="month"), split_overhead)


@router.get("/chargeback", response_model=sch.ChargebackOut, openapi_extra=access("user"))
def get_chargeback(request: Request, principal: PrincipalDep, db: SessionDep,
                   window: WindowQ = None, start: StartQ = None,
                   end: EndQ = None, split_overhead: SplitQ = False) -> sch.ChargebackOut:
    """Attributed GPU cost per deployment split across orgs by token share (sums to the
    cent); platform overhead is its own line unless split."""
    now = _now(request)
    return svc.chargeback(db, principal, now,
                          svc.resolve(now, window, start, end, default="month"), split_overhead)


@router.get("/usage", response_model=sch.UsageOut, openapi_extra=access("user"))
def get_usage(request: Request, principal: PrincipalDep, db: SessionDep,
              window: WindowQ = None, start: StartQ = None, end: EndQ = None,
              group_by: Annotated[list[str] | None, Query(max_length=5)] = None
              ) -> sch.UsageOut:
    """Requests and tokens by api_key, user, org, model and/or deployment."""
    now = _now(request)
    return svc.usage(db, principal, svc.resolve(now, window, start, end, default="month"),
                     group_by or ["deployment"])


RequestIdQ = Annotated[str | None, Query(min_length=1, max_length=128)]
KeyIdQ = Annotated[uuid.UUID | None, Query()]
SinceQ = Annotated[datetime | None, Query(description="Records at or after (UTC ISO-8601)")]


@router.get("/usage/records", response_model=sch.UsageRecordList, openapi_extra=access("user"))
def get_usage_records(request: Request, principal: PrincipalDep, db: SessionDep,
                      request_id: RequestIdQ = None, key_id: KeyIdQ = None,
                      since: SinceQ = None,
                      limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
                      cursor: Annotated[str | None, Query(max_length=256)] = None
                      ) -> sch.UsageRecordList:
    """Individual usage records, newest first (non-admins: their orgs' records);
    ``next_cursor`` fetches the following page."""
    return records.list_records(db, principal, _now(request), request_id=request_id,
                                key_id=key_id, since=since, limit=limit, cursor=cursor)


@router.get("/usage/export", openapi_extra=access("user"),
            responses={200: {"content": {"application/x-ndjson": {}}}})
def export_usage(request: Request, principal: PrincipalDep, request_id: RequestIdQ = None,
                 key_id: KeyIdQ = None, since: SinceQ = None,
                 format: Annotated[str, Query(max_length=16)] = "ndjson"  # noqa: A002
                 ) -> StreamingResponse:
    """Every matching usage record (same fields as ``/usage/records``), oldest first, streamed
    as NDJSON (one JSON object a line)."""
    if format != "ndjson":
        raise Unprocessable("unknown export format; expected ndjson")
    return StreamingResponse(
        records.export_ndjson(request.app.state.sessionmaker, principal, _now(request),
                              request_id=request_id, key_id=key_id, since=since),
        media_type="application/x-ndjson",
        headers={"content-disposition": 'attachment; filename="usage.ndjson"'})


@router.get("/budgets", response_model=sch.BudgetList, openapi_extra=access("user"))
def list_budgets(request: Request, principal: PrincipalDep, db: SessionDep,
                 scope: BudgetScope | None = None) -> sch.BudgetList:
    """Budgets as the background job last evaluated them; non-admins see their orgs'."""
    return svc.list_budgets(db, principal, _now(request), scope)


@router.post("/budgets", response_model=sch.BudgetOut, status_code=201,
             openapi_extra=access("org:admin"))
def create_budget(request: Request, principal: PrincipalDep, db: SessionDep,
                  body: sch.BudgetCreate) -> sch.BudgetOut:
    """Create a monthly budget (deployment budgets: platform admin only)."""
    return svc.create_budget(db, principal, body, _now(request))


@router.get("/budgets/{budget_id}", response_model=sch.BudgetOut, openapi_extra=access("user"))
def show_budget(request: Request, principal: PrincipalDep, db: SessionDep,
                budget_id: uuid.UUID) -> sch.BudgetOut:
    return svc.show_budget(db, principal, budget_id, _now(request))


@router.patch("/budgets/{budget_id}", response_model=sch.BudgetOut,
              openapi_extra=access("org:admin"))
def update_budget(request: Request, principal: PrincipalDep, db: SessionDep,
                  budget_id: uuid.UUID, body: sch.BudgetPatch) -> sch.BudgetOut:
    return svc.update_budget(db, principal, budget_id, body, _now(request))


@router.delete("/budgets/{budget_id}", status_code=204, openapi_extra=access("org:admin"))
def delete_budget(principal: PrincipalDep, db: SessionDep, budget_id: uuid.UUID) -> Response:
    svc.delete_budget(db, principal, budget_id)
    return Response(status_code=204)


@router.get("/webhooks", response_model=sch.WebhookList, openapi_extra=access("user"))
def list_webhooks(principal: PrincipalDep, db: SessionDep) -> sch.WebhookList:
    """Budget notification webhooks (non-admins: their orgs'); URLs shown without their path."""
    return webhooks.list_(db, principal)


@router.post("/webhooks", response_model=sch.WebhookOut, status_code=201,
             openapi_extra=access("org:admin"))
def create_webhook(principal: PrincipalDep, db: SessionDep,
                   body: sch.WebhookCreate) -> sch.WebhookOut:
    """Add a webhook for budget thresholds (generic JSON or Slack), HMAC-signed."""
    return webhooks.create(db, principal, body)


@router.delete("/webhooks/{webhook_id}", status_code=204, openapi_extra=access("org:admin"))
def delete_webhook(principal: PrincipalDep, db: SessionDep, webhook_id: uuid.UUID) -> Response:
    webhooks.delete(db, principal, webhook_id)
    return Response(status_code=204)
