"""One usage event per request: token counts, timings and how the request ended.

Streams: usage is read from the engine's own chunks. The ingress forces
``stream_options.include_usage`` upstream, so the stream ends with the engine's exact totals
(the usage-only chunk), and asks for ``continuous_usage_stats`` (running totals on every
chunk) only when the client did. A stream cut before its final usage chunk (the client went
away, an error, the deadline) is billed ``max(running totals seen, token events relayed)``:
the engine sends one event per generated token and choice (vLLM's role-only first event
excepted), so no chunk has to carry, or be parsed for, usage; what the client did not ask for
is stripped from its stream. Events after the first token that carry neither ``usage`` nor
``error`` are passed on as they are, without parsing (:func:`rewrite_event`). Ray may pack
several SSE events into one chunk (and an event could straddle two), hence ``SseSplitter``.
A stream that delivered ``[DONE]`` is ``completed`` even if the client hangs up right after
(the ``openai`` client does). A ``rejected`` request (refused before any engine saw it:
limits, rate limits, budgets, an unavailable meter, a full queue) records 0 tokens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

DONE = "[DONE]"


class SseSplitter:
    """Split a byte/str stream into complete SSE events (the text before each blank line)."""

    def __init__(self) -> None:
        self._buf = ""

    def feed(self, chunk: str | bytes | memoryview) -> list[str]:
        if not isinstance(chunk, str):
            chunk = bytes(chunk).decode("utf-8")
        self._buf += chunk.replace("\r\n", "\n")
        *events, self._buf = self._buf.split("\n\n")
        return [e for e in events if e.strip()]

    @property
    def empty(self) -> bool:
        """Whether no unfinished event is buffered (the next chunk starts an event)."""
        return not self._buf

    def rest(self) -> str:
        """What is left after the stream ended (an event without its blank line)."""
        rest, self._buf = self._buf, ""
        return rest if rest.strip() else ""


def event_data(event: str) -> str | None:
    """The ``data:`` payload of one event (multi-line data joined), or None."""
    if "\n" not in event:  # the usual one-line event: no split
        return event[5:].lstrip(" ") if event.startswith("data:") else None
    lines = [line[5:].lstrip(" ") for line in event.split("\n") if line.startswith("data:")]
    return "\n".join(lines) if lines else None


@dataclass
class Meter:
    """What one request consumed; ``record`` is called exactly once via ``finish``."""

    request_id: str
    model: str
    deployment: str
    streamed: bool
    record: Callable[[dict[str, Any]], None]
    api_key_id: str | None = None
    org_id: str | None = None
    user_id: str | None = None
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: float | None = None
    done_seen: bool = False
    error_seen: bool = False
    finished: bool = False
    status: str = ""
    # The stream's chunk head proved by the fast path (see ``_rewrite_fast``).
    fast_head: str = field(default="", repr=False)
    # Token events relayed (one per generated token and choice) and whether the engine's
    # final usage chunk arrived: without it, the tokens billed are at least the events.
    token_events: int = 0
    final_usage_seen: bool = False

    def __post_init__(self) -> None:
        if not self.started:
            self.started = self.clock()

    def usage(self, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        self.prompt_tokens = max(self.prompt_tokens, int(usage.get("prompt_tokens") or 0))
        self.completion_tokens = max(self.completion_tokens,
                                     int(usage.get("completion_tokens") or 0))

    def first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = self.clock()

    @property
    def ttft_ms(self) -> float | None:
        if self.first_token_at is None:
            return None
        return (self.first_token_at - self.started) * 1000

    def finish(self, status: str) -> bool:
        """Record the event (once; later calls do nothing). Returns whether it recorded."""
        if self.finished:
            return False
        self.finished = True
        self.status = status
        if status == "rejected":
            # Refused before any engine saw it (validation, limits, budgets, a full queue,
            # FastAPI's parsing): nothing was consumed, nothing is billed.
            self.prompt_tokens = self.completion_tokens = 0
        elif not self.final_usage_seen and self.token_events > self.completion_tokens:
            # Cut before the engine's final totals: what was relayed was generated.
            self.completion_tokens = self.token_events
        self.record({
            "request_id": self.request_id, "api_key_id": self.api_key_id,
            "org_id": self.org_id, "user_id": self.user_id, "model": self.model,
            "deployment": self.deployment, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "ttft_ms": self.ttft_ms,
            "duration_ms": (self.clock() - self.started) * 1000, "status": status,
            "streamed": self.streamed, "at": datetime.now(UTC),
        })
        return True


def _has_content(obj: dict[str, Any]) -> bool:
    for choice in obj.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or choice.get("text") or delta.get("reasoning_content"):
            return True
    return False


def _token_events(obj: dict[str, Any]) -> int:
    """Generated tokens an event stands for: one per choice with a ``delta`` (chat) or a
    ``text`` (completions), except the role-only event that opens a chat choice."""
    n = 0
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if "text" in choice or ("delta" in choice and not (
                isinstance(delta, dict) and delta.get("role"))):
            n += 1
    return n


def rewrite_event(data: str, meter: Meter, *, keep_usage: bool, keep_continuous: bool
                  ) -> str | None:
    """Meter one ``data:`` payload; return the payload to send on (None: drop the event).

    Most events take :func:`_rewrite_fast` (no full parse); whatever it cannot prove it handles
    exactly like :func:`_rewrite_exact` is handed to the latter."""
    if data == DONE:
        meter.done_seen = True
        return data
    if meter.first_token_at is not None:
        if '"usage"' not in data and '"error"' not in data and '"role"' not in data:
            # No member named usage or error (in JSON text a key's quotes are never escaped):
            # the exact path would meter nothing and send the payload unchanged. Counted as
            # token events without parsing (see ``_token_events``).
            meter.token_events += data.count('"delta":') + data.count('"text":')
            return data
        out = _rewrite_fast(data, meter, keep_usage, keep_continuous)
        if out is not _NOT_FAST:
            return out  # type: ignore[return-value]
    return _rewrite_exact(data, meter, keep_usage=keep_usage, keep_continuous=keep_continuous)


def _rewrite_exact(data: str, meter: Meter, *, keep_usage: bool, keep_continuous: bool
                   ) -> str | None:
    """The reference path: parse the whole payload, re-serialise it without ``usage``."""
    try:
        obj = json.loads(data)
    except ValueError:
        return data  # not ours to judge: pass it on
    if not isinstance(obj, dict):
        return data
    if "error" in obj and "choices" not in obj:
        meter.error_seen = True
        return data
    usage = obj.get("usage")
    meter.usage(usage)
    meter.token_events += _token_events(obj)
    if _has_content(obj):
        meter.first_token()
    if usage is None:
        return data
    final = not obj.get("choices")  # the usage-only chunk at the end
    if final:
        meter.final_usage_seen = True
        return data if keep_usage else None
    if keep_usage and keep_continuous:
        return data
    del obj["usage"]
    return json.dumps(obj, separators=(",", ":"))


# The fast path, for the events of a stream after its first token (the first ones take the
# exact path, which also decides the TTFT). It relies on how vLLM serialises a chunk
# (pydantic, compact): ``{"id":…,"object":…,"created":…,"model":…,"choices":[…],
# "usage":{…}}``, with at most scalar members after ``usage`` (``system_fingerprint``). Why
# cutting the member out is then exact, for valid JSON: inside a JSON string every ``"`` is
# escaped (preceded by ``\``), so a ``"`` preceded by ``,`` opens a key; ``,"usage":{`` is
# thus a key ``usage`` with an object value, parsed on its own (``raw_decode``); when only
# scalar members and the final ``}`` follow it (``_TAIL``), it belongs to the top-level
# object. ``_HEAD`` proves ``choices`` is a top-level key (only scalar members before it),
# and each key occurring once rules out duplicates (where ``json.loads`` keeps the last).
# The output is the upstream bytes without the ``,"usage":{…}`` member: the same JSON value
# as the exact path's (which re-serialises, escaping non-ASCII), i.e. what vLLM itself sends
# without continuous usage. Anything else takes the exact path.
_NOT_FAST = object()
_USAGE_MEMBER = ',"usage":{'
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_SCALAR = rf'(?:{_STRING}|-?[0-9][0-9.eE+-]*|null|true|false)'
_HEAD = re.compile(rf'\{{(?:{_STRING}:{_SCALAR},)*"choices":\[')
_TAIL = re.compile(rf'(?:,{_STRING}:{_SCALAR})*\}}')
_decode_at = json.JSONDecoder().raw_decode


def _rewrite_fast(data: str, meter: Meter, keep_usage: bool, keep_continuous: bool
                  ) -> str | None | object:
    """``_rewrite_exact``'s answer without parsing the whole payload, or ``_NOT_FAST`` when
    the payload is not of the shape this path proves (see above)."""
    cut = data.find(_USAGE_MEMBER)
    if cut < 0 or data.count('"usage":') != 1 or data.count('"choices":') != 1:
        return _NOT_FAST
    # The head (id, object, created, model) is the same in every chunk of a stream: proved
    # once, then recognised by prefix.
    head = meter.fast_head
    if not head or not data.startswith(head):
        match = _HEAD.match(data)
        if match is None:
            return _NOT_FAST
        head = meter.fast_head = match.group()
    try:
        usage, end = _decode_at(data, cut + len(_USAGE_MEMBER) - 1)
    except ValueError:
        return _NOT_FAST
    if _TAIL.fullmatch(data, end) is None:
        return _NOT_FAST
    meter.usage(usage)
    if data.startswith("]", len(head)):  # "choices":[] — the usage-only chunk at the end
        meter.final_usage_seen = True
        return data if keep_usage else None
    if '"role"' not in data:  # as _token_events: a role-only event is no token
        meter.token_events += data.count('"delta":') + data.count('"text":')
    if keep_usage and keep_continuous:
        return data
    return data[:cut] + data[end:]


# What makes an event need the per-event path after the first token (see ``rewrite_event``):
# a member named usage, error or role, or the end of the stream. Text inside a JSON string
# may contain them too: that only sends an event the exact way, never the other way round.
_NEEDS_METERING = ('"usage"', '"error"', '"role"', DONE)


def plain_prefix(chunk: str) -> int:
    """The length of the complete events that start ``chunk`` and need no metering beyond
    counting (no ``_NEEDS_METERING`` text): what :func:`rewrite_event` would pass on as it is,
    one by one. 0 for CRLF framing (the splitter normalises it)."""
    if "\r" in chunk:
        return 0
    end = len(chunk)
    for marker in _NEEDS_METERING:
        i = chunk.find(marker, 0, end)
        if i >= 0:
            end = i
    boundary = chunk.rfind("\n\n", 0, end)
    return boundary + 2 if boundary >= 0 else 0


TIMEOUT_EVENT = ('data: {"error": {"message": "The request exceeded its time limit.", '
                 '"type": "timeout", "param": null, "code": "request_timeout"}}\n\n')


async def _with_deadline(chunks: AsyncIterable[Any], deadline_s: float | None,
                         clock: Callable[[], float]) -> AsyncGenerator[Any, None]:
    """``chunks`` until ``deadline_s`` has passed (then ``TimeoutError``); the upstream is
    closed whichever way this ends, so the engine stops generating."""
    iterator = aiter(chunks)
    end = None if deadline_s is None else clock() + deadline_s
    try:
        while True:
            try:
                if end is None:
                    chunk = await anext(iterator)
                else:
                    async with asyncio.timeout(max(0.0, end - clock())):
                        chunk = await anext(iterator)
            except StopAsyncIteration:
                return
            yield chunk
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()


async def metered_stream(chunks: AsyncIterable[Any], meter: Meter, *,
                         keep_usage: bool, keep_continuous: bool,
                         deadline_s: float | None = None) -> AsyncIterator[str]:
    """Pass a stream through, metering it; records on completion, error, timeout or
    disconnect. Past ``deadline_s`` the upstream is dropped and the client gets an error
    event then ``[DONE]``."""
    splitter = SseSplitter()
    status = "aborted"
    upstream = _with_deadline(chunks, deadline_s, meter.clock)
    try:
        async for chunk in upstream:
            out = []
            if meter.first_token_at is not None and splitter.empty and isinstance(chunk, str):
                # Packed token events (the replica coalesces them): passed on in one piece,
                # counted, not split (see ``plain_prefix``).
                n = plain_prefix(chunk)
                if n:
                    head = chunk[:n]
                    meter.token_events += head.count('"delta":') + head.count('"text":')
                    if n == len(chunk):
                        yield chunk
                        continue
                    out.append(head)
                    chunk = chunk[n:]
            for event in splitter.feed(chunk):
                data = event_data(event)
                if data is None:
                    out.append(event + "\n\n")
                    continue
                new = rewrite_event(data, meter, keep_usage=keep_usage,
                                    keep_continuous=keep_continuous)
                if new is not None:
                    out.append(f"data: {new}\n\n")
            if out:
                yield "".join(out)
        rest = splitter.rest()
        if rest:
            yield rest
        status = "completed"
    except TimeoutError:
        status = "error"
        await upstream.aclose()
        yield TIMEOUT_EVENT + f"data: {DONE}\n\n"
    except (GeneratorExit, asyncio.CancelledError):
        # The client went away (the server cancels us or closes the generator). After
        # [DONE] that is how every stream ends with the `openai` client: completed.
        status = "completed" if meter.done_seen else "aborted"
        raise
    except Exception:
        status = "completed" if meter.done_seen else "error"
        raise
    finally:
        meter.finish("error" if meter.error_seen and status == "completed" else status)
