"""Request and response schemas of /api/catalog."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from control_api.schemas.enums import Availability
from control_api.schemas.fields import UtcDatetime

if TYPE_CHECKING:  # server-side only: the clients import these schemas without SQLAlchemy
    from control_api.services.catalog import InstanceTypeView
    from core.models import InstanceTypePrice, Provider, Zone


def money_str(value: Decimal) -> str:
    """EUR as a plain decimal string with at least two decimals ("0.75", "6.00", "23.028").

    Postgres returns NUMERIC(18, 6) values padded to six places; trimming them makes the JSON the
    same on every backend.
    """
    text = format(value.normalize(), "f")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


# Money in responses: a JSON string, never a float.
MoneyOut = Annotated[Decimal, PlainSerializer(money_str, return_type=str, when_used="always")]


class ProviderOut(BaseModel):
    code: str
    name: str
    billing_granularity_seconds: int
    billing_minimum_seconds: int

    @classmethod
    def of(cls, p: Provider) -> ProviderOut:
        return cls(code=p.code, name=p.name,
                   billing_granularity_seconds=p.billing_granularity_seconds,
                   billing_minimum_seconds=p.billing_minimum_seconds)


class ProviderList(BaseModel):
    items: list[ProviderOut]


class ZoneOut(BaseModel):
    code: str
    region: str
    provider: str

    @classmethod
    def of(cls, z: Zone) -> ZoneOut:
        return cls(code=z.code, region=z.region_code, provider=z.provider_code)


class ZoneList(BaseModel):
    items: list[ZoneOut]


class ZoneAvailabilityOut(BaseModel):
    zone: str
    availability: Availability


class PriceOut(BaseModel):
    id: uuid.UUID
    instance_type_id: uuid.UUID
    hourly_eur: MoneyOut
    effective_from: datetime

    @classmethod
    def of(cls, p: InstanceTypePrice) -> PriceOut:
        return cls(id=p.id, instance_type_id=p.instance_type_id, hourly_eur=p.hourly_eur,
                   effective_from=p.effective_from)


class InstanceTypeOut(BaseModel):
    id: uuid.UUID
    provider: str
    name: str
    gpu_count: int
    gpu_model: str | None
    gpu_vram_gb: int
    vcpus: int
    ram_gb: int
    ray_resources: dict[str, Any] | None
    # The price in force now; null only when every known price starts in the future.
    hourly_eur: MoneyOut | None
    price_effective_from: datetime | None
    zones: list[ZoneAvailabilityOut]

    @classmethod
    def of(cls, v: InstanceTypeView) -> InstanceTypeOut:
        return cls(**_type_fields(v))


def _type_fields(v: InstanceTypeView) -> dict[str, Any]:
    it = v.instance_type
    return {
        "id": it.id, "provider": it.provider_code, "name": it.name, "gpu_count": it.gpu_count,
        "gpu_model": it.gpu_model, "gpu_vram_gb": it.gpu_vram_gb, "vcpus": it.vcpus,
        "ram_gb": it.ram_gb, "ray_resources": it.ray_resources,
        "hourly_eur": v.price.hourly_eur if v.price else None,
        "price_effective_from": v.price.effective_from if v.price else None,
        "zones": [ZoneAvailabilityOut(zone=a.zone_code, availability=a.availability)
                  for a in v.availability],
    }


class InstanceTypeDetail(InstanceTypeOut):
    # Every price version, oldest first, including scheduled (future) ones.
    prices: list[PriceOut]

    @classmethod
    def of(cls, v: InstanceTypeView) -> InstanceTypeDetail:
        prices = sorted(v.instance_type.prices, key=lambda p: p.effective_from)
        return cls(**_type_fields(v), prices=[PriceOut.of(p) for p in prices])


class InstanceTypeList(BaseModel):
    items: list[InstanceTypeOut]


class PriceIn(BaseModel):
    """A new price version for an instance type."""

    model_config = ConfigDict(extra="forbid")

    # NUMERIC(18, 6): at most 6 decimals and 12 integer digits.
    hourly_eur: Decimal = Field(gt=0, max_digits=18, decimal_places=6,
                                description="EUR per hour, excluding VAT, as a decimal string")
    effective_from: UtcDatetime = Field(
        description="When this price takes effect (timezone required)")
