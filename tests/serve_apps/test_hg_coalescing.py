"""Stream coalescing between the model replica and the ingress (``serve_apps.coalescing``):
the first token goes at once, vLLM's role-only opening event waits for it, what arrives after
is packed per interval, the end goes at once, errors and cancellation reach the engine's
stream, and the interval follows the replica's active streams.

No timings are asserted: "at once" is proven with an interval of an hour and a source that
only goes on once the consumer got the batch (a delayed batch would hang; ``LIVENESS_S``
bounds that wait so a regression fails instead of hanging).
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from tests.serve_apps.conftest import require_modules

require_modules("ray")

from serve_apps.coalescing import (  # noqa: E402
    CONFIG_KEY,
    IntervalPolicy,
    LLMServer,
    StreamGauge,
    carries_token,
    coalesce,
)

HOUR = 3600.0
LIVENESS_S = 20.0
ROLE = 'data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'


def tok(i: int) -> str:
    return f'data: {{"id":"c","choices":[{{"index":0,"delta":{{"content":" w{i}"}}}}]}}\n\n'


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, LIVENESS_S))


def test_the_first_token_goes_at_once_with_the_role_event_held_for_it() -> None:
    async def scenario() -> list[list[str]]:
        got_first = asyncio.Event()

        async def source() -> AsyncIterator[str]:
            yield ROLE
            await asyncio.sleep(0.01)  # prefill: the role event must not go alone
            yield tok(0)
            await got_first.wait()  # goes on only once the first batch was delivered
            yield tok(1)
            yield tok(2)

        batches: list[list[str]] = []
        async for batch in coalesce(source(), lambda: HOUR):
            batches.append(batch)
            if len(batches) == 1:
                got_first.set()
        return batches

    batches = run(scenario())
    assert batches[0] == [ROLE, tok(0)]
    # The end is never delayed either: the source ended, the rest went at once.
    assert [item for b in batches[1:] for item in b] == [tok(1), tok(2)]


def test_what_arrives_after_the_first_token_is_packed_per_interval() -> None:
    async def scenario() -> list[list[str]]:
        release = asyncio.Event()

        async def source() -> AsyncIterator[str]:
            yield tok(0)
            for i in range(1, 6):
                await asyncio.sleep(0)  # the engine yields to the loop between tokens
                yield tok(i)
            await release.wait()
            yield tok(6)

        batches: list[list[str]] = []
        async for batch in coalesce(source(), lambda: 0.05):
            batches.append(batch)
            if sum(map(len, batches)) == 6:
                release.set()
        return batches

    batches = run(scenario())
    assert batches[0] == [tok(0)]
    assert batches[1] == [tok(i) for i in range(1, 6)]  # one message, not five
    assert batches[-1] == [tok(6)]


def test_a_stream_of_only_a_role_event_or_an_error_object_is_not_held() -> None:
    async def only_role() -> AsyncIterator[str]:
        yield ROLE

    error = SimpleNamespace(error={"code": 400})

    async def error_first() -> AsyncIterator[Any]:
        yield error
        await asyncio.Event().wait()  # never ends: the error must still go at once

    async def first(source: AsyncIterator[Any]) -> list[Any]:
        gen = coalesce(source, lambda: HOUR)
        try:
            return await anext(gen)
        finally:
            await gen.aclose()

    assert run(first(only_role())) == [ROLE]
    assert run(first(error_first())) == [error]


def test_an_engine_error_reaches_the_consumer_after_what_came_before() -> None:
    async def source() -> AsyncIterator[str]:
        yield tok(0)
        raise RuntimeError("engine died")

    async def scenario() -> list[list[str]]:
        return [batch async for batch in coalesce(source(), lambda: HOUR)]

    with pytest.raises(RuntimeError, match="engine died"):
        run(scenario())


def test_closing_the_stream_cancels_the_engines_stream_and_releases_the_gauge() -> None:
    gauge = StreamGauge()
    state = {"closed": False, "active_inside": -1}

    async def source() -> AsyncIterator[str]:
        try:
            yield tok(0)
            state["active_inside"] = gauge.active
            await asyncio.Event().wait()  # generating forever
            yield tok(1)
        finally:
            state["closed"] = True

    async def scenario() -> None:
        gen = coalesce(source(), lambda: HOUR, gauge)
        assert await anext(gen) == [tok(0)]
        await asyncio.sleep(0)
        await gen.aclose()  # the client went away
        await asyncio.sleep(0)

    run(scenario())
    assert state == {"closed": True, "active_inside": 1}
    assert gauge.active == 0


def test_the_interval_follows_the_active_streams_within_its_bounds() -> None:
    policy = IntervalPolicy(min_ms=10, max_ms=200, per_stream_ms=4)
    assert policy.interval_s(1) == pytest.approx(0.010)
    assert policy.interval_s(16) == pytest.approx(0.064)
    assert policy.interval_s(64) == pytest.approx(0.200)
    assert IntervalPolicy.from_config(None) == IntervalPolicy()
    assert IntervalPolicy.from_config({"min_ms": 5, "max_ms": 50, "per_stream_ms": 1}) == \
        IntervalPolicy(5, 50, 1)
    for bad in ({"min_ms": 20, "max_ms": 10}, {"per_stream_ms": -1}, {"interval": 3}, [1]):
        with pytest.raises(ValueError):
            IntervalPolicy.from_config(bad)


def test_only_the_role_event_waits() -> None:
    assert not carries_token(ROLE)
    assert carries_token(tok(0))
    # A token whose text says "role" is escaped inside its JSON string: still a token.
    assert carries_token('data: {"choices":[{"delta":{"content":"the \\"role\\" is"}}]}\n\n')
    assert carries_token("data: [DONE]\n\n")
    assert carries_token(SimpleNamespace())


def test_the_server_class_keeps_rays_name_and_reads_its_policy_from_the_config() -> None:
    from ray.serve.llm import LLMServer as RayLLMServer

    assert issubclass(LLMServer, RayLLMServer)
    assert LLMServer.__name__ == "LLMServer"  # deployment names stay `LLMServer:<model>`
    assert pickle.loads(pickle.dumps(LLMServer)) is LLMServer  # by reference, to replicas

    fake = SimpleNamespace(_llm_config=SimpleNamespace(experimental_configs={
        CONFIG_KEY: {"min_ms": 1, "max_ms": 2, "per_stream_ms": 1}}))

    async def source() -> AsyncIterator[str]:
        yield ROLE
        yield tok(0)
        yield tok(1)

    async def scenario() -> list[list[str]]:
        return [b async for b in LLMServer._batch_output_stream(fake, source())]

    batches = run(scenario())
    assert [item for b in batches for item in b] == [ROLE, tok(0), tok(1)]
    assert fake._inventiv_policy == IntervalPolicy(1, 2, 1)
