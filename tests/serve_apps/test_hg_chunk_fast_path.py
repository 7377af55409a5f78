"""The stream meter's chunk fast path (``serve_apps.metering.plain_prefix``): after the first
token, the complete events of a chunk before the first one that could need metering (``usage``,
``error``, ``role``, ``[DONE]``) are passed on as they are, counted as token events without
being split or parsed. Whatever the chunking, the client gets the same events and the usage
record is the same as with every event taken one by one."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from serve_apps import metering
from serve_apps.metering import Meter, SseSplitter, event_data, metered_stream, plain_prefix


def event(payload: dict[str, Any] | str) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {text}\n\n"


def token(i: int, content: str | None = None) -> str:
    return event({"id": "c1", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"content": content if content is not None else f" w{i}"},
         "logprobs": None, "finish_reason": None}]})


ROLE = event({"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant",
                                                             "content": ""}}]})
USAGE = event({"id": "c1", "choices": [], "usage": {"prompt_tokens": 5,
                                                    "completion_tokens": 9,
                                                    "total_tokens": 14}})
DONE = "data: [DONE]\n\n"


def streams() -> list[list[str]]:
    plain = [ROLE, *(token(i) for i in range(9)), USAGE, DONE]
    second_choice = event({"id": "c1", "choices": [
        {"index": 1, "delta": {"role": "assistant", "content": ""}}]})  # n=2: no token
    tricky = [ROLE, token(0), second_choice, token(1, "[DONE]"), token(2, 'say "usage"'),
              ": a comment line\n\n", token(3, "role"),
              event({"error": {"message": "boom", "type": "server_error", "code": 500}}),
              token(4), "data: not json\n\n", USAGE, DONE]
    cut = [ROLE, *(token(i) for i in range(6))]  # the client goes away / no final usage
    completions = [event({"id": "c", "choices": [{"index": 0, "text": f" t{i}"}]})
                   for i in range(7)] + [USAGE, DONE]
    return [plain, tricky, cut, completions]


def chunkings(events: list[str], rng: random.Random) -> list[list[str]]:
    whole = "".join(events)
    out = [events, ["".join(events[:2]), "".join(events[2:])], [whole]]
    for _ in range(20):  # random cuts, events straddling chunks included
        cuts = sorted(rng.sample(range(1, len(whole)), k=min(6, len(whole) - 1)))
        out.append([whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)])
    return out


def run(parts: list[str], *, keep_usage: bool) -> tuple[list[str], tuple[Any, ...]]:
    records: list[dict[str, Any]] = []
    meter = Meter(request_id="r", model="tiny", deployment="d", streamed=True,
                  record=records.append)

    async def source() -> AsyncIterator[str]:
        for p in parts:
            yield p

    async def consume() -> str:
        return "".join([c async for c in metered_stream(
            source(), meter, keep_usage=keep_usage, keep_continuous=False)])

    body = asyncio.run(consume())
    splitter = SseSplitter()
    sent = [event_data(e) or e for e in splitter.feed(body)] + [splitter.rest()]
    [rec] = records
    return sent, (rec["prompt_tokens"], rec["completion_tokens"], rec["status"],
                  meter.token_events, meter.error_seen, meter.done_seen)


@pytest.mark.parametrize("keep_usage", [False, True])
def test_any_chunking_sends_and_bills_what_event_by_event_does(
        monkeypatch: pytest.MonkeyPatch, keep_usage: bool) -> None:
    rng = random.Random(16)
    for events in streams():
        with monkeypatch.context() as m:
            m.setattr(metering, "plain_prefix", lambda chunk: 0)  # the fast path off
            reference = run(events, keep_usage=keep_usage)
        for parts in chunkings(events, rng):
            assert run(parts, keep_usage=keep_usage) == reference


def test_the_prefix_stops_before_the_event_that_needs_metering() -> None:
    body = token(0) + token(1) + USAGE + DONE
    assert plain_prefix(body) == len(token(0) + token(1))
    assert plain_prefix(token(0) + token(1)) == len(token(0) + token(1))
    assert plain_prefix(token(0) + token(1)[:20]) == len(token(0))  # an unfinished event
    assert plain_prefix(ROLE + token(0)) == 0
    assert plain_prefix(token(0).replace("\n\n", "\r\n\r\n")) == 0  # CRLF: the exact path
