"""Budget admission (org, key and deployment budgets) and OpenAI's rate-limit headers, against
the real limiter actor's class. The concurrency test runs the actor on ONE worker thread, as
Ray runs an actor (one method at a time, calls from several replicas interleaved at random),
with four ingress replicas each holding its own cached budget views."""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from core.states import BudgetScope
from core.wire_budgets import ApplicableBudgets, BudgetView
from serve_apps import protocol
from serve_apps.admission import Admission, duration, token_cost
from serve_apps.auth import Principal
from serve_apps.budget_views import BudgetCache
from serve_apps.ratelimit import RateLimiterActor
from tests.serve_apps.test_admission import LocalHandle, deployment, record

PRICED = ("1000", "1000")  # 0.001 EUR per token


def principal(org: uuid.UUID | None = None, rpm: int | None = None,
              tpm: int | None = None) -> Principal:
    return Principal(api_key_id=uuid.uuid4(), org_id=org or uuid.uuid4(), user_id=None,
                     allowed_models=None, rpm_limit=rpm, tpm_limit=tpm, budget_left_eur=None,
                     verified_at=time.time())


def view(scope: BudgetScope, limit: str, spent: str = "0", *, budget_id: uuid.UUID | None = None,
         as_of: datetime | None = None) -> BudgetView:
    now = as_of or datetime.now(UTC)
    return BudgetView(budget_id=budget_id or uuid.uuid4(), scope=scope, target_id=uuid.uuid4(),
                      limit_eur=Decimal(limit), spent_eur=Decimal(spent),
                      left_eur=max(Decimal(0), Decimal(limit) - Decimal(spent)), as_of=now,
                      period_end=now + timedelta(days=30))


def budgets_of(*views: BudgetView) -> BudgetCache:
    return BudgetCache(lambda org, key, dep: ApplicableBudgets(budgets=list(views)))


def admission(cache: BudgetCache | None, handle: Any = None) -> tuple[Admission, Any]:
    handle = handle or LocalHandle(RateLimiterActor())
    return Admission(enabled=True, limiter_name="t", limiter=lambda: handle,
                     budgets=cache), handle


def test_an_org_budget_refuses_a_request_whose_worst_case_does_not_fit() -> None:
    async def main() -> None:
        adm, _ = admission(budgets_of(view(BudgetScope.ORG, "0.5")))
        dep, key = deployment(price=PRICED), principal()
        assert await adm.admit("r1", key, dep, 100, 300) == {}  # 0.4 EUR reserved
        with pytest.raises(protocol.OpenAIError) as info:
            await adm.admit("r2", key, dep, 100, 100)  # 0.2 more does not fit
        err = info.value
        assert (err.status, err.code, err.type) == (429, "budget_exceeded", "insufficient_quota")
        assert err.headers["x-should-retry"] == "false"
        assert "organization" in err.message
        adm.settle(record("r1", 100, 50))  # really 0.15 EUR
        adm.close()
        await adm.admit("r2", key, dep, 100, 100)  # 0.15 + 0.2 fits

    asyncio.run(main())


def test_every_budget_must_fit_and_a_refusal_reserves_nothing() -> None:
    async def main() -> None:
        org_budget = view(BudgetScope.ORG, "10")
        dep_budget = view(BudgetScope.DEPLOYMENT, "0.3")
        adm, handle = admission(budgets_of(org_budget, dep_budget))
        dep, key = deployment(price=PRICED), principal()
        with pytest.raises(protocol.OpenAIError) as info:
            await adm.admit("r1", key, dep, 100, 300)  # 0.4 > the deployment's 0.3
        assert info.value.code == "budget_exceeded" and "model" in info.value.message
        # Nothing stayed reserved on the org budget either: 0.3 fits both now.
        await adm.admit("r2", key, dep, 100, 200)
        held = handle.actor.windows._budgets[f"budget:{org_budget.budget_id}"].reserved
        assert held == {"r2": pytest.approx(0.3)}

    asyncio.run(main())


def test_spent_budgets_refuse_without_a_round_trip_even_unpriced() -> None:
    async def main() -> None:
        adm, handle = admission(budgets_of(view(BudgetScope.DEPLOYMENT, "5", spent="5")))
        with pytest.raises(protocol.OpenAIError) as info:
            await adm.admit("r1", principal(), deployment(), 10, 10)  # GPU-costed deployment
        assert info.value.code == "budget_exceeded"
        assert info.value.headers["x-should-retry"] == "false"
        ok, ok_handle = admission(budgets_of(view(BudgetScope.ORG, "5", spent="4.99")))
        assert await ok.admit("r2", principal(), deployment(), 10, 10) == {}
        assert handle.calls == [] and ok_handle.calls == []  # cost unknown: nothing to reserve

    asyncio.run(main())


