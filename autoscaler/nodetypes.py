"""Cost-aware GPU type choice: which of several GPU types that can host a model to use.

Pure functions over *offers* (one instance type in one zone, with its GPU, price and
availability: what the catalog and its live sync know). :func:`rank_accelerators` orders the
candidate GPU types cheapest-first among those that fit the model and are available; the
builder runs replicas on the first, and the node type order of the cluster can follow the same
ranking (:func:`rank_offers` orders the instance types and zones themselves).

Rules:

- An offer can host a replica when its GPU model is a candidate, it has at least
  ``gpus_per_replica`` GPUs (tensor parallelism), and each GPU holds ``model_memory_gb``
  (None: no memory filter).
- An offer is available unless it is in ``shortage`` (out of stock) or ``blocked`` (a recent
  capacity error on that type and zone; see ``cluster.clouds.scaleway``). ``available``,
  ``unknown`` (the seed, before any sync) and ``scarce`` all count, in that preference order
  when prices tie.
- Price compared: the hourly price per replica, ``hourly_eur / gpu_count * gpus_per_replica``
  (an 8-GPU machine hosts several replicas; per GPU is the fair comparison), then the whole
  machine's price (smaller machines first: less waste while a single replica runs).
- When nothing fits, the answer is a :class:`NoFit` value with a code and, per candidate, why
  it was rejected; never an exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from core.catalog import default_catalog_path, load_catalog
from core.clouds import OUT_OF_STOCK, Offer

__all__ = [
    "AVAILABILITY_ORDER", "CATALOG_SEED", "OUT_OF_STOCK", "GpuChoice", "NoFit", "Offer",
    "offer_from_dict", "offer_to_dict", "rank_accelerators", "rank_offers", "seed_offers",
]

CATALOG_SEED = default_catalog_path()
# Availability values (core.models.Availability), best first.
AVAILABILITY_ORDER = {"available": 0, "unknown": 1, "scarce": 2}


@dataclass(frozen=True)
class GpuChoice:
    """A candidate GPU type that fits and is available, with its best offer and every usable
    (instance type, zone) for it, best first (the launch and failover order)."""

    gpu_model: str
    best: Offer
    offers: tuple[Offer, ...]
    replica_eur_per_hour: Decimal


@dataclass(frozen=True)
class NoFit:
    """No candidate can host the model now. ``code``: ``no_offer`` (no candidate is in the
    catalog at all), ``too_small`` (offers exist but none holds the model), ``unavailable``
    (some fit, but every one is out of stock or blocked). ``rejected``: why, per candidate."""

    code: str
    message: str
    rejected: dict[str, str] = field(default_factory=dict)


def _offer_key(offer: Offer, gpus_per_replica: int) -> tuple[Any, ...]:
    return (offer.replica_eur_per_hour(gpus_per_replica), offer.hourly_eur,
            AVAILABILITY_ORDER.get(offer.availability, 3), offer.provider,
            offer.instance_type, offer.zone)


def rank_offers(offers: Iterable[Offer], *, gpus_per_replica: int = 1) -> list[Offer]:
    """Usable offers, cheapest per replica first (ties: smaller machine, better availability,
    then names, so the order is stable)."""
    return sorted((o for o in offers if o.usable),
                  key=lambda o: _offer_key(o, gpus_per_replica))


def rank_accelerators(candidates: Sequence[str], offers: Iterable[Offer],
                      model_memory_gb: float | None = None, *,
                      gpus_per_replica: int = 1) -> list[GpuChoice] | NoFit:
    """The candidate GPU types that fit and are available, cheapest first; else a NoFit."""
    offers = list(offers)
    ranked: list[GpuChoice] = []
    rejected: dict[str, str] = {}
    codes: set[str] = set()
    for gpu in dict.fromkeys(candidates):  # unique, first occurrence order
        mine = [o for o in offers if o.gpu_model == gpu]
        if not mine:
            rejected[gpu] = "no instance type with this GPU in the catalog"
            codes.add("no_offer")
            continue
        big_enough = [o for o in mine if o.gpu_count >= gpus_per_replica]
        if not big_enough:
            most = max(o.gpu_count for o in mine)
            rejected[gpu] = f"at most {most} GPU(s) per machine, {gpus_per_replica} needed"
            codes.add("too_small")
            continue
        fits = [o for o in big_enough
                if model_memory_gb is None or (o.gpu_vram_gb or 0) >= model_memory_gb]
        if not fits:
            vram = max(o.gpu_vram_gb or 0 for o in big_enough)
            rejected[gpu] = f"{vram:g} GB per GPU, the model needs {model_memory_gb:g} GB"
            codes.add("too_small")
            continue
        usable = rank_offers(fits, gpus_per_replica=gpus_per_replica)
        if not usable:
            states = sorted({"blocked" if o.blocked else o.availability for o in fits})
            rejected[gpu] = f"not available ({', '.join(states)}) in any zone"
            codes.add("unavailable")
            continue
        ranked.append(GpuChoice(gpu_model=gpu, best=usable[0], offers=tuple(usable),
                                replica_eur_per_hour=usable[0].replica_eur_per_hour(
                                    gpus_per_replica)))
    if ranked:
        ranked.sort(key=lambda c: (_offer_key(c.best, gpus_per_replica), c.gpu_model))
        return ranked
    if not candidates:
        return NoFit("no_offer", "no candidate GPU type given")
    # The most actionable code: "unavailable" (retry later) over "too_small" over "no_offer".
    code = next(c for c in ("unavailable", "too_small", "no_offer") if c in codes)
    detail = "; ".join(f"{gpu}: {why}" for gpu, why in rejected.items())
    return NoFit(code, f"no candidate GPU type can host the model now ({detail})", rejected)


def seed_offers(path: Path | str | None = None, *, provider: str | None = None) -> list[Offer]:
    """The catalog seed's GPU instance types as offers, one per zone (availability unknown:
    the seed has none; the live catalog sync knows better). See :meth:`core.catalog.Catalog.
    offers`."""
    return load_catalog(path).offers(provider)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def offer_from_dict(data: dict[str, Any]) -> Offer:
    """An offer from its JSON form (:func:`offer_to_dict`: the price as a string)."""
    vram = data.get("gpu_vram_gb")
    return Offer(provider=str(data["provider"]), instance_type=str(data["instance_type"]),
                 zone=str(data["zone"]), hourly_eur=Decimal(str(data["hourly_eur"])),
                 availability=str(data.get("availability", "unknown")),
                 gpu_count=int(data.get("gpu_count") or 0), gpu_model=data.get("gpu_model"),
                 gpu_vram_gb=None if vram is None else float(vram),
                 vcpus=_opt_int(data.get("vcpus")), ram_gb=_opt_int(data.get("ram_gb")),
                 blocked=bool(data.get("blocked", False)))


def offer_to_dict(offer: Offer) -> dict[str, Any]:
    """The JSON form of an offer (the price as a string: exact EUR)."""
    return {"provider": offer.provider, "instance_type": offer.instance_type,
            "gpu_model": offer.gpu_model, "gpu_count": offer.gpu_count,
            "gpu_vram_gb": offer.gpu_vram_gb, "hourly_eur": str(offer.hourly_eur),
            "zone": offer.zone, "availability": offer.availability, "blocked": offer.blocked,
            "vcpus": offer.vcpus, "ram_gb": offer.ram_gb}
