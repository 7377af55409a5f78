"""Scale from zero on the real stack: deployments with ``min_replicas: 0`` (see TEST_SPEC),
requests through the official ``openai`` client, Serve starting the replica.

- ``tiny-cold-short`` can never get a replica (its placement asks for a resource no node has)
  and holds requests 1 s: the 503 + Retry-After path, the bound on held requests, and that a
  dropped hold leaves nothing queued in Serve.
- ``tiny-cold``: the suite's one real cold start (~80-150 s on 2 shared cores): held requests,
  a plain one and a stream, get the real answer, then the deployment goes back to zero.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.serve_apps.conftest import APP_NAME, Serving, require_modules

require_modules("openai", "vllm", "torch", "transformers")
import openai  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CHAT = [{"role": "user", "content": "def fibonacci(n):"}]


@pytest.fixture
def key(serving: Serving) -> Any:
    return serving.control.new_key()


def replica_states(model: str) -> dict[str, int]:
    """Replica counts by state of the Serve deployment serving ``model``."""
    from ray import serve

    deployments = serve.status().applications[APP_NAME].deployments
    [name] = [n for n in deployments if n == model or n.endswith(":" + model)]
    return {str(getattr(s, "value", s)): n for s, n in deployments[name].replica_states.items()}


def metric_values(serving: Serving, metric: str, *labels: str) -> list[float]:
    """Values of the exported series of ``metric`` whose labels contain all of ``labels``."""
    text = httpx.get(f"http://127.0.0.1:{serving.metrics_port}/metrics", timeout=10).text
    out = []
    for line in text.splitlines():
        if line.startswith(metric + "{") and all(lb in line for lb in labels):
            out.append(float(line.rsplit(" ", 1)[1]))
    return out


def wait_metric(serving: Serving, check: Any, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "metric never reached the expected value"
        time.sleep(1)


def test_cold_start_past_its_limit_is_503_with_retry_after_and_leaves_nothing_behind(
        serving: Serving, key: Any) -> None:
    c = openai.OpenAI(base_url=serving.v1, api_key=key.key, max_retries=0, timeout=120)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        c.chat.completions.create(model="tiny-cold-short", messages=CHAT, max_tokens=4)
    assert 1 <= time.monotonic() - started < 30
    err = info.value
    assert err.status_code == 503 and err.body["code"] == "model_cold_start_timeout"
    assert int(err.response.headers["retry-after"]) >= 1
    # A stream is answered the same way: no SSE byte goes out before the first token.
    with pytest.raises(openai.InternalServerError) as info:
        c.chat.completions.create(model="tiny-cold-short", messages=CHAT, max_tokens=4,
                                  stream=True)
    assert info.value.status_code == 503

    # Bounded: max_queued_requests (1) held per ingress replica (2); the rest get 429 at once.
    async def burst() -> list[int]:
        ac = openai.AsyncOpenAI(base_url=serving.v1, api_key=key.key, max_retries=0,
                                timeout=120)

        async def one() -> int:
            try:
                await ac.chat.completions.create(model="tiny-cold-short", messages=CHAT,
                                                 max_tokens=4)
            except openai.RateLimitError as exc:
                assert exc.body["code"] == "overloaded"
                assert int(exc.response.headers["retry-after"]) >= 1
                return 429
            except openai.InternalServerError as exc:
                return exc.status_code
            return 200
        try:
            return list(await asyncio.gather(*(one() for _ in range(5))))
        finally:
            await ac.close()

    codes = asyncio.run(burst())
    assert set(codes) <= {429, 503} and 1 <= codes.count(503) <= 2 and 429 in codes, codes

    # One usage event each: refused unserved, nothing generated.
    rows = serving.control.wait_usage(key.id, 7)
    assert len(rows) == 7
    assert {(r.status, r.prompt_tokens, r.completion_tokens) for r in rows} == {
        ("rejected", 0, 0)}
    assert sorted(r.streamed for r in rows) == [False] * 6 + [True]

    # Nothing is left behind: the cancelled calls left Serve's queue (the ingress's handle
    # reports none queued), no request is held, and the deployment never exceeds its bound.
    timeouts = 2 + codes.count(503)
    wait_metric(serving, lambda: sum(metric_values(
        serving, "ray_inventiv_cold_start_wait_s_count", 'model="tiny-cold-short"',
        'outcome="timeout"')) == timeouts)
    wait_metric(serving, lambda: (
        (held := metric_values(serving, "ray_inventiv_cold_start_held",
                               'model="tiny-cold-short"')) != [] and not any(held)))
    wait_metric(serving, lambda: (
        (queued := metric_values(serving, "ray_serve_deployment_queued_queries",
                                 "tiny-cold-short")) != [] and not any(queued)))
    states = replica_states("tiny-cold-short")
    assert states.get("RUNNING", 0) == 0 and sum(states.values()) <= 1, states


def test_held_requests_get_the_real_answer_once_a_replica_starts(serving: Serving,
                                                                key: Any) -> None:
    assert replica_states("tiny-cold").get("RUNNING", 0) == 0  # scaled to zero at start
    held_seen: list[float] = []

    async def main() -> tuple[Any, list[Any]]:
        ac = openai.AsyncOpenAI(base_url=serving.v1, api_key=key.key, max_retries=0,
                                timeout=600)
        done = asyncio.Event()

        async def watch_held() -> None:
            async with httpx.AsyncClient(timeout=10) as http:
                while not done.is_set():
                    text = (await http.get(
                        f"http://127.0.0.1:{serving.metrics_port}/metrics")).text
                    held_seen.append(sum(
                        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith("ray_inventiv_cold_start_held{")
                        and 'model="tiny-cold"' in line))
                    await asyncio.sleep(2)

        async def streamed() -> list[Any]:
            stream = await ac.chat.completions.create(
                model="tiny-cold", messages=CHAT, max_tokens=8, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            return [chunk async for chunk in stream]

        watcher = asyncio.ensure_future(watch_held())
        try:
            plain, chunks = await asyncio.gather(
                ac.chat.completions.create(model="tiny-cold", messages=CHAT, max_tokens=8,
                                           temperature=0),
                streamed())
            return plain, chunks
        finally:
            done.set()
            await watcher
            await ac.close()

    started = time.monotonic()
    plain, chunks = asyncio.run(main())
    waited = time.monotonic() - started
    print(f"\n[cold start] tiny-cold answered after {waited:.1f} s")  # noqa: T201
    assert plain.choices[0].message.content is not None
    assert plain.usage is not None and 1 <= plain.usage.completion_tokens <= 8
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    assert any(ch.choices and ch.choices[0].delta.content for ch in chunks)
    assert max(held_seen) == 2, held_seen  # both were held while the replica started

    rows = serving.control.wait_usage(key.id, 2)
    assert sorted((r.status, r.streamed) for r in rows) == [("completed", False),
                                                            ("completed", True)]
    stream_row = next(r for r in rows if r.streamed)
    # Time to first token includes the wait for the replica: the client saw it that way.
    assert stream_row.ttft_ms is not None and stream_row.ttft_ms > 5000
    wait_metric(serving, lambda: sum(metric_values(
        serving, "ray_inventiv_cold_start_wait_s_count", 'model="tiny-cold"',
        'outcome="served"')) == 2)

    # Back to zero after downscale_to_zero_delay_s without requests: a cold start costs one
    # replica for as long as it is used, not forever.
    deadline = time.monotonic() + 240
    while replica_states("tiny-cold").get("RUNNING", 0) > 0:
        assert time.monotonic() < deadline, replica_states("tiny-cold")
        time.sleep(2)

