"""Issue 13 at the ingress's key cache: a cancelled waiter does not fail the shared lookup
(finding 8), forged keys cost no lookup and failures are limited per client address
(finding 12), and the principal carries the org's name (finding 7)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from decimal import Decimal
from typing import Any

import pytest

from control_api.client.internal import KeyRejected
from core.keys import generate_api_key
from core.wire import KeyVerifyResult
from serve_apps.auth import KeyCache
from serve_apps.protocol import OpenAIError

SECRET = b"the-control-apis-checksum-secret"
KEY = generate_api_key(SECRET).secret


def result(**kw: Any) -> KeyVerifyResult:
    base: dict[str, Any] = dict(
        api_key_id=uuid.uuid4(), org_id=uuid.uuid4(), org_name="acme", user_id=None, name="k",
        allowed_models=None, rpm_limit=None, tpm_limit=None, monthly_budget_eur=None,
        spent_this_month_eur=Decimal(0), budget_left_eur=None, expires_at=None)
    base.update(kw)
    return KeyVerifyResult(**base)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_cancelled_waiter_does_not_fail_the_others() -> None:
    gate = threading.Event()
    calls: list[str] = []

    def verify(key_hash: str) -> KeyVerifyResult:
        calls.append(key_hash)
        gate.wait(5)
        return result()

    cache = KeyCache(verify, checksum_secret=SECRET)

    async def scenario() -> list[Any]:
        first = asyncio.create_task(cache.authenticate(f"Bearer {KEY}"))
        others = [asyncio.create_task(cache.authenticate(f"Bearer {KEY}")) for _ in range(3)]
        while not calls:  # the first one started the lookup
            await asyncio.sleep(0)
        first.cancel()  # its client disconnected
        await asyncio.sleep(0)
        gate.set()
        done = await asyncio.gather(first, *others, return_exceptions=True)
        return done

    first, *others = asyncio.run(scenario())
    assert isinstance(first, asyncio.CancelledError)
    assert all(o.org_name == "acme" for o in others), others
    assert len(calls) == 1


def test_forged_keys_cost_no_lookup_and_failures_are_limited_per_client() -> None:
    calls: list[str] = []

    def verify(key_hash: str) -> KeyVerifyResult:
        calls.append(key_hash)
        raise KeyRejected(404, "invalid_api_key", "unknown API key")

    clock = Clock()
    cache = KeyCache(verify, checksum_secret=SECRET, clock=clock, negative_ttl=0,
                     max_failures_per_client=3, failure_window=60)

    def status(key: str, client: str) -> int:
        with pytest.raises(OpenAIError) as info:
            asyncio.run(cache.authenticate(f"Bearer {key}", client=client))
        return info.value.status

    forged = generate_api_key(b"guessed").secret  # well formed, wrong checksum
    assert status(forged, "6.6.6.6") == 401 and calls == []
    unknown = generate_api_key(SECRET).secret  # a valid checksum, never issued
    assert status(unknown, "6.6.6.6") == 401 and len(calls) == 1
    assert status(unknown, "6.6.6.6") == 401 and len(calls) == 2
    # Over the limit: 429 without any lookup, for this address only.
    assert status(unknown, "6.6.6.6") == 429 and len(calls) == 2
    assert status(KEY, "6.6.6.6") == 429
    assert status(unknown, "7.7.7.7") == 401 and len(calls) == 3
    clock.t += 61  # the window passed
    assert status(unknown, "6.6.6.6") == 401
