"""The stream meter without running totals on every chunk (the ingress asks the engine for
``continuous_usage_stats`` only when the client did): the final usage chunk is billed exactly,
a stream cut before it is billed by the token events relayed, and the events passed on
unparsed meter exactly what the exact path would."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from serve_apps.metering import Meter, _rewrite_exact, event_data, metered_stream, rewrite_event

RECORDED = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "vllm_chat_stream.txt"
DONE = "data: [DONE]\n\n"


def recorded_without_running_totals() -> list[str]:
    """vLLM's recorded stream as it comes without ``continuous_usage_stats``: the usage member
    only on the final, choice-less chunk."""
    events = [e for e in RECORDED.read_text().split("\n\n") if e.strip()]
    out = []
    for event in events:
        payload = event_data(event)
        assert payload is not None
        if payload != "[DONE]" and '"choices":[]' not in payload:
            payload = re.sub(r',"usage":\{[^{}]*\}', "", payload)
        out.append(f"data: {payload}\n\n")
    return out


def chunk(content: str, *, role: bool = False) -> str:
    delta: dict[str, Any] = {"content": content}
    if role:
        delta = {"role": "assistant", "content": ""}
    return "data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}) + "\n\n"


def final_usage(prompt: int, completion: int) -> str:
    return "data: " + json.dumps({"id": "c1", "choices": [], "usage": {
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion}}) + "\n\n"


def make_meter(records: list[dict[str, Any]], prompt_tokens: int = 0) -> Meter:
    m = Meter(request_id="req-1", model="tiny", deployment="tiny-chat", streamed=True,
              record=records.append, api_key_id="k", org_id="o")
    m.prompt_tokens = prompt_tokens  # as the precheck sets it (exact prompt length)
    return m


async def _stream(parts: list[str]) -> AsyncIterator[str]:
    for p in parts:
        yield p


def test_recorded_stream_bills_the_final_usage_exactly() -> None:
    parts = recorded_without_running_totals()
    assert sum('"usage"' in p for p in parts) == 1
    records: list[dict[str, Any]] = []
    meter = make_meter(records)

    async def consume() -> str:
        return "".join([c async for c in metered_stream(
            _stream(parts), meter, keep_usage=False, keep_continuous=False)])

    body = asyncio.run(consume())
    assert '"usage"' not in body and body.endswith(DONE)
    # The upstream bytes of every token event, unchanged.
    assert body == "".join(p for p in parts if '"usage"' not in p)
    [rec] = records
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["status"]) == (12, 4, "completed")
    assert meter.token_events == 4  # the role-only first event is no token


def test_final_usage_wins_over_token_events() -> None:
    """More events than tokens (an engine packing nothing, or a finish-only event): the
    engine's totals are what a completed stream is billed."""
    records: list[dict[str, Any]] = []
    meter = make_meter(records, prompt_tokens=5)
    parts = [chunk("", role=True), *(chunk(c) for c in "abcd"), final_usage(5, 3), DONE]

    async def consume() -> None:
        async for _ in metered_stream(_stream(parts), meter, keep_usage=True,
                                      keep_continuous=False):
            pass

    asyncio.run(consume())
    assert [(r["status"], r["prompt_tokens"], r["completion_tokens"]) for r in records] == [
        ("completed", 5, 3)]


def test_disconnect_without_running_totals_bills_the_tokens_relayed() -> None:
    records: list[dict[str, Any]] = []
    meter = make_meter(records, prompt_tokens=7)
    parts = [chunk("", role=True), *(chunk(c) for c in "abcdef"), final_usage(7, 6), DONE]

    async def consume_four() -> None:
        gen = metered_stream(_stream(parts), meter, keep_usage=False, keep_continuous=False)
        for _ in range(4):  # the role event and three tokens
            await gen.__anext__()
        await gen.aclose()  # type: ignore[attr-defined]  # what the server does on disconnect

    asyncio.run(consume_four())
    assert [(r["status"], r["prompt_tokens"], r["completion_tokens"]) for r in records] == [
        ("aborted", 7, 3)]


def test_packed_chunks_are_metered_like_single_events() -> None:
    """Ray's stream batching packs several events into one chunk: same bill, same bytes."""
    parts = [chunk("", role=True), *(chunk(c) for c in "abcdefgh"), final_usage(9, 8), DONE]
    packed = ["".join(parts[:3]), "".join(parts[3:7]), "".join(parts[7:])]
    outs = []
    for stream in (parts, packed):
        records: list[dict[str, Any]] = []
        meter = make_meter(records)

        async def consume(s: list[str] = stream, m: Meter = meter) -> str:
            return "".join([c async for c in metered_stream(
                _stream(s), m, keep_usage=False, keep_continuous=False)])

        outs.append((asyncio.run(consume()), [(r["status"], r["prompt_tokens"],
                                               r["completion_tokens"]) for r in records]))
    assert outs[0] == outs[1]
    assert outs[0][1] == [("completed", 9, 8)]


@pytest.mark.parametrize("payload", [
    # An error event after the first token: must still be seen as one.
    '{"error":{"message":"boom","type":"server_error","code":500}}',
    # Usage on a chunk with choices (continuous totals): metered and stripped.
    '{"id":"c1","choices":[{"index":0,"delta":{"content":"x"}}],'
    '"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12}}',
    # A later choice's role event (n > 1): no token.
    '{"id":"c1","choices":[{"index":1,"delta":{"role":"assistant","content":""}}]}',
    # Plain token events, chat and completions.
    '{"id":"c1","choices":[{"index":0,"delta":{"content":"usage"}}]}',
    '{"id":"c1","choices":[{"index":0,"text":"error","logprobs":null}]}',
    'not json at all',
])
def test_events_after_the_first_token_match_the_exact_path(payload: str) -> None:
    def started() -> Meter:
        m = make_meter([])
        m.first_token()
        return m

    fast, exact = started(), started()
    out_fast = rewrite_event(payload, fast, keep_usage=False, keep_continuous=False)
    out_exact = _rewrite_exact(payload, exact, keep_usage=False, keep_continuous=False)
    if out_fast != out_exact:
        assert out_fast is not None and out_exact is not None
        assert json.loads(out_fast) == json.loads(out_exact)

    def state(m: Meter) -> tuple[Any, ...]:
        return (m.prompt_tokens, m.completion_tokens, m.error_seen, m.done_seen,
                m.token_events, m.final_usage_seen)

    assert state(fast) == state(exact)
