"""SSE splitting, usage stripping and the one-event-per-request rule of the stream meter."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from serve_apps.metering import Meter, SseSplitter, event_data, metered_stream, rewrite_event


def chunk(content: str, prompt: int, completion: int, *, usage: bool = True) -> str:
    obj: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk",
                           "choices": [{"index": 0, "delta": {"content": content}}]}
    if usage:
        obj["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                        "total_tokens": prompt + completion}
    return "data: " + json.dumps(obj) + "\n\n"


def final_usage(prompt: int, completion: int) -> str:
    return "data: " + json.dumps({"id": "c1", "choices": [], "usage": {
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion}}) + "\n\n"


DONE = "data: [DONE]\n\n"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make_meter(records: list[dict[str, Any]], clock: Clock | None = None) -> Meter:
    return Meter(request_id="req-1", model="tiny", deployment="tiny-chat", streamed=True,
                 record=records.append, api_key_id="k", org_id="o",
                 clock=clock or Clock())


def data(event: str) -> str:
    payload = event_data(event.strip())
    assert payload is not None
    return payload


def test_splitter_handles_packed_and_straddling_events() -> None:
    s = SseSplitter()
    packed = chunk("a", 3, 1) + chunk("b", 3, 2)
    assert s.feed(packed[:10]) == []
    events = s.feed(packed[10:] + DONE[:7])
    assert [json.loads(data(e))["choices"][0]["delta"]["content"] for e in events] == \
        ["a", "b"]
    assert s.feed(DONE[7:]) == ["data: [DONE]"]
    assert s.rest() == ""
    crlf = SseSplitter()
    assert crlf.feed(b"data: 1\r\n\r\ndata: 2\r\n\r\n") == ["data: 1", "data: 2"]


def test_event_data_joins_multiline_data() -> None:
    assert event_data("event: x\ndata: a\ndata: b") == "a\nb"
    assert event_data(": comment") is None


@pytest.mark.parametrize(("keep_usage", "keep_continuous", "want_usage_in_chunk", "want_final"), [
    (False, False, False, False),  # the client did not ask: usage stripped, final dropped
    (True, False, False, True),    # include_usage: only the final usage chunk
    (True, True, True, True),      # both: passed through
])
def test_rewrite_strips_what_the_client_did_not_ask(keep_usage: bool, keep_continuous: bool,
                                                    want_usage_in_chunk: bool,
                                                    want_final: bool) -> None:
    records: list[dict[str, Any]] = []
    meter = make_meter(records)
    out = rewrite_event(data(chunk("hi", 5, 1)), meter, keep_usage=keep_usage,
                        keep_continuous=keep_continuous)
    assert out is not None
    assert ("usage" in json.loads(out)) is want_usage_in_chunk
    final = rewrite_event(data(final_usage(5, 7)), meter, keep_usage=keep_usage,
                          keep_continuous=keep_continuous)
    assert (final is not None) is want_final
    assert (meter.prompt_tokens, meter.completion_tokens) == (5, 7)
    assert rewrite_event("[DONE]", meter, keep_usage=False, keep_continuous=False) == "[DONE]"
    assert meter.done_seen


async def _stream(parts: list[str]) -> AsyncIterator[str]:
    for p in parts:
        yield p


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_complete_stream_records_once_with_ttft() -> None:
    records: list[dict[str, Any]] = []
    clock = Clock()
    meter = make_meter(records, clock)

    async def upstream() -> AsyncIterator[str]:
        clock.t += 0.25
        yield chunk("a", 4, 1) + chunk("b", 4, 2)  # packed by Ray
        yield final_usage(4, 2) + DONE

    async def consume() -> str:
        return "".join([c async for c in metered_stream(
            upstream(), meter, keep_usage=False, keep_continuous=False)])

    body = run(consume())
    assert '"usage"' not in body and body.endswith(DONE)
    assert len(records) == 1
    rec = records[0]
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["status"]) == (4, 2, "completed")
    assert rec["ttft_ms"] == pytest.approx(250.0)
    assert meter.finish("completed") is False  # never twice


def test_client_disconnect_mid_stream_records_tokens_generated_so_far() -> None:
    records: list[dict[str, Any]] = []
    meter = make_meter(records)
    parts = [chunk(c, 6, i + 1) for i, c in enumerate("abcdef")] + [final_usage(6, 6), DONE]

    async def consume_three() -> None:
        gen = metered_stream(_stream(parts), meter, keep_usage=False, keep_continuous=False)
        for _ in range(3):
            await gen.__anext__()
        await gen.aclose()  # type: ignore[attr-defined]  # what the server does on disconnect

    run(consume_three())
    assert [(r["status"], r["completion_tokens"]) for r in records] == [("aborted", 3)]


def test_cancellation_after_done_counts_as_completed() -> None:
    records: list[dict[str, Any]] = []
    meter = make_meter(records)
    release = asyncio.Event

    async def upstream() -> AsyncIterator[str]:
        yield chunk("a", 2, 1) + DONE
        await release().wait()  # never set: the client hangs up after [DONE]
        yield "unreachable"

    async def consume() -> None:
        gen = metered_stream(upstream(), meter, keep_usage=False, keep_continuous=False)
        await gen.__anext__()
        task = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(consume())
    assert [r["status"] for r in records] == ["completed"]


def test_upstream_failure_is_an_error() -> None:
    records: list[dict[str, Any]] = []
    meter = make_meter(records)

    async def upstream() -> AsyncIterator[str]:
        yield chunk("a", 2, 1)
        raise RuntimeError("engine died")

    async def consume() -> None:
        async for _ in metered_stream(upstream(), meter, keep_usage=True, keep_continuous=True):
            pass

    with pytest.raises(RuntimeError):
        run(consume())
    assert [(r["status"], r["completion_tokens"]) for r in records] == [("error", 1)]


def test_error_event_in_stream_marks_error() -> None:
    records: list[dict[str, Any]] = []
    meter = make_meter(records)
    err = 'data: {"error": {"message": "boom", "type": "x", "code": 500}}\n\n'

    async def consume() -> None:
        async for _ in metered_stream(_stream([chunk("a", 2, 1), err, DONE]), meter,
                                      keep_usage=False, keep_continuous=False):
            pass

    run(consume())
    assert [r["status"] for r in records] == ["error"]


def test_stream_past_its_deadline_ends_with_an_error_event_and_closes_upstream() -> None:
    records: list[dict[str, Any]] = []
    meter = make_meter(records)
    closed = []

    async def upstream() -> AsyncIterator[str]:
        try:
            yield chunk("a", 2, 1)
            await asyncio.sleep(30)  # the engine stalls
            yield chunk("b", 2, 2)
        finally:
            closed.append(True)

    async def consume() -> str:
        return "".join([c async for c in metered_stream(
            upstream(), meter, keep_usage=False, keep_continuous=False, deadline_s=0.05)])

    body = run(consume())
    assert '"code": "request_timeout"' in body and body.endswith(DONE)
    assert closed == [True]
    assert [(r["status"], r["completion_tokens"]) for r in records] == [("error", 1)]


@pytest.mark.parametrize("status,billed", [("rejected", False), ("completed", True),
                                           ("aborted", True), ("error", True)])
def test_only_requests_an_engine_saw_record_tokens(status: str, billed: bool) -> None:
    """A request refused before any engine (limits, rate limits, budgets, a full queue)
    records 0 tokens even though its prompt was counted for the reservation."""
    records: list[dict[str, Any]] = []
    meter = Meter(request_id="r", model="m", deployment="d", streamed=False,
                  record=records.append)
    meter.prompt_tokens, meter.completion_tokens = 120, 7
    meter.finish(status)
    rec = records[0]
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == ((120, 7) if billed else (0, 0))
    assert rec["status"] == status
