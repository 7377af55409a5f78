"""The cold-start hold and the replica probe, on real asyncio tasks (no Serve needed).

The upstream call stands for Serve's handle call: pending while no replica runs, then
answering. What is checked: warm requests pass straight through, cold ones are counted and
bounded, the deadline applies only while no replica runs (never to generation), and a
dropped hold cancels the upstream call (which is what removes it from Serve's queue).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from serve_apps.probe import ColdStartHold, ReplicaProbe
from serve_apps.protocol import OpenAIError


class Fleet:
    """How many replicas run, per model, as the probe reports it (settable by the test)."""

    def __init__(self, running: int | None = 0) -> None:
        self.value = running
        self.asked = 0

    async def running(self, model: str) -> int | None:
        self.asked += 1
        return self.value


class Recorder:
    def __init__(self) -> None:
        self.held: list[tuple[str, int]] = []
        self.waited: list[tuple[str, str]] = []

    def on_held(self, model: str, count: int) -> None:
        self.held.append((model, count))

    def on_waited(self, model: str, seconds: float, outcome: str) -> None:
        assert seconds >= 0
        self.waited.append((model, outcome))


class Upstream:
    """An upstream call that answers when ``answer`` is set, and notes a cancellation."""

    def __init__(self, result: Any = "answer") -> None:
        self.answer = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = False
        self.result = result

    async def __call__(self) -> Any:
        self.started.set()
        try:
            await self.answer.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return self.result


def hold(fleet: Fleet, rec: Recorder, poll_s: float = 0.02) -> ColdStartHold:
    return ColdStartHold(fleet.running, poll_s=poll_s, on_held=rec.on_held,
                         on_waited=rec.on_waited)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))  # type: ignore[arg-type]


def call(h: ColdStartHold, up: Callable[[], Awaitable[Any]], *, limit: int = 4,
         timeout_s: float = 5.0) -> Awaitable[Any]:
    return h.call("m", up, limit=limit, timeout_s=timeout_s, retry_after_s=7)


def test_warm_and_unknown_deployments_are_not_held() -> None:
    async def main(running: int | None) -> None:
        rec = Recorder()
        up = Upstream()
        up.answer.set()
        assert await call(hold(Fleet(running), rec), up) == "answer"
        assert rec.held == [] and rec.waited == []

    run(main(2))
    run(main(None))  # the probe failed: never turn that into timeouts


def test_cold_request_is_held_until_the_answer() -> None:
    async def main() -> None:
        rec = Recorder()
        h = hold(Fleet(0), rec)
        up = Upstream()
        task = asyncio.ensure_future(call(h, up))
        await up.started.wait()
        await asyncio.sleep(0.1)
        assert h.held == {"m": 1} and not task.done()
        up.answer.set()
        assert await task == "answer"
        assert h.held == {"m": 0}
        assert rec.held == [("m", 1), ("m", 0)] and rec.waited == [("m", "served")]

    run(main())


def test_the_deadline_does_not_cut_generation_once_a_replica_runs() -> None:
    async def main() -> None:
        rec = Recorder()
        fleet = Fleet(0)
        h = hold(fleet, rec)
        up = Upstream()
        task = asyncio.ensure_future(call(h, up, timeout_s=0.3))
        await up.started.wait()
        fleet.value = 1  # the replica runs: from here on the request is generating
        await asyncio.sleep(0.6)  # twice the cold-start limit
        assert not task.done() and h.held == {"m": 0}
        up.answer.set()
        assert await task == "answer"
        assert rec.waited == [("m", "served")] and not up.cancelled

    run(main())


def test_timeout_answers_503_with_retry_after_and_cancels_upstream() -> None:
    async def main() -> None:
        rec = Recorder()
        h = hold(Fleet(0), rec)
        up = Upstream()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(OpenAIError) as info:
            await call(h, up, timeout_s=0.2)
        assert 0.2 <= loop.time() - started < 2
        err = info.value
        assert (err.status, err.code, err.type) == (503, "model_cold_start_timeout",
                                                    "server_error")
        assert err.headers == {"Retry-After": "7"}
        assert up.cancelled  # Serve's router drops a cancelled request from its queue
        assert h.held == {"m": 0} and rec.waited == [("m", "timeout")]

    run(main())


def test_held_requests_are_bounded_per_deployment() -> None:
    async def main() -> None:
        rec = Recorder()
        h = hold(Fleet(0), rec)
        first, second = Upstream(), Upstream()
        task = asyncio.ensure_future(call(h, first, limit=1))
        await first.started.wait()
        with pytest.raises(OpenAIError) as info:
            await call(h, second, limit=1)
        assert (info.value.status, info.value.code) == (429, "overloaded")
        assert info.value.headers["Retry-After"] == "7"
        assert not second.started.is_set()  # refused before dispatch
        # Another deployment has its own bound.
        other = Upstream()
        other.answer.set()
        assert await h.call("other", other, limit=1, timeout_s=1, retry_after_s=1) == "answer"
        first.answer.set()
        assert await task == "answer"
        assert h.held == {"m": 0, "other": 0}

    run(main())


def test_client_going_away_cancels_the_held_call() -> None:
    async def main() -> None:
        rec = Recorder()
        h = hold(Fleet(0), rec)
        up = Upstream()
        task = asyncio.ensure_future(call(h, up))
        await up.started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        assert up.cancelled and h.held == {"m": 0} and rec.waited == [("m", "aborted")]

    run(main())


def test_upstream_errors_pass_through_and_release_the_hold() -> None:
    async def main() -> None:
        rec = Recorder()
        h = hold(Fleet(0), rec)

        async def failing() -> None:
            await asyncio.sleep(0.05)
            raise RuntimeError("engine failed")

        with pytest.raises(RuntimeError, match="engine failed"):
            await call(h, failing)
        assert h.held == {"m": 0} and rec.waited == [("m", "failed")]

    run(main())


def test_probe_fetches_once_for_concurrent_callers_and_caches() -> None:
    calls: list[int] = []
    gate = threading.Event()
    now = [0.0]

    def fetch() -> dict[str, int]:
        calls.append(1)
        gate.wait(5)
        return {"LLMServer:m": 1}

    async def main() -> None:
        probe = ReplicaProbe({"m": "LLMServer:m"}, ttl_s=1.0, fetch=fetch,
                             clock=lambda: now[0])
        tasks = [asyncio.ensure_future(probe.running("m")) for _ in range(5)]
        await asyncio.sleep(0.05)
        gate.set()
        assert await asyncio.gather(*tasks) == [1] * 5
        assert len(calls) == 1
        assert await probe.running("m") == 1 and len(calls) == 1  # cached
        assert await probe.running("unknown-model") is None
        now[0] = 5.0  # stale: fetched again
        assert await probe.running("m") == 1 and len(calls) == 2

    run(main())


def test_probe_failure_is_unknown_not_zero() -> None:
    def fetch() -> dict[str, int]:
        raise ConnectionError("controller unreachable")

    async def main() -> None:
        probe = ReplicaProbe({"m": "LLMServer:m"}, fetch=fetch)
        assert await probe.running("m") is None

    run(main())