def test_the_keys_own_budget_is_not_to_be_retried_either() -> None:
    async def main() -> None:
        adm, _ = admission(None)
        key = Principal(api_key_id=uuid.uuid4(), org_id=uuid.uuid4(), user_id=None,
                        allowed_models=None, rpm_limit=None, tpm_limit=None,
                        budget_left_eur=Decimal("0.1"), verified_at=time.time())
        with pytest.raises(protocol.OpenAIError) as info:
            await adm.admit("r1", key, deployment(price=PRICED), 100, 100)
        assert (info.value.code, info.value.type) == ("budget_exceeded", "insufficient_quota")
        assert info.value.headers["x-should-retry"] == "false"

    asyncio.run(main())


class ActorThread:
    """A Ray actor's execution model in this process: every call runs on one worker thread,
    one at a time, in arrival order; callers get an awaitable like ``handle.m.remote()``."""

    def __init__(self, actor: RateLimiterActor) -> None:
        self.actor = actor
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.actor, name)
        pool = self.pool

        class Method:
            @staticmethod
            def remote(*args: Any) -> Any:
                return asyncio.wrap_future(pool.submit(method, *args))

        return Method


def test_concurrent_requests_on_four_replicas_never_overspend() -> None:
    """200 concurrent requests of random worst cases on 4 replicas against a 1 EUR org budget
    and a 0.8 EUR key budget; the control plane's spend figure lags (it sees settled costs
    only after a random delay) and each replica caches its own view: the money really spent
    never exceeds either budget (the bound is tighter than the issue's "at most one request's
    worst case over": settled costs never exceed what was reserved)."""
    rng = random.Random(12)
    org_limit, key_limit = Decimal("1.0"), Decimal("0.8")
    org_id, key_id = uuid.uuid4(), uuid.uuid4()
    org_budget, key_budget = uuid.uuid4(), uuid.uuid4()
    spent_db: list[tuple[float, float]] = []  # (visible from wall time, EUR) in "the database"
    lock = threading.Lock()

    def fetch(org: str, key: str, dep: str) -> ApplicableBudgets:
        now = time.time()
        with lock:
            seen = sum(eur for at, eur in spent_db if at <= now)
        as_of = datetime.fromtimestamp(now, UTC)
        return ApplicableBudgets(budgets=[
            view(BudgetScope.ORG, str(org_limit), f"{seen:.6f}", budget_id=org_budget,
                 as_of=as_of),
            view(BudgetScope.API_KEY, str(key_limit), f"{seen:.6f}", budget_id=key_budget,
                 as_of=as_of)])

    actor = ActorThread(RateLimiterActor())
    dep = deployment(price=PRICED)
    key = Principal(api_key_id=key_id, org_id=org_id, user_id=None, allowed_models=None,
                    rpm_limit=None, tpm_limit=None, budget_left_eur=None)
    worst = 0.0
    really_spent: list[float] = []

    async def main() -> None:
        nonlocal worst
        replicas = [Admission(enabled=True, limiter_name="t", limiter=lambda: actor,
                              budgets=BudgetCache(fetch, ttl=rng.choice([0.0, 0.01, 0.05])))
                    for _ in range(4)]

        async def one(i: int) -> None:
            nonlocal worst
            adm = replicas[i % 4]
            prompt, completion = rng.randint(10, 60), rng.randint(10, 100)
            worst = max(worst, token_cost(dep.price, prompt, completion))  # type: ignore[arg-type]
            await asyncio.sleep(rng.random() * 0.05)
            try:
                await adm.admit(f"r{i}", key, dep, prompt, completion)
            except protocol.OpenAIError as err:
                assert err.code == "budget_exceeded"
                return
            await asyncio.sleep(rng.random() * 0.05)  # generating
            used = rng.randint(0, completion)
            cost = token_cost(dep.price, prompt, used)  # type: ignore[arg-type]
            really_spent.append(cost)
            with lock:  # usage reaches the database a little later (well under the margin)
                spent_db.append((time.time() + rng.random() * 0.1, cost))
            adm.settle(record(f"r{i}", prompt, used))

        await asyncio.gather(*(one(i) for i in range(200)))
        for adm in replicas:
            adm.close()

    asyncio.run(main())
    actor.pool.shutdown(wait=True)
    total = sum(really_spent)
    assert total <= float(key_limit) + 1e-9
    # Both outcomes happened (the budget was contended, not trivially large or small).
    assert 5 <= len(really_spent) < 200 and worst > 0


