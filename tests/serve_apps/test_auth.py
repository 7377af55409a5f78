"""The key cache: format check without lookup, TTL, negative caching, stale-while-down and
single flight. The control API itself is exercised by test_serving.py; here ``verify`` is a
function with a scripted answer so time can be injected exactly."""

from __future__ import annotations

import asyncio
import threading
import uuid
from decimal import Decimal
from typing import Any

import pytest

from control_api.client.internal import ControlApiUnavailable, InternalApiError, KeyRejected
from core.keys import generate_api_key, sha256_hex
from core.wire import KeyVerifyResult
from serve_apps.auth import KeyCache, bearer_key
from serve_apps.protocol import OpenAIError

KEY = generate_api_key().secret


def result(**kw: Any) -> KeyVerifyResult:
    base: dict[str, Any] = dict(
        api_key_id=uuid.uuid4(), org_id=uuid.uuid4(), user_id=None, name="k",
        allowed_models=None, rpm_limit=None, tpm_limit=None, monthly_budget_eur=None,
        spent_this_month_eur=Decimal(0), budget_left_eur=None, expires_at=None)
    base.update(kw)
    return KeyVerifyResult(**base)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Verifier:
    """Answers in order of ``script`` (a result or an exception to raise); counts calls."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.calls: list[str] = []
        self.gate: threading.Event | None = None

    def __call__(self, key_hash: str) -> KeyVerifyResult:
        self.calls.append(key_hash)
        if self.gate is not None:
            self.gate.wait(5)
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[no-any-return]


def auth(cache: KeyCache, header: str | None = f"Bearer {KEY}") -> Any:
    return asyncio.run(cache.authenticate(header))


def refused(cache: KeyCache, header: str | None = f"Bearer {KEY}") -> OpenAIError:
    with pytest.raises(OpenAIError) as info:
        auth(cache, header)
    return info.value


def test_bearer_parsing() -> None:
    assert bearer_key(f"Bearer {KEY}") == KEY
    assert bearer_key(f"bearer   {KEY} ") == KEY
    assert bearer_key("Basic abc") is None
    assert bearer_key("Bearer ") is None
    assert bearer_key(None) is None


def test_malformed_keys_are_refused_without_lookup() -> None:
    v = Verifier(result())
    cache = KeyCache(v, checksum_secret=b"")  # KEY's checksum is keyed by b""
    assert refused(cache, None).code == "missing_api_key"
    assert refused(cache, "Bearer sk-123").code == "invalid_api_key"
    bad_checksum = KEY[:-1] + ("A" if KEY[-1] != "A" else "B")
    assert refused(cache, f"Bearer {bad_checksum}").status == 401
    assert v.calls == [] and cache.stats.rejected_malformed == 2


def test_valid_key_is_cached_for_ttl_then_rechecked() -> None:
    clock = Clock()
    v = Verifier(result())
    cache = KeyCache(v, ttl=10, clock=clock)
    p = auth(cache)
    assert v.calls == [sha256_hex(KEY)]  # only the hash leaves the ingress
    clock.t += 9.9
    assert auth(cache) == p and len(v.calls) == 1
    clock.t += 0.2
    auth(cache)
    assert len(v.calls) == 2


def test_revocation_is_seen_after_ttl() -> None:
    clock = Clock()
    v = Verifier(result(), KeyRejected(404, "revoked_api_key", "revoked"))
    cache = KeyCache(v, ttl=15, clock=clock)
    auth(cache)
    clock.t += 15
    assert refused(cache).code == "revoked_api_key"


def test_refusals_are_cached_briefly() -> None:
    clock = Clock()
    v = Verifier(KeyRejected(404, "invalid_api_key", "unknown"))
    cache = KeyCache(v, negative_ttl=5, clock=clock)
    for _ in range(3):
        assert refused(cache).code == "invalid_api_key"
    assert len(v.calls) == 1
    clock.t += 5
    refused(cache)
    assert len(v.calls) == 2


def test_outage_serves_known_keys_until_the_stale_limit() -> None:
    clock = Clock()
    down = ControlApiUnavailable("down")
    v = Verifier(result(), down)
    cache = KeyCache(v, ttl=10, stale=60, clock=clock)
    p = auth(cache)
    clock.t += 30
    assert auth(cache) == p and cache.stats.stale_served == 1
    clock.t += 31  # 61 s since the last good answer
    err = refused(cache)
    assert (err.status, err.code) == (503, "auth_unavailable")
    assert err.headers["Retry-After"]


def test_outage_with_an_unknown_key_is_503_not_401() -> None:
    cache = KeyCache(Verifier(ControlApiUnavailable("down")))
    assert refused(cache).status == 503
    # A misconfigured service token is an outage for us, not a verdict on the key.
    cache = KeyCache(Verifier(InternalApiError(401, "invalid_token", "bad token")))
    assert refused(cache).status == 503


def test_concurrent_requests_for_a_new_key_share_one_lookup() -> None:
    v = Verifier(result())
    v.gate = threading.Event()
    cache = KeyCache(v)

    async def main() -> list[Any]:
        tasks = [asyncio.ensure_future(cache.authenticate(f"Bearer {KEY}")) for _ in range(5)]
        await asyncio.sleep(0.05)
        v.gate.set()  # type: ignore[union-attr]
        return list(await asyncio.gather(*tasks))

    principals = asyncio.run(main())
    assert len(v.calls) == 1 and len(set(principals)) == 1


def test_ttl_above_30s_is_refused() -> None:
    with pytest.raises(ValueError):
        KeyCache(Verifier(result()), ttl=31)


def test_during_an_outage_known_keys_skip_the_lookup_for_a_while() -> None:
    clock = Clock()
    v = Verifier(result(), ControlApiUnavailable("down"))
    cache = KeyCache(v, ttl=10, stale=600, clock=clock)
    auth(cache)
    clock.t += 11
    auth(cache)  # lookup fails: stale answer, API presumed down for 5 s
    assert len(v.calls) == 2
    for _ in range(10):
        auth(cache)
    assert len(v.calls) == 2
    clock.t += 5
    auth(cache)
    assert len(v.calls) == 3
