"""Admission: a request's per-key rate limits and monthly budget, reserved at its worst case
before dispatch and settled to its real usage after (around :mod:`serve_apps.ratelimit`), and
the 429 a full deployment queue is answered with (backpressure).

Keys without limits skip the limiter's round trip, and so do requests admitted under this
replica's lease of the key's minute; an unreachable limiter lets requests through (logged):
rate limits protect capacity, an outage of the limiter must not stop serving.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from core.spec import DeploymentSpec, PriceSpec
from serve_apps import protocol
from serve_apps.auth import Principal
from serve_apps.ratelimit import (
    LEASE_S,
    OVER_BUDGET,
    BudgetAsk,
    LeaseBook,
    SettleBatcher,
    Settlement,
    get_or_create_limiter,
)

log = logging.getLogger(__name__)


def token_cost(price: PriceSpec, prompt_tokens: int, completion_tokens: int) -> float:
    """EUR of a request at a deployment's token price (a float: reservations are estimates;
    the ledger is computed from usage records by finops)."""
    return float(price.input_eur_per_1m * prompt_tokens
                 + price.output_eur_per_1m * completion_tokens) / 1_000_000


def check_quota(principal: Principal) -> None:
    """Refuse a key whose budget was already spent at its last verification."""
    if principal.budget_left_eur is not None and principal.budget_left_eur <= 0:
        raise protocol.quota_exceeded()


def overloaded(model: str) -> protocol.OpenAIError:
    """The answer when the deployment's queue is full (Serve's ``BackPressureError``): 429
    with Retry-After, never a hang."""
    return protocol.rate_limited(f"The model `{model}` is overloaded; retry shortly.", 1,
                                 code="overloaded")


class Admission:
    """Reservations of one ingress replica against the app's shared limiter actor.

    ``limiter`` makes the actor handle (default: the app's named actor, created on first use).
    """

    def __init__(self, *, enabled: bool, limiter_name: str,
                 limiter: Callable[[], Any] | None = None) -> None:
        self.enabled = enabled
        self._make_limiter = limiter or (lambda: get_or_create_limiter(limiter_name))
        self._limiter: Any = None
        self._settler = SettleBatcher(self._settle_many)
        self._leases = LeaseBook(self._settler.add)
        # request id -> (api key id, its deployment's price, the lease that admitted it or
        # None, tokens reserved), for reservations to settle.
        self._reservations: dict[str, tuple[str, PriceSpec | None, str | None, float]] = {}

    async def admit(self, request_id: str, principal: Principal, dep: DeploymentSpec,
                    prompt_tokens: int, completion_tokens: int) -> None:
        """Reserve the request against the key's RPM/TPM and, for priced deployments, its
        monthly budget, at the worst case (raises the 429 if it does not fit)."""
        p = principal
        budget = None
        if p.budget_left_eur is not None and dep.price is not None:
            budget = BudgetAsk(left_eur=float(p.budget_left_eur), verified_at=p.verified_at,
                               cost_eur=token_cost(dep.price, prompt_tokens, completion_tokens))
        limited = p.rpm_limit is not None or p.tpm_limit is not None
        if not self.enabled or (not limited and budget is None):
            return
        key = str(p.api_key_id)
        want = prompt_tokens + completion_tokens
        if budget is None:
            # Usually admitted here, under this replica's lease of the key's minute.
            lease_id = self._leases.take(key, want)
            if lease_id is not None:
                self._reservations[request_id] = (key, dep.price, lease_id, want)
                return
        lease_id = f"lease-{uuid.uuid4().hex}"
        try:
            if self._limiter is None:
                self._limiter = self._make_limiter()
            answer: tuple[float, str, tuple[float, float] | None] = (
                await self._limiter.admit_lease.remote(
                    key, request_id, p.rpm_limit, p.tpm_limit, want, budget, lease_id,
                    LEASE_S))
        except Exception:  # noqa: BLE001 - fail open, see serve_apps.ratelimit
            log.warning("rate limiter unreachable: request let through", exc_info=True)
            return
        wait, reason, lease = answer
        if reason == OVER_BUDGET:
            raise protocol.quota_exceeded()
        if wait > 0:
            raise protocol.rate_limited(
                "Rate limit reached for this API key (requests or tokens per minute).", wait)
        if lease is not None:
            requests, tokens = lease
            self._leases.grant(key, lease_id, requests, tokens, LEASE_S)
        self._reservations[request_id] = (key, dep.price, None, want)

    def settle(self, record: dict[str, Any]) -> None:
        """Replace the reservation of the request ``record`` meters by its real usage."""
        held = self._reservations.pop(record["request_id"], None)
        if held is None or self._limiter is None:
            return
        key, price, lease_id, reserved = held
        used = record["prompt_tokens"] + record["completion_tokens"]
        # Batched: one actor call per ~100 ms for all of this replica's requests.
        if lease_id is not None:  # admitted under a lease: give back what it did not use
            self._settler.add(("adjust", key, lease_id, used - reserved, 0))
        else:
            cost = None if price is None else token_cost(
                price, record["prompt_tokens"], record["completion_tokens"])
            self._settler.add(("settle", key, record["request_id"], used, cost))

    def close(self) -> None:
        """End the leases (giving back what is unused) and send what is pending."""
        self._leases.close()
        self._settler.close()

    def _settle_many(self, settlements: list[Settlement]) -> None:
        if self._limiter is not None:
            self._limiter.settle_many.remote(settlements)  # fire and forget, in call order
