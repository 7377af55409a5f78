"""Month-to-date chargeback spend of an API key, on Postgres and SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy.orm import Session, sessionmaker

from finops.keys import month_spend_eur
from finops.spans import sync_spans
from finops.usage import rollup_usage
from tests.finops.helpers import Seed

NOW = datetime(2025, 3, 11, 0, 0, tzinfo=UTC)


def test_key_spend_is_token_share_of_deployment_cost(db: sessionmaker[Session]) -> None:
    with db() as s, s.begin():
        seed = Seed(s)
        p = seed.provider("prov", 60, 60)
        seed.itype(p, "gpu", [(datetime(2020, 1, 1, tzinfo=UTC), "1.20")])
        dep = seed.deployment("llama")
        inst = seed.instance(p, "gpu", deployment_id=dep)
        # Last month (not counted) and this month: 10 days x 24 h x 1.20 = 288 EUR this month.
        seed.interval(inst, datetime(2025, 2, 20, tzinfo=UTC), None)
        org = seed.org()
        k1, k2, idle = seed.api_key(org), seed.api_key(org), seed.api_key(org)
        seed.usage(NOW - timedelta(days=2), (300, 100), deployment="llama", api_key_id=k1)
        seed.usage(NOW - timedelta(days=1), (500, 100), deployment="llama", api_key_id=k2)
        # Before the month and after now: ignored.
        seed.usage(datetime(2025, 2, 27, tzinfo=UTC), (10**6, 0), deployment="llama",
                   api_key_id=k1)
        seed.usage(NOW + timedelta(seconds=1), (10**6, 0), deployment="llama", api_key_id=k1)
        sync_spans(s)  # the background job's part: costs are read from the spans
    with db() as s:
        # k1: 400 / 1000 of 288 EUR.
        assert month_spend_eur(s, k1, NOW) == Decimal("115.200000")
        assert month_spend_eur(s, k2, NOW) == Decimal("172.800000")
        assert month_spend_eur(s, idle, NOW) == Decimal("0")
        # Same figures once the usage is rolled up into hourly aggregates.
        rollup_usage(s)
        assert month_spend_eur(s, k1, NOW) == Decimal("115.200000")
        assert month_spend_eur(s, k2, NOW) == Decimal("172.800000")
        # Month boundary: on 1 March 00:00 nothing of March has been used yet.
        assert month_spend_eur(s, k1, datetime(2025, 3, 1, tzinfo=UTC)) == Decimal("0")


def test_key_spend_uses_price_override_and_model_fallback(db: sessionmaker[Session]) -> None:
    with db() as s, s.begin():
        seed = Seed(s)
        p = seed.provider("prov", 1, 0)
        seed.itype(p, "gpu", [(datetime(2020, 1, 1, tzinfo=UTC), "2.00"),
                              (datetime(2025, 3, 10, 12, tzinfo=UTC), "4.00")])
        seed.deployment("fixed", {"price": {"input_eur_per_1m": "0.5",
                                            "output_eur_per_1m": "0.5"}})
        seed.deployment("split", {"price": {"input_eur_per_1m": "1", "output_eur_per_1m": "3"}})
        dep = seed.deployment("small")
        inst = seed.instance(p, "gpu", deployment_id=dep)
        # 10 March 00:00 -> 10 March 18:00: 12 h x 2 + 6 h x 4 = 48 EUR (price change splits it).
        seed.interval(inst, datetime(2025, 3, 10, tzinfo=UTC), datetime(2025, 3, 10, 18,
                                                                          tzinfo=UTC))
        org = seed.org()
        k = seed.api_key(org)
        seed.usage(NOW - timedelta(hours=1), (2_000_000, 1_000_000), deployment="fixed",
                   api_key_id=k)
        seed.usage(NOW - timedelta(hours=1), (1_000_000, 2_000_000), deployment="split",
                   api_key_id=k)
        # No deployment name: attributed to the deployment named like the model.
        seed.usage(NOW - timedelta(hours=1), (1, 0), deployment=None, model="small", api_key_id=k)
        seed.usage(NOW - timedelta(hours=1), (2, 0), deployment="small")
        sync_spans(s)
    with db() as s:
        # 3M tokens x 0.5 EUR/M = 1.5 EUR; 1M in x 1 + 2M out x 3 = 7 EUR; 1/3 of 48 EUR = 16.
        assert month_spend_eur(s, k, NOW) == Decimal("24.500000")
