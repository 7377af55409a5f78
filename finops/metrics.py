"""Prometheus cost metrics, read from the database at scrape time (reads only: the background
job keeps spans, rollups and budget states current; a scrape never writes).

Labels stay bounded: provider codes, known deployment names (anything else is ``other``), token
kind, budget scope and budget id (budgets are created by admins, a handful per org).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.db import session_scope, utcnow
from core.models import Budget, Deployment
from finops.budgets import budget_ratio, current_scale_caps
from finops.costs import burn_rate, window_costs_units
from finops.ledger import EPOCH, to_us, units_to_eur
from finops.usage import usage_totals

log = logging.getLogger(__name__)
STATE_VALUE = {"ok": 0, "warning": 1, "exceeded": 2}


class FinopsCollector(Collector):
    """Reads burn rate, cost, tokens and budgets on each scrape (one short transaction)."""

    def __init__(self, sessions: sessionmaker[Session],
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.sessions = sessions
        self.clock = clock

    def describe(self) -> Iterator[Any]:
        # No describe-time DB access: registering must not need the database.
        return iter(())

    def collect(self) -> Iterator[Any]:
        try:
            yield from self._collect()
        except Exception:  # noqa: BLE001 - a failing scrape must not break /metrics
            log.exception("finops metrics collection failed")

    def _collect(self) -> Iterator[Any]:
        now = self.clock()
        now_us = to_us(now)
        burn = GaugeMetricFamily("inventiv_burn_rate_eur_per_hour",
                                 "Hourly price of the instances running now (EUR/h)",
                                 labels=["provider"])
        cost = CounterMetricFamily("inventiv_cost_eur", "Cost of all billing intervals (EUR)",
                                   labels=["provider"])
        tokens = CounterMetricFamily("inventiv_tokens", "Tokens served",
                                     labels=["deployment", "kind"])
        ratio = GaugeMetricFamily("inventiv_budget_ratio",
                                  "Month-to-date spend / monthly budget",
                                  labels=["scope", "budget_id"])
        state = GaugeMetricFamily("inventiv_budget_state",
                                  "Budget state (0 ok, 1 warning, 2 exceeded)",
                                  labels=["scope", "budget_id"])
        capped = GaugeMetricFamily("inventiv_deployment_scale_up_capped",
                                   "1 while a budget caps the deployment's scale-up, else 0",
                                   labels=["deployment"])
        cap_replicas = GaugeMetricFamily("inventiv_deployment_scale_up_cap_replicas",
                                         "Replicas a capped deployment is held at",
                                         labels=["deployment"])
        with session_scope(self.sessions) as s:
            br = burn_rate(s, now_us, "provider")
            for prov, micro in sorted(br.by_group.items(), key=lambda kv: str(kv[0])):
                burn.add_metric([str(prov)], float(micro) / 1e6)
            totals = window_costs_units(s, [(to_us(EPOCH), now_us)], now_us, "provider")[0]
            for prov, units in sorted(totals.items(), key=lambda kv: str(kv[0])):
                cost.add_metric([str(prov)], float(units_to_eur(units)))
            known = set(s.scalars(select(Deployment.name)))
            per_dep: dict[str, list[int]] = {}
            for (name,), tot in usage_totals(s, EPOCH, now, ("deployment",)).items():
                label = name if name in known else "other"
                acc = per_dep.setdefault(label, [0, 0])
                acc[0] += tot.prompt_tokens
                acc[1] += tot.completion_tokens
            for name, (p, c) in sorted(per_dep.items()):
                tokens.add_metric([name, "prompt"], float(p))
                tokens.add_metric([name, "completion"], float(c))
            for b in s.scalars(select(Budget)):
                labels = [str(b.scope.value if hasattr(b.scope, "value") else b.scope), str(b.id)]
                spent = b.spent_eur or Decimal(0)
                ratio.add_metric(labels, float(budget_ratio(spent, b.monthly_eur)))
                state.add_metric(labels, STATE_VALUE[str(getattr(b.state, "value", b.state))])
            caps = current_scale_caps(s)
            for dep_id, name in s.execute(select(Deployment.id, Deployment.name)
                                          .where(Deployment.deleted_at.is_(None))
                                          .order_by(Deployment.name)):
                cap = caps.get(dep_id)
                capped.add_metric([name], 1.0 if cap is not None else 0.0)
                if cap is not None:
                    cap_replicas.add_metric([name], float(cap.replicas))
        yield from (burn, cost, tokens, ratio, state, capped, cap_replicas)


def install(app: Any, clock: Callable[[], datetime] | None = None) -> FinopsCollector:
    """Register the FinOps collector on ``app.state.metrics_registry`` (served at /metrics)."""
    collector = FinopsCollector(app.state.sessionmaker,
                                clock or (lambda: getattr(app.state, "finops_clock", utcnow)()))
    app.state.metrics_registry.register(collector)
    return collector
