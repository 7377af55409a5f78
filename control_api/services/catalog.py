"""The GPU catalog: providers, zones, instance types and their prices in force.

A type's price is versioned by ``effective_from``: the price in force at ``now`` is the row with
the greatest ``effective_from <= now``. A price added for a future instant changes nothing until
that instant comes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from control_api.errors import Conflict, NotFound
from core.models import (
    ActionLog,
    InstanceType,
    InstanceTypePrice,
    Provider,
    Zone,
    ZoneAvailability,
)


@dataclass(frozen=True)
class InstanceTypeView:
    """An instance type with the price in force at the time it was read."""

    instance_type: InstanceType
    price: InstanceTypePrice | None
    availability: list[ZoneAvailability]


def price_at(prices: list[InstanceTypePrice], at: datetime) -> InstanceTypePrice | None:
    """The price row in force at ``at``: the greatest ``effective_from <= at``, or None."""
    best: InstanceTypePrice | None = None
    for p in prices:
        if p.effective_from <= at and (best is None or p.effective_from > best.effective_from):
            best = p
    return best


def list_providers(session: Session) -> list[Provider]:
    return list(session.scalars(select(Provider).order_by(Provider.code)))


def list_zones(session: Session, provider: str | None = None) -> list[Zone]:
    stmt = select(Zone).order_by(Zone.provider_code, Zone.code)
    if provider is not None:
        stmt = stmt.where(Zone.provider_code == provider)
    return list(session.scalars(stmt))


def _view(it: InstanceType, now: datetime) -> InstanceTypeView:
    return InstanceTypeView(
        instance_type=it,
        price=price_at(it.prices, now),
        availability=sorted(it.availability, key=lambda a: a.zone_code),
    )


def list_instance_types(
    session: Session,
    now: datetime,
    *,
    provider: str | None = None,
    zone: str | None = None,
    gpu_model: str | None = None,
) -> list[InstanceTypeView]:
    """Instance types matching the filters, each with its price in force at ``now``.

    Unknown filter values simply match nothing. ``gpu_model`` is matched case-insensitively.
    """
    stmt = (
        select(InstanceType)
        .options(selectinload(InstanceType.prices), selectinload(InstanceType.availability))
        .order_by(InstanceType.provider_code, InstanceType.name)
    )
    if provider is not None:
        stmt = stmt.where(InstanceType.provider_code == provider)
    if gpu_model is not None:
        stmt = stmt.where(func.lower(InstanceType.gpu_model) == gpu_model.lower())
    if zone is not None:
        stmt = stmt.where(
            InstanceType.id.in_(
                select(ZoneAvailability.instance_type_id).where(ZoneAvailability.zone_code == zone)
            )
        )
    return [_view(it, now) for it in session.scalars(stmt)]


def get_instance_type(session: Session, type_id: uuid.UUID, now: datetime) -> InstanceTypeView:
    it = session.get(InstanceType, type_id)
    if it is None:
        raise NotFound("instance type not found")
    return _view(it, now)


def add_price(
    session: Session,
    type_id: uuid.UUID,
    hourly_eur: Decimal,
    effective_from: datetime,
    *,
    now: datetime,
    user_id: uuid.UUID | None = None,
) -> InstanceTypePrice:
    """Add a price version to an instance type and log it; 409 if one starts at that instant."""
    it = session.get(InstanceType, type_id)
    if it is None:
        raise NotFound("instance type not found")
    duplicate = session.scalar(
        select(InstanceTypePrice.id).where(
            InstanceTypePrice.instance_type_id == type_id,
            InstanceTypePrice.effective_from == effective_from,
        )
    )
    if duplicate is not None:
        raise Conflict(f"a price for {it.name} already takes effect at "
                       f"{effective_from.isoformat()}", code="price_exists")
    previous = price_at(it.prices, now)
    row = InstanceTypePrice(instance_type_id=type_id, effective_from=effective_from,
                            hourly_eur=hourly_eur)
    try:
        # A savepoint, so a concurrent insert of the same instant is a 409, not a broken session.
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        raise Conflict(f"a price for {it.name} already takes effect at "
                       f"{effective_from.isoformat()}", code="price_exists") from None
    session.add(
        ActionLog(
            type="catalog.price_added", component="control_api", status="success",
            user_id=user_id, created_at=now,
            details={
                "instance_type_id": str(type_id), "provider": it.provider_code,
                "instance_type": it.name, "hourly_eur": format(hourly_eur, "f"),
                "effective_from": effective_from.isoformat(),
                "previous_hourly_eur": format(previous.hourly_eur, "f") if previous else None,
            },
        )
    )
    session.flush()
    session.refresh(it)
    return row
