"""The GPU catalog seed as one typed model, loaded once.

``configs/catalog/seed.yaml`` lists providers (billing rule, regions and zones) and their instance
types (GPUs, vCPUs, RAM, hourly price in EUR, zones, and for the ``local`` cloud the Ray resources
a node advertises). Every reader goes through :func:`load_catalog`: the control API's first-start
seed, the local cloud's instance types, the cluster YAML's default node resources, the
autoscaler's offers and the simulator's prices. A malformed seed is one clear
:class:`CatalogError` naming the file and the field, never a ``KeyError`` deep in a caller.
"""

from __future__ import annotations

import functools
import os
from decimal import Decimal
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import configs
from core.clouds import Offer

__all__ = [
    "Catalog", "CatalogError", "CatalogInstanceType", "CatalogProvider", "CatalogRegion",
    "default_catalog_path", "load_catalog",
]


class CatalogError(ValueError):
    """The catalog seed cannot be read or does not validate (the message names file and field)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CatalogRegion(_Model):
    code: str
    zones: tuple[str, ...] = ()


class CatalogInstanceType(_Model):
    """One instance type as the seed states it (prices are exact decimals, EUR/h excl. VAT)."""

    name: str
    gpu_count: int = Field(default=0, ge=0)
    gpu_model: str | None = None
    gpu_vram_gb: int = Field(default=0, ge=0)  # per GPU
    vcpus: int = Field(default=0, ge=0)
    ram_gb: int = Field(default=0, ge=0)
    hourly_eur: Decimal = Field(ge=0)
    zones: tuple[str, ...] = ()
    # Resources a node of this type advertises to Ray (the local cloud's custom slots). Whole
    # numbers stay ints, as written: they end up in the database and the rendered Ray YAML.
    ray_resources: dict[str, int | float] | None = None

    @field_validator("hourly_eur", mode="before")
    @classmethod
    def _exact_price(cls, value: object) -> object:
        # YAML floats (0.75) would carry binary noise: go through their text form.
        return str(value) if isinstance(value, float | int) else value


class CatalogProvider(_Model):
    code: str
    name: str = ""
    billing_granularity_seconds: int = Field(default=60, ge=0)
    billing_minimum_seconds: int = Field(default=60, ge=0)
    regions: tuple[CatalogRegion, ...] = ()
    instance_types: tuple[CatalogInstanceType, ...] = ()

    @property
    def display_name(self) -> str:
        return self.name or self.code

    def instance_type(self, name: str) -> CatalogInstanceType:
        """The type called ``name``; :class:`CatalogError` naming the known ones otherwise."""
        for t in self.instance_types:
            if t.name == name:
                return t
        known = ", ".join(t.name for t in self.instance_types) or "none"
        raise CatalogError(f"instance type {name!r} is not in the {self.code} catalog "
                           f"(known: {known})")


class Catalog(_Model):
    """The whole seed. ``source`` is the file it was read from (for messages)."""

    providers: tuple[CatalogProvider, ...] = Field(min_length=1)
    source: str = ""

    def provider(self, code: str) -> CatalogProvider:
        for p in self.providers:
            if p.code == code:
                return p
        known = ", ".join(p.code for p in self.providers)
        raise CatalogError(f"provider {code!r} is not in the catalog {self.source} "
                           f"(known: {known})")

    def has_provider(self, code: str) -> bool:
        return any(p.code == code for p in self.providers)

    def instance_types(self, provider: str | None = None
                       ) -> list[tuple[CatalogProvider, CatalogInstanceType]]:
        """Every (provider, type) pair, in seed order, optionally of one provider."""
        return [(p, t) for p in self.providers if provider is None or p.code == provider
                for t in p.instance_types]

    def offers(self, provider: str | None = None) -> list[Offer]:
        """The GPU instance types as offers, one per zone, in seed order (availability
        ``unknown``: the seed has none; the live catalog sync knows better)."""
        return [Offer(provider=p.code, instance_type=t.name, zone=zone, hourly_eur=t.hourly_eur,
                      gpu_count=t.gpu_count, gpu_model=t.gpu_model, gpu_vram_gb=t.gpu_vram_gb,
                      vcpus=t.vcpus, ram_gb=t.ram_gb)
                for p, t in self.instance_types(provider) if t.gpu_model and t.gpu_count
                for zone in t.zones]


def default_catalog_path() -> Path:
    """The seed shipped in the distribution (``configs/catalog/seed.yaml``)."""
    return configs.path("catalog", "seed.yaml")


def load_catalog(path: Path | str | None = None) -> Catalog:
    """The catalog at ``path`` (default: the shipped seed), parsed and validated once.

    Cached by (resolved path, modification time, size): callers share one immutable object and
    an edited file is read again.
    """
    p = Path(path) if path is not None else default_catalog_path()
    try:
        st = os.stat(p)
    except OSError as e:
        raise CatalogError(f"catalog {p}: cannot read it ({e.strerror or e})") from e
    return _load(str(p.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _load(path: str, _mtime_ns: int, _size: int) -> Catalog:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: 10x faster
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=loader)  # noqa: S506 - a safe loader
    except (OSError, yaml.YAMLError) as e:
        raise CatalogError(f"catalog {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("providers"), list):
        raise CatalogError(f"catalog {path}: expected a mapping with a 'providers' list")
    try:
        return Catalog.model_validate({**data, "source": path})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise CatalogError(f"catalog {path}: {where}: {first['msg']}"
                           + (f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else "")
                           ) from e
