"""Stream chunk coalescing between a model replica and the ingress, adaptive to load.

Every item a model replica yields crosses a Serve handle (a Ray streaming-generator message:
serialised on the replica, received by the ingress), then one pass through the ingress and its
HTTP proxy: the per-item cost is paid per message, not per token. Ray Serve LLM already packs
the engine's SSE events into lists (``ray.llm._internal.serve.utils.batcher.Batcher``, every
``stream_batching_interval_ms``, 50 ms by default), but with a fixed interval, and it waits one
interval before the first message too: a model that answers in 5 ms still shows its first
token after up to 50 ms.

``CoalescingLLMServer`` is Ray's ``LLMServer`` with :func:`coalesce` in place of that batcher:

- **the first token is never delayed**: events are sent as soon as one of them carries a token
  (vLLM's role-only opening event, which carries none, waits for it and goes in the same message);
- after it, events are packed for an interval that grows with the streams the replica serves
  at once (:class:`IntervalPolicy`: ``per_stream_ms`` times the active streams, between
  ``min_ms`` and ``max_ms``), so the message rate of a replica stays about constant under load
  (``1 / per_stream_ms`` per second) while one lonely stream still gets its tokens every
  ``min_ms``;
- the stream's end is never delayed either: when the engine's stream ends, what is left goes at
  once, as in Ray's batcher.

Nothing is parsed: a token event is recognised by the absence of ``"role"`` (a JSON key's quotes
are never escaped, so that text is a key), and items that are no SSE string (an
``ErrorResponse``, a non-streamed answer) go at once. The policy comes from the deployment's
``LLMConfig.experimental_configs["inventiv_stream_coalescing"]`` (``min_ms``, ``max_ms``,
``per_stream_ms``); the class keeps Ray's name ``LLMServer`` so deployment names
(``LLMServer:<model>``) do not change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ray.serve.llm import LLMServer as RayLLMServer

T = TypeVar("T")

CONFIG_KEY = "inventiv_stream_coalescing"


@dataclass(frozen=True)
class IntervalPolicy:
    """How long events are packed after the first token, from the replica's active streams."""

    min_ms: float = 10.0
    max_ms: float = 250.0
    per_stream_ms: float = 8.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_ms <= self.max_ms:
            raise ValueError(f"need 0 <= min_ms <= max_ms, got {self.min_ms}, {self.max_ms}")
        if self.per_stream_ms < 0:
            raise ValueError(f"per_stream_ms must be >= 0, got {self.per_stream_ms}")

    @classmethod
    def from_config(cls, value: Any) -> IntervalPolicy:
        """From ``experimental_configs[CONFIG_KEY]`` (a dict; None: the defaults)."""
        if value is None:
            return cls()
        if not isinstance(value, dict) or set(value) - {"min_ms", "max_ms", "per_stream_ms"}:
            raise ValueError(f"{CONFIG_KEY} takes min_ms, max_ms and per_stream_ms, "
                             f"got {value!r}")
        return cls(**{k: float(v) for k, v in value.items()})

    def interval_s(self, active_streams: int) -> float:
        ms = min(self.max_ms, max(self.min_ms, self.per_stream_ms * active_streams))
        return ms / 1000


class StreamGauge:
    """The streams a replica is coalescing right now (one event loop: no lock needed)."""

    def __init__(self) -> None:
        self.active = 0


def carries_token(item: Any) -> bool:
    """Whether an item may be sent at once: anything but vLLM's role-only opening event (an
    error or a non-streamed answer goes at once too)."""
    return not isinstance(item, str) or '"role"' not in item


async def coalesce(source: AsyncIterable[T], interval_s: Callable[[], float],
                   gauge: StreamGauge | None = None) -> AsyncGenerator[list[T], None]:
    """``source``'s items in lists: at once up to the first token, then every ``interval_s()``
    (read anew for each list), the rest at once when ``source`` ends. A reader task pulls
    ``source`` in a tight loop (as Ray's batcher does); closing this generator cancels it, and
    with it the engine's stream (a client that went away stops generation)."""
    pending: list[T] = []
    arrived = asyncio.Event()  # set when an item arrives or the source ends
    ended = asyncio.Event()

    async def read() -> None:
        try:
            async for item in source:
                pending.append(item)
                arrived.set()
        finally:
            ended.set()
            arrived.set()

    reader = asyncio.create_task(read())
    if gauge is not None:
        gauge.active += 1
    try:
        # Up to the first token: every wake-up that brought one sends what is there.
        while True:
            await arrived.wait()
            arrived.clear()
            if ended.is_set() or any(carries_token(item) for item in pending):
                break
        while True:
            if pending:
                batch, pending = pending, []
                yield batch
            if ended.is_set():
                if pending:
                    batch, pending = pending, []
                    yield batch
                reader.result()  # the source's exception, if any
                return
            # Pack for one interval, or until the source ends (whichever comes first).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s()):
                    await ended.wait()
    finally:
        if gauge is not None:
            gauge.active -= 1
        if not reader.done():
            reader.cancel()


# The streams this replica process is coalescing (one LLMServer per replica process).
GAUGE = StreamGauge()


class LLMServer(RayLLMServer):  # type: ignore[misc]  # (Ray's class is untyped)
    """Ray Serve LLM's public ``LLMServer`` with :func:`coalesce` as its stream batcher (it
    overrides the one hook Ray's ``_run_request`` calls for streams). The class Serve deploys:
    ``LLMConfig(server_cls="serve_apps.coalescing.LLMServer")``."""

    def _batch_output_stream(self, generator: AsyncGenerator[Any, None]
                             ) -> AsyncGenerator[list[Any], None]:
        policy = getattr(self, "_inventiv_policy", None)
        if policy is None:
            configs = self._llm_config.experimental_configs or {}
            policy = self._inventiv_policy = IntervalPolicy.from_config(
                configs.get(CONFIG_KEY))
        return coalesce(generator, lambda: policy.interval_s(GAUGE.active), GAUGE)
