"""Admission against the real limiter actor's class (in this process: only Ray's
``handle.method.remote(...)`` calling convention is stood in for), on a real event loop:
limits and budgets refuse with the right 429, settlements free what was reserved, leases keep
busy keys off the actor, and an unreachable limiter lets requests through."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import pytest

from core.spec import DeploymentSpec
from serve_apps import protocol
from serve_apps.admission import Admission, check_quota, token_cost
from serve_apps.auth import Principal
from serve_apps.ratelimit import RateLimiterActor


class LocalHandle:
    """A Ray actor handle's calling convention over an actor object in this process."""

    def __init__(self, actor: RateLimiterActor) -> None:
        self.actor = actor
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.actor, name)
        calls = self.calls

        class Method:
            @staticmethod
            def remote(*args: Any) -> asyncio.Future[Any]:
                calls.append(name)
                done = asyncio.get_running_loop().create_future()
                done.set_result(method(*args))
                return done

        return Method


def deployment(price: tuple[str, str] | None = None) -> DeploymentSpec:
    return DeploymentSpec.model_validate({
        "name": "chat", "model": {"name": "m", "source": "/nowhere", "task": "chat"},
        "engine": {"max_model_len": 2048},
        **({"price": {"input_eur_per_1m": price[0], "output_eur_per_1m": price[1]}}
           if price else {})})


def principal(rpm: int | None = None, tpm: int | None = None,
              budget_left: str | None = None) -> Principal:
    return Principal(api_key_id=uuid.uuid4(), org_id=uuid.uuid4(), user_id=None,
                     allowed_models=None, rpm_limit=rpm, tpm_limit=tpm,
                     budget_left_eur=None if budget_left is None else Decimal(budget_left))


def admission(enabled: bool = True) -> tuple[Admission, LocalHandle]:
    handle = LocalHandle(RateLimiterActor())
    return Admission(enabled=enabled, limiter_name="test", limiter=lambda: handle), handle


def record(request_id: str, prompt: int, completion: int) -> dict[str, Any]:
    return {"request_id": request_id, "prompt_tokens": prompt, "completion_tokens": completion}


def test_keys_without_limits_never_ask_the_limiter() -> None:
    async def main() -> None:
        adm, handle = admission()
        await adm.admit("r1", principal(), deployment(), 10, 100)
        adm.settle(record("r1", 10, 5))
        adm.close()
        assert handle.calls == []

    asyncio.run(main())


def test_rpm_refuses_with_retry_after_and_off_means_off() -> None:
    async def main() -> None:
        adm, _ = admission()
        key = principal(rpm=2)  # too small for a lease: every request asks the actor
        dep = deployment()
        await adm.admit("r1", key, dep, 1, 1)
        await adm.admit("r2", key, dep, 1, 1)
        with pytest.raises(protocol.OpenAIError) as info:
            await adm.admit("r3", key, dep, 1, 1)
        assert info.value.status == 429 and float(info.value.headers["Retry-After"]) > 0
        off, handle = admission(enabled=False)
        for i in range(5):
            await off.admit(f"o{i}", key, dep, 1, 1)
        assert handle.calls == []

    asyncio.run(main())


def test_settlement_replaces_the_worst_case_by_the_real_usage() -> None:
    async def main() -> None:
        adm, handle = admission()
        key = principal(tpm=1000)  # 2 % of 1000 tokens is no lease for 300-token requests
        dep = deployment()
        await adm.admit("r1", key, dep, 100, 200)
        await adm.admit("r2", key, dep, 100, 200)
        with pytest.raises(protocol.OpenAIError):
            await adm.admit("r3", key, dep, 300, 200)  # 600 reserved + 500 > 1000
        adm.settle(record("r1", 100, 10))
        adm.settle(record("r2", 100, 10))
        adm.close()  # sends the pending settlements
        assert handle.actor.usage(str(key.api_key_id)) == (2, 220)
        await adm.admit("r3", key, dep, 300, 200)  # fits now

    asyncio.run(main())


def test_a_priced_deployment_refuses_past_the_budget() -> None:
    async def main() -> None:
        adm, _ = admission()
        dep = deployment(price=("1000", "1000"))  # 0.001 EUR per token
        key = principal(budget_left="0.5")
        await adm.admit("r1", key, dep, 100, 300)  # worst case 0.4 EUR
        with pytest.raises(protocol.OpenAIError) as info:
            await adm.admit("r2", key, dep, 100, 100)  # 0.2 more does not fit
        assert (info.value.code, info.value.type) == ("budget_exceeded", "insufficient_quota")
        assert info.value.headers["x-should-retry"] == "false"
        adm.settle(record("r1", 100, 50))  # really 0.15 EUR
        adm.close()
        await adm.admit("r2", key, dep, 100, 100)

    asyncio.run(main())


def test_busy_keys_are_admitted_under_a_lease() -> None:
    async def main() -> None:
        adm, handle = admission()
        key = principal(rpm=10_000)  # a lease of 200 requests
        dep = deployment()
        for i in range(50):
            await adm.admit(f"r{i}", key, dep, 1, 1)
        assert handle.calls == ["admit_lease"]
        adm.close()  # the unused part of the slice goes back
        assert handle.actor.usage(str(key.api_key_id))[0] == 50

    asyncio.run(main())


def test_an_unreachable_limiter_lets_requests_through() -> None:
    def unreachable() -> Any:
        raise ConnectionError("no Ray")

    async def main() -> None:
        adm = Admission(enabled=True, limiter_name="test", limiter=unreachable)
        await adm.admit("r1", principal(rpm=1), deployment(), 1, 1)
        await adm.admit("r2", principal(rpm=1), deployment(), 1, 1)

    asyncio.run(main())


def test_quota_and_cost() -> None:
    check_quota(principal(budget_left="0.01"))
    with pytest.raises(protocol.OpenAIError) as info:
        check_quota(principal(budget_left="0"))
    assert (info.value.code, info.value.type) == ("budget_exceeded", "insufficient_quota")
    price = deployment(price=("2", "6")).price
    assert price is not None
    assert token_cost(price, 1_000_000, 500_000) == pytest.approx(5.0)
