"""Routes under /api/catalog."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from control_api.deps import AdminDep, NowDep, PrincipalDep, SessionDep, access
from control_api.schemas.catalog import (
    InstanceTypeDetail,
    InstanceTypeList,
    InstanceTypeOut,
    PriceIn,
    PriceOut,
    ProviderList,
    ProviderOut,
    ZoneList,
    ZoneOut,
)
from control_api.services import catalog as svc

router = APIRouter(prefix="/api/catalog", tags=["catalog"])


# Codes are short identifiers; longer values are malformed rather than unknown.
CodeQuery = Annotated[str | None, Query(min_length=1, max_length=64)]


@router.get("/providers", response_model=ProviderList, openapi_extra=access("user"))
def list_providers(_: PrincipalDep, db: SessionDep) -> ProviderList:
    """Cloud providers of the catalog, with their billing rule."""
    return ProviderList(items=[ProviderOut.of(p) for p in svc.list_providers(db)])


@router.get("/zones", response_model=ZoneList, openapi_extra=access("user"))
def list_zones(_: PrincipalDep, db: SessionDep, provider: CodeQuery = None) -> ZoneList:
    """Zones, optionally of one provider (an unknown provider yields an empty list)."""
    return ZoneList(items=[ZoneOut.of(z) for z in svc.list_zones(db, provider)])


@router.get("/instance-types", response_model=InstanceTypeList, openapi_extra=access("user"))
def list_instance_types(
    _: PrincipalDep, db: SessionDep, now: NowDep,
    provider: CodeQuery = None, zone: CodeQuery = None, gpu_model: CodeQuery = None,
) -> InstanceTypeList:
    """Instance types with the hourly EUR price in force now and their zones."""
    views = svc.list_instance_types(db, now, provider=provider, zone=zone, gpu_model=gpu_model)
    return InstanceTypeList(items=[InstanceTypeOut.of(v) for v in views])


@router.get("/instance-types/{type_id}", response_model=InstanceTypeDetail,
            openapi_extra=access("user"))
def get_instance_type(type_id: uuid.UUID, _: PrincipalDep, db: SessionDep,
                      now: NowDep) -> InstanceTypeDetail:
    """One instance type, with the price in force now and every price version."""
    return InstanceTypeDetail.of(svc.get_instance_type(db, type_id, now))


@router.post("/instance-types/{type_id}/prices", response_model=PriceOut, status_code=201,
             openapi_extra=access("platform_admin"))
def add_price(type_id: uuid.UUID, body: PriceIn, admin: AdminDep, db: SessionDep,
              now: NowDep) -> PriceOut:
    """Add a price version taking effect at ``effective_from`` (409 if one already does)."""
    row = svc.add_price(db, type_id, body.hourly_eur, body.effective_from, now=now,
                        user_id=admin.user_id)
    return PriceOut.of(row)
