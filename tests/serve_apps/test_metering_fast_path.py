"""The stream meter's fast path (slicing ``usage`` off vLLM's compact chunks) against the exact
path (parse, delete, re-serialise): same payload (as JSON), same meter state, for vLLM-shaped
streams and for adversarial payloads (``"usage"`` inside strings, nested or duplicate keys)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from serve_apps.metering import (
    _NOT_FAST,
    Meter,
    _rewrite_exact,
    _rewrite_fast,
    event_data,
    rewrite_event,
)

RECORDED = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "vllm_chat_stream.txt"
MODES = [(False, False), (True, False), (True, True)]
SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def meter() -> Meter:
    return Meter(request_id="r", model="m", deployment="d", streamed=True,
                 record=lambda _: None, clock=Clock())


def state(m: Meter) -> tuple[Any, ...]:
    return (m.prompt_tokens, m.completion_tokens, m.first_token_at, m.error_seen, m.done_seen)


def same_payload(fast: str | None, exact: str | None, upstream: str, *, sliced: bool) -> None:
    assert (fast is None) == (exact is None)
    if fast is None or exact is None:
        return
    if fast == exact:
        return
    assert json.loads(fast) == json.loads(exact)
    # The fast path sends upstream's own bytes, minus the usage member when stripped.
    assert sliced
    cut = upstream.find(',"usage":{')
    assert fast == upstream or (cut > 0 and fast.startswith(upstream[:cut])
                                and upstream.endswith(fast[cut:]))


def run_both(payloads: list[str], keep_usage: bool, keep_continuous: bool) -> int:
    """Feed a stream to both paths; returns how many events took the fast path."""
    fast_m, exact_m = meter(), meter()
    fast_hits = 0
    for data in payloads:
        sliced = False
        if fast_m.first_token_at is not None and data != "[DONE]":
            probe = meter()
            probe.first_token_at = fast_m.first_token_at
            sliced = _rewrite_fast(data, probe, keep_usage, keep_continuous) is not _NOT_FAST
            fast_hits += sliced
        fast = rewrite_event(data, fast_m, keep_usage=keep_usage,
                             keep_continuous=keep_continuous)
        if data == "[DONE]":
            exact_m.done_seen = True
            exact: str | None = data
        else:
            exact = _rewrite_exact(data, exact_m, keep_usage=keep_usage,
                                   keep_continuous=keep_continuous)
        same_payload(fast, exact, data, sliced=sliced)
        assert state(fast_m) == state(exact_m)
    return fast_hits


def recorded_payloads() -> list[str]:
    text = RECORDED.read_text(encoding="utf-8")
    return [d for d in (event_data(e) for e in text.split("\n\n") if e.strip()) if d]


def test_recorded_vllm_stream_takes_the_fast_path_with_the_same_result() -> None:
    payloads = recorded_payloads()
    for keep_usage, keep_continuous in MODES:
        hits = run_both(payloads, keep_usage, keep_continuous)
        # After the first token: every content chunk and the final usage chunk.
        assert hits == 3


# ---------------------------------------------------------------- vLLM-shaped streams

TRICKY = st.sampled_from([
    '"', '\\', '\\"', ',"usage":{"prompt_tokens":999}}', '"usage":', '"choices":[]',
    '}}', '{"a":1}', 'é', '日本', '\U0001f600', '\n', '\u2028', '\x00', '\ufffd', ' ', ''])
TEXT = st.lists(st.one_of(TRICKY, st.text(max_size=8)), max_size=5).map("".join)
LOGPROB = st.floats(min_value=-50, max_value=0, allow_nan=False)


@st.composite
def choice(draw: Any, index: int, chat: bool) -> dict[str, Any]:
    content = draw(TEXT)
    logprobs = None
    if draw(st.booleans()):
        tokens = draw(st.lists(TEXT, min_size=1, max_size=3))
        if chat:
            logprobs = {"content": [{"token": t, "logprob": draw(LOGPROB),
                                     "bytes": list(t.encode()),
                                     "top_logprobs": [{"token": t, "logprob": -0.5}]}
                                    for t in tokens]}
        else:
            logprobs = {"tokens": tokens, "token_logprobs": [draw(LOGPROB) for _ in tokens],
                        "top_logprobs": [{t: -0.1, '"usage': -0.2} for t in tokens],
                        "text_offset": list(range(len(tokens)))}
    finish = draw(st.sampled_from([None, None, "stop", "length", "tool_calls"]))
    if not chat:
        return {"index": index, "text": content, "logprobs": logprobs,
                "finish_reason": finish, "stop_reason": None}
    delta: dict[str, Any] = {"content": content}
    if draw(st.booleans()):
        delta["reasoning_content"] = draw(TEXT)
    if draw(st.integers(0, 4)) == 0:
        delta = {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                 "function": {"name": "f", "arguments": json.dumps(
                                     {"usage": {"q": draw(TEXT)}, "choices": []})}}]}
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish,
            "token_ids": None}


@st.composite
def stream(draw: Any) -> tuple[list[str], bool]:
    """A vLLM-like stream: role chunk, content chunks (n choices each) with cumulative usage,
    the usage-only final chunk, [DONE]; compact, ASCII-escaped or not."""
    chat = draw(st.booleans())
    n = draw(st.integers(1, 3))
    ascii_only = draw(st.booleans())
    prompt = draw(st.integers(0, 500))
    head = {"id": "chatcmpl-" + draw(st.text("abc\"-\\", max_size=6)),
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": 1795794760, "model": draw(st.sampled_from(["tiny", 'we"ird', "ü"]))}

    def dump(obj: dict[str, Any]) -> str:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=ascii_only)

    def usage(done: int) -> dict[str, Any]:
        u: dict[str, Any] = {"prompt_tokens": prompt, "total_tokens": prompt + done,
                             "completion_tokens": done}
        if draw(st.booleans()):
            u["completion_tokens_details"] = draw(st.sampled_from(
                [None, {"reasoning_tokens": 0}]))
        if draw(st.integers(0, 3)) == 0:
            u["prompt_tokens_details"] = {"cached_tokens": 0}
        return u

    out = []
    if chat:
        out.append(dump({**head, "choices": [
            {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
             "finish_reason": None} for i in range(n)], "usage": usage(0),
            "prompt_token_ids": None, "prompt_text": None}))
    done = 0
    for _ in range(draw(st.integers(0, 8))):
        done += draw(st.integers(0, 3))
        obj = {**head, "choices": [draw(choice(i, chat)) for i in range(n)]}
        if draw(st.integers(0, 9)):  # now and then a chunk without usage
            obj["usage"] = usage(done)
        out.append(dump(obj))
    if draw(st.booleans()):
        out.append(dump({"error": {"message": 'boom ,"usage":{}}', "type": "x",
                                   "code": 500}}))
    out.append(dump({**head, "choices": [], "usage": usage(done),
                     "system_fingerprint": "vllm-0.32.0"}))
    out.append("[DONE]")
    return out, ascii_only


@SETTINGS
@given(stream(), st.sampled_from(MODES))
def test_fast_path_equals_exact_path_on_vllm_shaped_streams(
        generated: tuple[list[str], bool], mode: tuple[bool, bool]) -> None:
    payloads, _ = generated
    run_both(payloads, *mode)


# ---------------------------------------------------------------- arbitrary payloads

KEY = st.sampled_from(["id", "choices", "usage", "object", "error", "x", '"usage', "usage\""])
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), TEXT,
                   st.floats(allow_nan=False, allow_infinity=False))
JSONISH = st.recursive(SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(KEY, inner, max_size=4)), max_leaves=12)


MEMBERS = st.lists(st.tuples(KEY, JSONISH), max_size=3)
USAGE = st.dictionaries(st.sampled_from(["prompt_tokens", "completion_tokens", "x"]),
                        st.one_of(st.none(), st.integers(0, 99), JSONISH), max_size=3)


@st.composite
def members(draw: Any) -> list[tuple[str, Any]]:
    """Mostly near the shape the fast path takes (so it does), plus what may break it."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.lists(st.tuples(KEY, JSONISH), max_size=6))
    scalars = st.lists(st.tuples(KEY, SCALAR), max_size=3)
    return [*draw(scalars), ("choices", draw(st.lists(JSONISH, max_size=2))), *draw(MEMBERS),
            ("usage", draw(USAGE)), *draw(scalars)]


