"""First start: the admin user and org ``default``, and the GPU catalog seed."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from control_api.security import Passwords
from core import catalog as core_catalog
from core.catalog import Catalog, CatalogError
from core.models import (
    ActionLog,
    Availability,
    InstanceType,
    InstanceTypePrice,
    Membership,
    Org,
    Provider,
    Region,
    Role,
    User,
    Zone,
    ZoneAvailability,
)

DEFAULT_CATALOG = core_catalog.default_catalog_path()
# Prices of the seed are in force from this instant (before any instance can exist).
SEED_EFFECTIVE_FROM = datetime(2020, 1, 1, tzinfo=UTC)
DEFAULT_ORG = "default"


@dataclass(frozen=True)
class AdminBootstrap:
    created: bool
    username: str
    # Only set when the password was generated here (laptop default): printed once, never logged.
    generated_password: str | None = None


def ensure_admin(
    session: Session, passwords: Passwords, *, username: str, email: str, password: str | None,
) -> AdminBootstrap:
    """Create org ``default`` and its owner ``admin`` (a platform admin) if no user exists."""
    org = session.scalar(select(Org).where(Org.name == DEFAULT_ORG))
    if org is None:
        org = Org(name=DEFAULT_ORG, display_name="Default organisation")
        session.add(org)
        session.flush()
    if session.scalar(select(User.id).limit(1)) is not None:
        return AdminBootstrap(created=False, username=username)
    generated = None
    if not password:
        generated = password = secrets.token_urlsafe(18)
    user = User(username=username, email=email, password_hash=passwords.hash(password),
                is_platform_admin=True)
    session.add(user)
    session.flush()
    session.add(Membership(user_id=user.id, org_id=org.id, role=Role.OWNER))
    session.add(ActionLog(type="bootstrap.admin", component="control_api", status="success",
                          user_id=user.id, org_id=org.id, details={"username": username}))
    session.flush()
    return AdminBootstrap(created=True, username=username, generated_password=generated)


def load_catalog(path: Path | None = None) -> dict[str, Any]:
    """The catalog seed (default: the shipped one) in its mapping form, read and validated by
    :func:`core.catalog.load_catalog` (raises :class:`core.catalog.CatalogError`). Prices are
    exact ``Decimal``s. :func:`seed_catalog` takes this mapping or the typed catalog."""
    return core_catalog.load_catalog(path).model_dump()


def _typed(catalog: Catalog | Mapping[str, Any]) -> Catalog:
    if isinstance(catalog, Catalog):
        return catalog
    try:
        return Catalog.model_validate(dict(catalog))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise CatalogError(f"catalog {catalog.get('source') or '(mapping)'}: {where}: "
                           f"{first['msg']}") from e


def seed_catalog(session: Session, catalog: Catalog | Mapping[str, Any],
                 effective_from: datetime = SEED_EFFECTIVE_FROM) -> int:
    """Upsert providers, regions, zones, instance types, a price and availability. Idempotent.

    ``catalog`` is the typed seed (:func:`core.catalog.load_catalog`) or its mapping form.
    A price row is added only when the type has no price yet, so live-synced prices are kept.
    Returns the number of instance types created.
    """
    created = 0
    for p in _typed(catalog).providers:
        provider = session.get(Provider, p.code)
        if provider is None:
            provider = Provider(code=p.code, name=p.display_name)
            session.add(provider)
        provider.billing_granularity_seconds = p.billing_granularity_seconds
        provider.billing_minimum_seconds = p.billing_minimum_seconds
        session.flush()
        for r in p.regions:
            if session.get(Region, r.code) is None:
                session.add(Region(code=r.code, provider_code=provider.code))
                session.flush()
            for z in r.zones:
                if session.get(Zone, z) is None:
                    session.add(Zone(code=z, region_code=r.code, provider_code=provider.code))
        session.flush()
        for t in p.instance_types:
            it = session.scalar(select(InstanceType).where(
                InstanceType.provider_code == provider.code, InstanceType.name == t.name))
            if it is None:
                it = InstanceType(provider_code=provider.code, name=t.name)
                session.add(it)
                created += 1
            it.gpu_count = t.gpu_count
            it.gpu_model = t.gpu_model
            it.gpu_vram_gb = t.gpu_vram_gb
            it.vcpus = t.vcpus
            it.ram_gb = t.ram_gb
            it.ray_resources = dict(t.ray_resources) if t.ray_resources is not None else None
            session.flush()
            if not it.prices:
                session.add(InstanceTypePrice(instance_type_id=it.id, effective_from=effective_from,
                                              hourly_eur=t.hourly_eur))
            known = {a.zone_code for a in it.availability}
            for z in t.zones:
                if z not in known:
                    session.add(ZoneAvailability(instance_type_id=it.id, zone_code=z,
                                                 availability=Availability.AVAILABLE))
            session.flush()
    return created
