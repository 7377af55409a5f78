"""The budgets that apply to a request (org, key, deployment), fetched from the control API
(``POST /api/internal/budgets/applicable``) and cached per (org, key, deployment) for ``ttl``
seconds, like :class:`serve_apps.auth.KeyCache` caches keys.

Each view carries what was left of a budget at ``as_of``; the limiter actor subtracts what was
settled since then (:mod:`serve_apps.ratelimit`), so a cached view never lets a budget be
overspent, it only lags in the direction of refusing early. When the control API cannot answer,
the last view is used for up to ``stale`` seconds; without one the request is let through
without these budgets (logged and counted in ``stats.unavailable``): an outage of the control
plane must not stop serving, and the key's own monthly budget still applies from its
verification. One lookup per (org, key, deployment) at a time (single flight).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from control_api.client.internal import ControlApiUnavailable, InternalApiError
from core.wire_budgets import ApplicableBudgets, BudgetView

log = logging.getLogger(__name__)

Fetch = Callable[[str, str, str], ApplicableBudgets]
CacheKey = tuple[str, str, str]


@dataclass
class BudgetCacheStats:
    lookups: int = 0
    hits: int = 0
    stale_served: int = 0
    unavailable: int = 0


class BudgetCache:
    """Views of the applicable budgets, with TTL, stale-while-down and single flight."""

    def __init__(self, fetch: Fetch, *, ttl: float = 10.0, stale: float = 240.0,
                 down_backoff: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 100_000) -> None:
        self._fetch = fetch
        self.ttl = ttl
        self.stale = max(stale, ttl)
        self.down_backoff = down_backoff
        self._clock = clock
        self._max = max_entries
        self._entries: OrderedDict[CacheKey, tuple[float, tuple[BudgetView, ...]]] = (
            OrderedDict())
        self._inflight: dict[CacheKey, asyncio.Task[tuple[BudgetView, ...]]] = {}
        self._down_until = float("-inf")
        self.stats = BudgetCacheStats()

    async def get(self, org_id: str, api_key_id: str, deployment: str
                  ) -> tuple[BudgetView, ...]:
        """The budgets on this org, key and deployment (an empty tuple when none apply or
        none could be fetched)."""
        key = (org_id, api_key_id, deployment)
        now = self._clock()
        held = self._entries.get(key)
        if held is not None and now - held[0] < self.ttl:
            self.stats.hits += 1
            return held[1]
        if now < self._down_until:
            return self._fallback(held, now)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._lookup(key, held))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        # Shielded: one waiter cancelled (client gone) must not cancel the shared lookup.
        return await asyncio.shield(task)

    async def _lookup(self, key: CacheKey, held: tuple[float, tuple[BudgetView, ...]] | None
                      ) -> tuple[BudgetView, ...]:
        self.stats.lookups += 1
        try:
            answer = await asyncio.to_thread(self._fetch, *key)
        except (ControlApiUnavailable, InternalApiError) as exc:
            self._down_until = self._clock() + self.down_backoff
            log.warning("budgets of %s unavailable: %s", key[2], exc)
            return self._fallback(held, self._clock())
        views = tuple(answer.budgets)
        self._entries[key] = (self._clock(), views)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return views

    def _fallback(self, held: tuple[float, tuple[BudgetView, ...]] | None, now: float
                  ) -> tuple[BudgetView, ...]:
        if held is not None and now - held[0] < self.stale:
            self.stats.stale_served += 1
            return held[1]
        self.stats.unavailable += 1
        return ()