# ---------------------------------------------------------------- rate-limit headers


def test_headers_count_the_current_request_and_come_on_the_429() -> None:
    async def main() -> None:
        adm, _ = admission(None)
        key, dep = principal(rpm=3, tpm=1000), deployment()
        h = await adm.admit("r1", key, dep, 10, 90)
        assert h["x-ratelimit-limit-requests"] == "3"
        assert h["x-ratelimit-remaining-requests"] == "2"
        assert h["x-ratelimit-limit-tokens"] == "1000"
        assert h["x-ratelimit-remaining-tokens"] == "900"
        assert h["x-ratelimit-reset-requests"].endswith("s")
        h = await adm.admit("r2", key, dep, 10, 90)
        assert h["x-ratelimit-remaining-requests"] == "1"
        assert h["x-ratelimit-remaining-tokens"] == "800"
        await adm.admit("r3", key, dep, 10, 90)
        with pytest.raises(protocol.OpenAIError) as info:
            await adm.admit("r4", key, dep, 10, 90)
        err = info.value
        assert err.status == 429 and err.code == "rate_limit_exceeded"
        assert err.headers["x-ratelimit-remaining-requests"] == "0"
        assert err.headers["x-ratelimit-remaining-tokens"] == "700"
        assert int(err.headers["Retry-After"]) >= 1

    asyncio.run(main())


def test_headers_only_for_the_limited_dimensions_and_none_without_limits() -> None:
    async def main() -> None:
        adm, _ = admission(None)
        h = await adm.admit("r1", principal(tpm=500), deployment(), 10, 20)
        assert set(h) == {"x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                          "x-ratelimit-reset-tokens"}
        assert h["x-ratelimit-remaining-tokens"] == "470"
        assert await adm.admit("r2", principal(), deployment(), 10, 20) == {}

    asyncio.run(main())


def test_headers_of_requests_admitted_under_a_lease_keep_counting_down() -> None:
    async def main() -> None:
        adm, handle = admission(None)
        key, dep = principal(rpm=10_000), deployment()  # a lease of 200 requests
        remaining = [int((await adm.admit(f"r{i}", key, dep, 1, 1))
                         ["x-ratelimit-remaining-requests"]) for i in range(20)]
        assert handle.calls == ["admit_lease"]  # 19 of them admitted locally
        assert remaining == list(range(9999, 9979, -1))

    asyncio.run(main())


def test_reset_durations_are_written_like_openais() -> None:
    assert duration(0.25) == "250ms"
    assert duration(1.5) == "1.5s"
    assert duration(59.9994) == "59.999s"
    assert duration(60.0) == "1m0s"
    assert duration(61.4) == "1m1s"


# ---------------------------------------------------------------- the budget views' cache


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_views_are_cached_fetched_once_at_a_time_and_stale_while_the_api_is_down() -> None:
    from control_api.client.internal import ControlApiUnavailable

    clock = Clock()
    calls: list[tuple[str, str, str]] = []
    down = False
    budget = view(BudgetScope.ORG, "5")

    def fetch(org: str, key: str, dep: str) -> ApplicableBudgets:
        calls.append((org, key, dep))
        if down:
            raise ControlApiUnavailable("down")
        time.sleep(0.02)  # long enough for the burst below to pile up on one lookup
        return ApplicableBudgets(budgets=[budget])

    cache = BudgetCache(fetch, ttl=10, stale=100, down_backoff=5, clock=clock)

    async def burst() -> list[tuple[BudgetView, ...]]:
        return list(await asyncio.gather(*(cache.get("o", "k", "d") for _ in range(20))))

    assert all(v == (budget,) for v in asyncio.run(burst()))
    assert len(calls) == 1  # single flight
    clock.t = 5
    assert asyncio.run(cache.get("o", "k", "d")) == (budget,) and len(calls) == 1
    clock.t, down = 50, True
    assert asyncio.run(cache.get("o", "k", "d")) == (budget,)  # stale, within 100 s
    assert asyncio.run(cache.get("o", "k", "other")) == ()  # nothing known: let through
    assert len(calls) == 2  # the second one waited for the backoff, no lookup
    assert cache.stats.unavailable == 1 and cache.stats.stale_served == 1
    clock.t = 200
    assert asyncio.run(cache.get("o", "k", "d")) == ()  # too old to trust