@SETTINGS
@given(members(), st.booleans(), st.sampled_from(MODES))
def test_fast_path_is_exact_or_declines_on_arbitrary_payloads(
        members: list[tuple[str, Any]], ascii_only: bool, mode: tuple[bool, bool]) -> None:
    # Built by hand so duplicate keys survive into the payload.
    data = "{" + ",".join(json.dumps(k) + ":" + json.dumps(
        v, separators=(",", ":"), ensure_ascii=ascii_only) for k, v in members) + "}"
    fast_m, exact_m = meter(), meter()
    fast_m.first_token_at = exact_m.first_token_at = 1.0
    try:
        exact = _rewrite_exact(data, exact_m, keep_usage=mode[0], keep_continuous=mode[1])
    except (AttributeError, TypeError, ValueError):
        # Choices that are not a list of objects, token counts that are not numbers: the
        # exact path gives up (the stream ends as an error); nothing vLLM sends.
        return
    fast = _rewrite_fast(data, fast_m, *mode)
    event("declined" if fast is _NOT_FAST else "fast path")
    if fast is _NOT_FAST:
        assert state(fast_m) == state(meter())[:2] + (1.0, False, False)
        return
    assert isinstance(fast, str | None)
    same_payload(fast, exact, data, sliced=True)
    assert state(fast_m) == state(exact_m)


def test_fast_path_declines_what_it_cannot_prove() -> None:
    m = meter()
    m.first_token_at = 1.0
    base = '{"id":"x","choices":[{"index":0,"text":"a"}],"usage":{"prompt_tokens":1}}'
    assert _rewrite_fast(base, m, False, False) == '{"id":"x","choices":[{"index":0,"text":"a"}]}'
    for data in [
        '{"id":"x","choices":[{"index":0,"text":"a"}],"usage":{"prompt_tokens":1},"z":[]}',
        '{"id":"x","usage":null,"choices":[],"usage":{"prompt_tokens":1}}',  # duplicate
        '{"id":"x","choices":[1],"usage":{"prompt_tokens":1},"usage":null}',
        '{"nested":{"choices":[]},"usage":{"prompt_tokens":1}}',  # choices not top-level
        '{"id":"x","choices":[],"choices":[1],"usage":{"prompt_tokens":1}}',
        '{"id":"x","choices":[],"usage":{"prompt_tokens":1}} ',
        '{"id": "x", "choices": [], "usage": {"prompt_tokens": 1}}',  # not compact
        '{"error":{"message":"x","usage":{}}}',
    ]:
        assert _rewrite_fast(data, m, False, False) is _NOT_FAST, data
