"""Admission: a request's per-key rate limits and every budget that applies to it (the key's
own monthly budget, and the org, key and deployment budgets of ``/api/finops/budgets``),
reserved at its worst case before dispatch and settled to its real usage after (around
:mod:`serve_apps.ratelimit`); the rate-limit headers of the answer; the 503 while usage cannot
be metered; and the 429 a full deployment queue is answered with (backpressure).

Keys without limits and budgets skip the limiter's round trip, and so do requests admitted
under this replica's lease of the key's minute; an unreachable limiter lets requests through
(logged): rate limits protect capacity, an outage of the limiter must not stop serving.

The gate's contract: ``headers = await admission.admit(...)`` returns OpenAI's rate-limit
headers (``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, remaining counting the
request just admitted; ``{}`` for keys without limits) to put on the answer; refusals raise
``protocol.OpenAIError`` (429 ``rate_limit_exceeded`` with Retry-After, 429
``budget_exceeded`` (type ``insufficient_quota``) with ``x-should-retry: false``, 503
``metering_unavailable``), the 429s carrying the same headers.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core.spec import DeploymentSpec, PriceSpec
from serve_apps import protocol
from serve_apps.auth import Principal
from serve_apps.ratelimit import (
    BUDGET_EXCEEDED,
    LEASE_S,
    OVER_BUDGET,
    RATE_LIMITED,
    BudgetAsk,
    LeaseBook,
    SettleBatcher,
    Settlement,
    WindowState,
    get_or_create_limiter,
)

if TYPE_CHECKING:
    from core.wire_budgets import BudgetView
    from serve_apps.budget_views import BudgetCache
    from serve_apps.metrics import IngressMetrics
    from serve_apps.spools import UsageHealth

log = logging.getLogger(__name__)

NO_RETRY = {"x-should-retry": "false"}


def token_cost(price: PriceSpec, prompt_tokens: int, completion_tokens: int) -> float:
    """EUR of a request at a deployment's token price (a float: reservations are estimates;
    the ledger is computed from usage records by finops)."""
    return float(price.input_eur_per_1m * prompt_tokens
                 + price.output_eur_per_1m * completion_tokens) / 1_000_000


def quota_exceeded(headers: dict[str, str] | None = None) -> protocol.OpenAIError:
    """The key's own monthly budget is spent: 429 code ``budget_exceeded`` (type
    ``insufficient_quota``, as OpenAI answers a spent quota), not to be retried."""
    err = protocol.quota_exceeded()
    err.headers.update({**(headers or {}), **NO_RETRY})
    return err


def budget_exceeded(scope: str, headers: dict[str, str] | None = None
                    ) -> protocol.OpenAIError:
    """A request whose worst case does not fit an org, key or deployment budget."""
    what = {"org": "your organization's", "api_key": "this API key's",
            "deployment": "this model's"}.get(scope, "a")
    return protocol.OpenAIError(
        429, f"This request would exceed {what} budget for the current period.",
        type=protocol.INSUFFICIENT_QUOTA, code=BUDGET_EXCEEDED,
        headers={**(headers or {}), **NO_RETRY})


def check_quota(principal: Principal) -> None:
    """Refuse a key whose budget was already spent at its last verification."""
    if principal.budget_left_eur is not None and principal.budget_left_eur <= 0:
        raise quota_exceeded()


def overloaded(model: str) -> protocol.OpenAIError:
    """The answer when the deployment's queue is full (Serve's ``BackPressureError``): 429
    with Retry-After, never a hang."""
    return protocol.rate_limited(f"The model `{model}` is overloaded; retry shortly.", 1,
                                 code="overloaded")


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: ``250ms``, ``1.5s``, ``1m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


def rate_headers(rpm: int | None, tpm: int | None, requests: float, tokens: float,
                 reset_s: float) -> dict[str, str]:
    """OpenAI's rate-limit headers for a key's window holding ``requests``/``tokens``."""
    out: dict[str, str] = {}
    if rpm is not None:
        out["x-ratelimit-limit-requests"] = str(rpm)
        out["x-ratelimit-remaining-requests"] = str(max(0, int(rpm - requests)))
        out["x-ratelimit-reset-requests"] = duration(reset_s)
    if tpm is not None:
        out["x-ratelimit-limit-tokens"] = str(tpm)
        out["x-ratelimit-remaining-tokens"] = str(max(0, int(tpm - tokens)))
        out["x-ratelimit-reset-tokens"] = duration(reset_s)
    return out


class Admission:
    """Reservations of one ingress replica against the app's shared limiter actor.

    ``limiter`` makes the actor handle (default: the app's named actor, created on first use);
    ``budgets`` fetches the budget views (None: only the key's own budget applies);
    ``metering`` says whether usage can be kept (None: not checked); ``metrics`` counts.
    """

    def __init__(self, *, enabled: bool, limiter_name: str,
                 limiter: Callable[[], Any] | None = None,
                 budgets: BudgetCache | None = None, metering: UsageHealth | None = None,
                 metrics: IngressMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self._make_limiter = limiter or (lambda: get_or_create_limiter(limiter_name))
        self._limiter: Any = None
        self._budgets = budgets
        self._metering = metering
        self._metrics = metrics
        self._clock = clock
        self._settler = SettleBatcher(self._settle_many)
        self._leases = LeaseBook(self._settler.add, clock=clock)
        # key -> (requests, tokens in its window at the lease's grant, reset deadline), for
        # the headers of requests admitted under the lease.
        self._granted: dict[str, tuple[float, float, float]] = {}
        # request id -> (api key id, its deployment's price, the lease that admitted it or
        # None, tokens reserved), for reservations to settle.
        self._reservations: dict[str, tuple[str, PriceSpec | None, str | None, float]] = {}

    async def admit(self, request_id: str, principal: Principal, dep: DeploymentSpec,
                    prompt_tokens: int, completion_tokens: int) -> dict[str, str]:
        """Reserve the request against the key's RPM/TPM and every budget that applies, at
        the worst case; returns the rate-limit headers for its answer (see the module).
        Raises the 503 while usage cannot be metered, the 429s when it does not fit."""
        if self._metering is not None:
            self._metering.check(self._metrics)
        p = principal
        cost = None if dep.price is None else token_cost(dep.price, prompt_tokens,
                                                          completion_tokens)
        asks = await self._budget_asks(p, dep, cost)
        limited = p.rpm_limit is not None or p.tpm_limit is not None
        if not self.enabled or (not limited and not asks):
            return {}
        key = str(p.api_key_id)
        want = prompt_tokens + completion_tokens
        if not asks:
            # Usually admitted here, under this replica's lease of the key's minute.
            lease_id = self._leases.take(key, want)
            if lease_id is not None:
                self._reservations[request_id] = (key, dep.price, lease_id, want)
                return self._lease_headers(p, key)
        lease_id = f"lease-{uuid.uuid4().hex}"
        try:
            if self._limiter is None:
                self._limiter = self._make_limiter()
            answer: tuple[float, str, tuple[float, float] | None, WindowState] = (
                await self._limiter.admit_lease.remote(
                    key, request_id, p.rpm_limit, p.tpm_limit, want, asks or None, lease_id,
                    LEASE_S))
        except Exception:  # noqa: BLE001 - fail open, see serve_apps.ratelimit
            log.warning("rate limiter unreachable: request let through", exc_info=True)
            return {}
        wait, reason, lease, (requests, tokens, reset_s) = answer
        held_requests = held_tokens = 0.0
        if lease is not None:  # the slice is held in the window but not used yet
            held_requests = 0.0 if p.rpm_limit is None else lease[0]
            held_tokens = 0.0 if p.tpm_limit is None else lease[1]
        headers = rate_headers(p.rpm_limit, p.tpm_limit, requests - held_requests,
                               tokens - held_tokens, reset_s)
        if reason == OVER_BUDGET:
            raise quota_exceeded(headers)
        if reason.startswith(BUDGET_EXCEEDED):
            raise budget_exceeded(reason.partition(":")[2], headers)
        if wait > 0 or reason == RATE_LIMITED:
            err = protocol.rate_limited(
                "Rate limit reached for this API key (requests or tokens per minute).", wait)
            err.headers.update(headers)
            raise err
        if lease is not None:
            self._leases.grant(key, lease_id, lease[0], lease[1], LEASE_S)
            self._granted[key] = (requests, tokens, self._clock() + reset_s)
        self._reservations[request_id] = (key, dep.price, None, want)
        return headers

    async def _budget_asks(self, p: Principal, dep: DeploymentSpec, cost: float | None
                           ) -> tuple[BudgetAsk, ...]:
        """What the actor must reserve for the request's budgets (priced deployments); a
        budget already spent refuses here (GPU-costed deployments: the only check)."""
        asks = []
        if p.budget_left_eur is not None and cost is not None:
            asks.append(BudgetAsk(left_eur=float(p.budget_left_eur), verified_at=p.verified_at,
                                  cost_eur=cost, account=str(p.api_key_id),
                                  reason=OVER_BUDGET))
        views: tuple[BudgetView, ...] = ()
        if self._budgets is not None:
            views = await self._budgets.get(str(p.org_id), str(p.api_key_id), dep.name)
        for view in views:
            scope = view.scope.value
            if view.left_eur <= 0:
                raise budget_exceeded(scope)
            if cost is not None:
                asks.append(BudgetAsk(
                    left_eur=float(view.left_eur), verified_at=view.as_of.timestamp(),
                    cost_eur=cost, account=f"budget:{view.budget_id}",
                    reason=f"{BUDGET_EXCEEDED}:{scope}"))
        return tuple(asks)

    def _lease_headers(self, p: Principal, key: str) -> dict[str, str]:
        granted = self._granted.get(key)
        left = self._leases.left(key)
        if granted is None or left is None:
            return {}
        requests, tokens, reset_at = granted
        # The window counted the whole slice at the grant; what is left of it is unused.
        return rate_headers(p.rpm_limit, p.tpm_limit,
                            requests - (0.0 if p.rpm_limit is None else left[0]),
                            tokens - (0.0 if p.tpm_limit is None else left[1]),
                            max(0.0, reset_at - self._clock()))

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
