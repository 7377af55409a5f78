"""Catalog sync: store a cloud's live instance types, prices and availability.

From :meth:`core.clouds.Cloud.catalog` offers (one per type x zone):
- instance types are upserted (GPU count/model/VRAM, vCPUs, RAM; ``ray_resources`` are kept, and
  derived only for a new GPU type: ``{"GPU": n, "accelerator_type:<model>": 1}``);
- a price row (``effective_from = now``) is added only when the hourly price differs from the
  one in force now, so past prices -- and every cost computed with them -- stay as they were;
- zone availability is upserted for every (type, zone) offered; unknown zones are created
  (region = the zone without its last ``-n``).
Our price model has one price per type: when zones disagree, the first zone of the cloud's order
wins and the disagreement is reported.

Run on the control-API host against its database (``inventiv catalog sync``), as an admin
command: the control API stays the only writer of the database, from its own code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.clouds import Offer
from core.db import utcnow
from core.models import (
    ActionLog,
    Availability,
    InstanceType,
    InstanceTypePrice,
    Provider,
    Region,
    Zone,
    ZoneAvailability,
)

PROVIDER_NAMES = {"scaleway": "Scaleway", "local": "Local machine"}


@dataclass
class PriceChange:
    instance_type: str
    old_hourly_eur: str | None
    new_hourly_eur: str
    effective_from: str


@dataclass
class AvailabilityChange:
    instance_type: str
    zone: str
    old: str | None
    new: str


@dataclass
class CatalogSyncReport:
    """What a sync changed (or, in dry-run, would change)."""

    provider: str
    dry_run: bool
    at: str
    offers: int = 0
    types_created: list[str] = field(default_factory=list)
    types_updated: list[str] = field(default_factory=list)
    prices_changed: list[PriceChange] = field(default_factory=list)
    availability_changed: list[AvailabilityChange] = field(default_factory=list)
    zones_created: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.types_created or self.types_updated or self.prices_changed
                     or self.availability_changed or self.zones_created)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["changed"] = self.changed
        return data


def _price_in_force(it: InstanceType, at: datetime) -> InstanceTypePrice | None:
    current = None
    for price in it.prices:  # ordered by effective_from
        if price.effective_from <= at:
            current = price
    return current


def _availability(value: str) -> Availability:
    try:
        return Availability(value)
    except ValueError:
        return Availability.UNKNOWN


def _by_type(offers: Iterable[Offer]) -> dict[str, list[Offer]]:
    out: dict[str, list[Offer]] = {}
    for offer in offers:
        out.setdefault(offer.instance_type, []).append(offer)
    return out


def sync_catalog(session: Session, provider_code: str, offers: Iterable[Offer], *,
                 now: datetime | None = None, dry_run: bool = False,
                 gpu_only: bool = False) -> CatalogSyncReport:
    """Apply ``offers`` of ``provider_code`` to the catalog tables. The caller commits (or, in
    ``dry_run``, rolls back: nothing is written then -- the session is only flushed)."""
    now = now or utcnow()
    offers = [o for o in offers if not gpu_only or o.gpu_count > 0]
    report = CatalogSyncReport(provider=provider_code, dry_run=dry_run, at=now.isoformat(),
                               offers=len(offers))
    provider = session.get(Provider, provider_code)
    if provider is None:
        provider = Provider(code=provider_code,
                            name=PROVIDER_NAMES.get(provider_code, provider_code))
        session.add(provider)
        session.flush()
    for zone in sorted({o.zone for o in offers}):
        if session.get(Zone, zone) is None:
            region = zone.rsplit("-", 1)[0]
            if session.get(Region, region) is None:
                session.add(Region(code=region, provider_code=provider_code))
                session.flush()
            session.add(Zone(code=zone, region_code=region, provider_code=provider_code))
            report.zones_created.append(zone)
    session.flush()

    existing = {it.name: it for it in session.scalars(
        select(InstanceType).where(InstanceType.provider_code == provider_code))}
    for name, type_offers in sorted(_by_type(offers).items()):
        first = type_offers[0]
        # The table keeps whole GB; an offer may carry a float (its JSON form does).
        vram = round(first.gpu_vram_gb) if first.gpu_vram_gb is not None else None
        it = existing.get(name)
        if it is None:
            it = InstanceType(provider_code=provider_code, name=name, gpu_count=first.gpu_count,
                              gpu_model=first.gpu_model, gpu_vram_gb=vram or 0,
                              vcpus=first.vcpus or 0, ram_gb=first.ram_gb or 0)
            if first.gpu_count and first.gpu_model:
                it.ray_resources = {"GPU": first.gpu_count,
                                    f"accelerator_type:{first.gpu_model}": 1}
            session.add(it)
            session.flush()
            report.types_created.append(name)
        else:
            updated = False
            for attr, value in (("gpu_count", first.gpu_count), ("gpu_model", first.gpu_model),
                                ("gpu_vram_gb", vram), ("vcpus", first.vcpus),
                                ("ram_gb", first.ram_gb)):
                if value is not None and getattr(it, attr) != value:
                    setattr(it, attr, value)
                    updated = True
            if updated:
                report.types_updated.append(name)
        prices = {o.hourly_eur for o in type_offers}
        if len(prices) > 1:
            report.warnings.append(
                f"{name}: prices differ by zone ({', '.join(sorted(map(str, prices)))}); "
                f"kept {first.hourly_eur} from {first.zone}")
        new_price = Decimal(first.hourly_eur)
        current = _price_in_force(it, now)
        if current is None or current.hourly_eur != new_price:
            session.add(InstanceTypePrice(instance_type_id=it.id, effective_from=now,
                                          hourly_eur=new_price))
            report.prices_changed.append(PriceChange(
                name, str(current.hourly_eur) if current else None, str(new_price),
                now.isoformat()))
        known = {a.zone_code: a for a in it.availability}
        for offer in type_offers:
            value = _availability(offer.availability)
            row = known.get(offer.zone)
            if row is None:
                session.add(ZoneAvailability(instance_type_id=it.id, zone_code=offer.zone,
                                             availability=value, updated_at=now))
                report.availability_changed.append(
                    AvailabilityChange(name, offer.zone, None, value.value))
            else:
                if row.availability != value:
                    report.availability_changed.append(
                        AvailabilityChange(name, offer.zone, row.availability.value,
                                           value.value))
                    row.availability = value
                row.updated_at = now
        session.flush()
    if not dry_run:
        session.add(ActionLog(
            type="catalog.sync", component="catalog_sync", status="success", created_at=now,
            details={"provider": provider_code, "offers": report.offers,
                     "types_created": report.types_created,
                     "prices_changed": [asdict(p) for p in report.prices_changed],
                     "availability_changed": len(report.availability_changed),
                     "zones_created": report.zones_created}))
        session.flush()
    return report


def run_sync(maker: Any, provider_code: str, offers: Iterable[Offer], *,
             now: datetime | None = None, dry_run: bool = False,
             gpu_only: bool = False) -> CatalogSyncReport:
    """One transaction: committed, or rolled back in ``dry_run``."""
    session: Session = maker()
    try:
        report = sync_catalog(session, provider_code, offers, now=now, dry_run=dry_run,
                              gpu_only=gpu_only)
        if dry_run:
            session.rollback()
        else:
            session.commit()
        return report
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


__all__ = ["AvailabilityChange", "CatalogSyncReport", "PriceChange", "run_sync",
           "sync_catalog"]
