"""The catalog seed as one typed model: the shipped seed loads, a malformed one is one clear
CatalogError naming the file and the field, and the parsed object is shared until the file
changes."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest

from core.catalog import Catalog, CatalogError, default_catalog_path, load_catalog
from core.clouds import Offer

GOOD = """\
providers:
  - code: acme
    name: Acme
    billing_granularity_seconds: 1
    billing_minimum_seconds: 0
    regions: [{code: eu, zones: [eu-1, eu-2]}]
    instance_types:
      - {name: G1, gpu_count: 1, gpu_model: L4, gpu_vram_gb: 24, vcpus: 8, ram_gb: 48,
         hourly_eur: 0.70, zones: [eu-1, eu-2]}
      - {name: CPU-8, vcpus: 8, ram_gb: 32, hourly_eur: "0.10", zones: [eu-1]}
"""


def write(tmp_path: Path, text: str, name: str = "seed.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_seed_loads() -> None:
    catalog = load_catalog()
    assert isinstance(catalog, Catalog)
    assert catalog.source == str(default_catalog_path().resolve())
    assert [p.code for p in catalog.providers] == ["scaleway", "local"]
    scw = catalog.provider("scaleway")
    assert (scw.billing_granularity_seconds, scw.billing_minimum_seconds) == (60, 60)
    l4 = scw.instance_type("L4-1-24G")
    assert l4.hourly_eur == Decimal("0.75") and isinstance(l4.hourly_eur, Decimal)
    assert (l4.gpu_count, l4.gpu_model, l4.gpu_vram_gb) == (1, "L4", 24)
    local = catalog.provider("local").instance_type("local-L4")
    # Whole numbers stay ints, as written (they reach the database and the Ray YAML).
    assert local.ray_resources == {"CPU": 2, "local_gpu_slot": 1, "accelerator_type:L4": 1}
    assert all(type(v) is int for v in local.ray_resources.values())
    assert catalog.has_provider("local") and not catalog.has_provider("aws")
    assert {t.name for _p, t in catalog.instance_types("local")} == {
        "local-L4", "local-L40S", "local-H100"}


def test_offers_are_the_gpu_types_one_per_zone(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, GOOD))
    assert catalog.offers() == [
        Offer(provider="acme", instance_type="G1", zone=zone, hourly_eur=Decimal("0.70"),
              gpu_count=1, gpu_model="L4", gpu_vram_gb=24, vcpus=8, ram_gb=48)
        for zone in ("eu-1", "eu-2")]
    assert catalog.offers()[0].availability == "unknown"  # the seed knows no availability
    assert catalog.offers("other") == []
    shipped = load_catalog().offers("scaleway")
    assert ("H100-1-80G", "pl-waw-2") in {(o.instance_type, o.zone) for o in shipped}
    assert {o.provider for o in load_catalog().offers()} == {"scaleway", "local"}


def test_a_yaml_float_price_is_exact(tmp_path: Path) -> None:
    g1 = load_catalog(write(tmp_path, GOOD)).provider("acme").instance_type("G1")
    assert g1.hourly_eur == Decimal("0.70")  # not 0.6999999999999999555910790149937


def test_unknown_names_are_errors_naming_the_known_ones(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, GOOD))
    with pytest.raises(CatalogError, match=r"provider 'aws' is not in the catalog .*known: acme"):
        catalog.provider("aws")
    with pytest.raises(CatalogError, match=r"'G9' is not in the acme catalog \(known: G1, CPU-8"):
        catalog.provider("acme").instance_type("G9")


@pytest.mark.parametrize(("text", "field", "why"), [
    (GOOD.replace('hourly_eur: "0.10", ', ""), "providers.0.instance_types.1.hourly_eur",
     "Field required"),
    (GOOD.replace('hourly_eur: "0.10"', 'hourly_eur: "-0.10"'),
     "providers.0.instance_types.1.hourly_eur", "greater than or equal to 0"),
    (GOOD.replace("vcpus: 8, ram_gb: 32", "vcpus: 8, ram_gb: 32, colour: red"),
     "providers.0.instance_types.1.colour", "Extra inputs are not permitted"),
    (GOOD.replace("billing_minimum_seconds: 0", "billing_minimum_seconds: soon"),
     "providers.0.billing_minimum_seconds", "valid integer"),
    ("providers: []\n", "providers", "at least 1 item"),
])
def test_a_malformed_seed_names_the_file_and_the_field(tmp_path: Path, text: str, field: str,
                                                      why: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    message = str(err.value)
    assert str(path.resolve()) in message
    assert f": {field}: " in message and why in message
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("text", ["- just\n- a list\n", "providers: {acme: 1}\n", "",
                                  "providers: [unclosed\n"])
def test_a_seed_that_is_not_a_mapping_of_providers_is_refused(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CatalogError, match=str(path.resolve())):
        load_catalog(path)


def test_a_missing_file_is_a_catalog_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(CatalogError, match=rf"catalog {missing}: cannot read it"):
        load_catalog(missing)


def test_the_parsed_catalog_is_shared_and_an_edited_file_is_read_again(
        tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    first = load_catalog(path)
    assert load_catalog(str(path)) is first  # same file, unchanged: the same object
    assert load_catalog() is load_catalog()
    path.write_text(GOOD.replace("0.70", "0.80"), encoding="utf-8")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a coarse clock's edit
    again = load_catalog(path)
    assert again is not first
    assert again.provider("acme").instance_type("G1").hourly_eur == Decimal("0.80")
    assert first.provider("acme").instance_type("G1").hourly_eur == Decimal("0.70")


def test_the_model_is_immutable() -> None:
    catalog = load_catalog()
    with pytest.raises(ValueError, match="frozen"):
        catalog.providers[0].instance_types[0].hourly_eur = Decimal(0)  # type: ignore[misc]
