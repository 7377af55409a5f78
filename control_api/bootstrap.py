"""First start: the admin user and org ``default``, and the GPU catalog seed."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from control_api.security import Passwords
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

DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "configs" / "catalog" / "seed.yaml"
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
    with open(path or DEFAULT_CATALOG) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or not isinstance(data.get("providers"), list):
        raise ValueError(f"{path or DEFAULT_CATALOG}: expected a mapping with a 'providers' list")
    return data


def seed_catalog(session: Session, catalog: dict[str, Any],
                 effective_from: datetime = SEED_EFFECTIVE_FROM) -> int:
    """Upsert providers, regions, zones, instance types, a price and availability. Idempotent.

    A price row is added only when the type has no price yet, so live-synced prices are kept.
    Returns the number of instance types created.
    """
    created = 0
    for p in catalog["providers"]:
        provider = session.get(Provider, p["code"])
        if provider is None:
            provider = Provider(code=p["code"], name=p.get("name", p["code"]))
            session.add(provider)
        provider.billing_granularity_seconds = int(p.get("billing_granularity_seconds", 60))
        provider.billing_minimum_seconds = int(p.get("billing_minimum_seconds", 60))
        session.flush()
        for r in p.get("regions", []):
            if session.get(Region, r["code"]) is None:
                session.add(Region(code=r["code"], provider_code=provider.code))
                session.flush()
            for z in r.get("zones", []):
                if session.get(Zone, z) is None:
                    session.add(Zone(code=z, region_code=r["code"], provider_code=provider.code))
        session.flush()
        for t in p.get("instance_types", []):
            it = session.scalar(select(InstanceType).where(
                InstanceType.provider_code == provider.code, InstanceType.name == t["name"]))
            if it is None:
                it = InstanceType(provider_code=provider.code, name=t["name"])
                session.add(it)
                created += 1
            it.gpu_count = int(t.get("gpu_count", 0))
            it.gpu_model = t.get("gpu_model")
            it.gpu_vram_gb = int(t.get("gpu_vram_gb", 0))
            it.vcpus = int(t.get("vcpus", 0))
            it.ram_gb = int(t.get("ram_gb", 0))
            it.ray_resources = t.get("ray_resources")
            session.flush()
            if not it.prices:
                session.add(InstanceTypePrice(instance_type_id=it.id, effective_from=effective_from,
                                              hourly_eur=Decimal(str(t["hourly_eur"]))))
            known = {a.zone_code for a in it.availability}
            for z in t.get("zones", []):
                if z not in known:
                    session.add(ZoneAvailability(instance_type_id=it.id, zone_code=z,
                                                 availability=Availability.AVAILABLE))
            session.flush()
    return created
