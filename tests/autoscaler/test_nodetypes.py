"""Cost-aware GPU type choice over catalog offers: cheapest that fits and is available."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from autoscaler.nodetypes import (
    NoFit,
    Offer,
    offer_from_dict,
    offer_to_dict,
    rank_accelerators,
    rank_offers,
    seed_offers,
)


def offer(gpu: str, price: str, vram: float, *, count: int = 1, zone: str = "fr-par-2",
          name: str | None = None, availability: str = "available",
          blocked: bool = False) -> Offer:
    return Offer(provider="scaleway", instance_type=name or f"{gpu}-{count}", gpu_model=gpu,
                 gpu_count=count, gpu_vram_gb=vram, hourly_eur=Decimal(price), zone=zone,
                 availability=availability, blocked=blocked)


L4 = offer("L4", "0.75", 24)
L40S = offer("L40S", "1.40", 48)
H100 = offer("H100", "2.73", 80)


def models(result: object) -> list[str]:
    assert isinstance(result, list), result
    return [c.gpu_model for c in result]


def test_cheapest_first_among_those_that_fit() -> None:
    offers = [H100, L40S, L4]
    assert models(rank_accelerators(["H100", "L40S", "L4"], offers, 20)) == ["L4", "L40S", "H100"]
    assert models(rank_accelerators(["H100", "L40S", "L4"], offers, 30)) == ["L40S", "H100"]
    assert models(rank_accelerators(["L4", "H100"], offers, None)) == ["L4", "H100"]
    # Only the candidates count, whatever else the catalog sells.
    assert models(rank_accelerators(["H100"], offers, 20)) == ["H100"]


def test_out_of_stock_and_blocked_offers_are_skipped_per_zone() -> None:
    l4_par = replace(L4, availability="shortage")
    l4_waw = replace(L4, zone="pl-waw-2", availability="scarce")
    [first, second] = rank_accelerators(["L4", "L40S"], [l4_par, l4_waw, L40S], 20)
    assert first.gpu_model == "L4" and first.best.zone == "pl-waw-2"
    assert [o.zone for o in first.offers] == ["pl-waw-2"]
    # L4 blocked everywhere (capacity errors): the next cheapest that fits.
    blocked = [replace(l4_waw, blocked=True), l4_par, L40S]
    assert models(rank_accelerators(["L4", "L40S"], blocked, 20)) == ["L40S"]


def test_zone_order_prefers_better_availability_at_equal_price() -> None:
    offers = [replace(L4, zone="a", availability="scarce"),
              replace(L4, zone="b", availability="unknown"),
              replace(L4, zone="c", availability="available")]
    [choice] = rank_accelerators(["L4"], offers)
    assert [o.zone for o in choice.offers] == ["c", "b", "a"]


def test_price_per_replica_and_tensor_parallel_machines() -> None:
    # Per GPU, the 8-GPU machine is cheaper; one replica needs one GPU of it.
    big = offer("L40S", "4.00", 48, count=8, name="L40S-8")  # 0.50 per GPU
    assert models(rank_accelerators(["L4", "L40S"], [L4, big], 20)) == ["L40S", "L4"]
    # tensor_parallel_size 2: single-GPU machines cannot host a replica.
    l4_2 = offer("L4", "1.50", 24, count=2, name="L4-2")
    [choice] = rank_accelerators(["L4", "L40S"], [L4, l4_2, L40S], 20, gpus_per_replica=2)
    assert choice.best.instance_type == "L4-2" and choice.replica_eur_per_hour == Decimal("1.50")
    # Equal price per replica: the smaller machine first.
    assert [o.instance_type for o in rank_offers([big, replace(big, gpu_count=1,
                                                 hourly_eur=Decimal("0.5"), instance_type="one")])
            ] == ["one", "L40S-8"]


def test_no_fit_is_a_value_with_a_code_and_reasons() -> None:
    too_big = rank_accelerators(["L4", "L40S"], [L4, L40S], 60)
    assert isinstance(too_big, NoFit) and too_big.code == "too_small"
    assert too_big.rejected == {"L4": "24 GB per GPU, the model needs 60 GB",
                                "L40S": "48 GB per GPU, the model needs 60 GB"}
    gone = rank_accelerators(["L4", "B200"], [replace(L4, availability="shortage")], 20)
    assert isinstance(gone, NoFit) and gone.code == "unavailable"
    assert gone.rejected["B200"] == "no instance type with this GPU in the catalog"
    assert "shortage" in gone.rejected["L4"] and "B200" in gone.message
    missing = rank_accelerators(["B200"], [L4])
    assert isinstance(missing, NoFit) and missing.code == "no_offer"
    assert rank_accelerators(["L4"], [L4], gpus_per_replica=2) == NoFit(
        "too_small", "no candidate GPU type can host the model now (L4: at most 1 GPU(s) per "
        "machine, 2 needed)", {"L4": "at most 1 GPU(s) per machine, 2 needed"})
    assert isinstance(rank_accelerators([], [L4]), NoFit)


def test_seed_offers_read_the_catalog_seed() -> None:
    offers = seed_offers(provider="scaleway")
    names = {o.instance_type for o in offers}
    assert {"L4-1-24G", "L40S-1-48G", "H100-1-80G"} <= names
    l4 = next(o for o in offers if o.instance_type == "L4-1-24G" and o.zone == "fr-par-2")
    assert (l4.gpu_model, l4.gpu_vram_gb, l4.hourly_eur) == ("L4", 24, Decimal("0.75"))
    assert {o.provider for o in seed_offers()} == {"scaleway", "local"}
    # With the seed's prices, a 30 GB model on L4/L40S/H100 goes to an L40S.
    assert models(rank_accelerators(["H100", "L4", "L40S"], offers, 30)) == ["L40S", "H100"]


def test_offers_round_trip_through_json() -> None:
    import json

    blocked = replace(L4, blocked=True, availability="scarce")
    assert offer_from_dict(json.loads(json.dumps(offer_to_dict(blocked)))) == blocked
