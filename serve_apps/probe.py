"""Scale from zero: which deployments run a replica (:class:`ReplicaProbe`), and the hold of
requests for a deployment at zero replicas while Serve starts one (:class:`ColdStartHold`).

Deployments with ``min_replicas: 0`` may be at zero replicas: their requests are held (bounded
per deployment, with ``autoscaling.cold_start_timeout_s``) and answered 503 with
``Retry-After`` (:func:`cold_retry_after`) if no replica starts in time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from core.spec import DeploymentSpec
from serve_apps import protocol

log = logging.getLogger(__name__)

# Retry-After of a cold-start 503 when the deployment does not say how long a start takes.
COLD_RETRY_AFTER_S = 10.0
T = TypeVar("T")


class ColdStartHold:
    """Holds requests for deployments that are at zero replicas while Serve starts one.

    Serve does the starting: a handle call with no running replica waits in the handle's
    router, which pushes its queued count to the controller at once, and the autoscaling
    policy's cold-start path scales 0 -> 1 (Ray 2.60 ``router.py``
    ``should_send_scaled_to_zero_optimized_push``, ``autoscaling_policy.py``
    ``_get_cold_start_scale_up_replicas``). This class bounds that wait: at most ``limit``
    held requests per deployment (beyond: 429 ``overloaded``), each for at most ``timeout_s``
    (then the upstream call is cancelled, which also removes it from the router's queue, and
    a 503 with ``Retry-After`` is raised).

    "Waiting for a replica" ends as soon as the upstream call answers (its first chunk for a
    stream: Ray Serve LLM peeks it before returning the streaming response, so no byte was
    sent to the client yet) or the probe sees a running replica; from then on the request is
    generating and only the request's own limits apply.

    ``running(key)`` returns the number of running replicas, or None when unknown (then the
    request is not held: the probe's failure must not turn into timeouts of warm requests).
    """

    def __init__(self, running: Callable[[str], Awaitable[int | None]], *,
                 poll_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 on_held: Callable[[str, int], None] | None = None,
                 on_waited: Callable[[str, float, str], None] | None = None) -> None:
        self._running = running
        self.poll_s = poll_s
        self._clock = clock
        self._on_held = on_held
        self._on_waited = on_waited
        self.held: dict[str, int] = {}

    def _change(self, key: str, delta: int) -> None:
        self.held[key] = self.held.get(key, 0) + delta
        if self._on_held is not None:
            self._on_held(key, self.held[key])

    def _end(self, key: str, started: float, outcome: str) -> None:
        self._change(key, -1)
        if self._on_waited is not None:
            self._on_waited(key, self._clock() - started, outcome)

    async def call(self, key: str, upstream: Callable[[], Awaitable[T]], *, limit: int,
                   timeout_s: float, retry_after_s: float) -> T:
        """``await upstream()``, held (bounded, with a deadline) if ``key`` has no replica."""
        running = await self._running(key)
        if running is None or running > 0:
            return await upstream()
        if self.held.get(key, 0) >= limit:
            raise protocol.rate_limited(
                f"The model `{key}` is starting and its queue is full; retry shortly.",
                retry_after_s, code="overloaded")
        self._change(key, +1)
        started = self._clock()
        task = asyncio.ensure_future(upstream())
        outcome = "aborted"  # the client went away (we are cancelled) unless set otherwise
        try:
            while True:
                remaining = timeout_s - (self._clock() - started)
                if remaining <= 0:
                    break
                done, _ = await asyncio.wait({task}, timeout=min(self.poll_s, remaining))
                if done:
                    failed = task.cancelled() or task.exception() is not None
                    outcome = "failed" if failed else "served"
                    break
                if await self._running(key):
                    outcome = "served"  # a replica runs: the rest is generation
                    break
            if outcome == "aborted":
                outcome = "timeout"
        finally:
            self._end(key, started, outcome)
            if outcome in ("aborted", "timeout"):
                task.cancel()
        if outcome == "timeout":
            # Let the cancellation reach Serve's router before answering (asyncio.wait does
            # not raise the task's CancelledError, so ours, if the client goes, still does).
            await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieved: an error racing the deadline is not logged
            raise protocol.cold_start_timeout(key, timeout_s, retry_after_s)
        return await task


def cold_retry_after(dep: DeploymentSpec) -> float:
    """Retry-After of a cold-start 503: the replica keeps starting after the held request is
    dropped (Serve's target stays at one until it runs), so a retry after about the rest of
    the expected start time finds it warm."""
    auto = dep.autoscaling
    if auto.replica_start_s is None:
        return COLD_RETRY_AFTER_S
    return min(300.0, max(1.0, auto.replica_start_s - auto.cold_start_timeout_s))


class ReplicaProbe:
    """Running replicas per model, from ``serve.status()`` (the public API; in a thread, as it
    blocks), cached ``ttl_s`` and fetched once for all concurrent callers."""

    def __init__(self, deployments: dict[str, str], *, ttl_s: float = 1.0,
                 fetch: Any = None, clock: Any = None) -> None:
        self.deployments = deployments
        self.ttl_s = ttl_s
        self._fetch = fetch or _serve_running_replicas
        self._clock = clock or time.monotonic
        self._counts: dict[str, int] | None = None
        self._at = float("-inf")
        self._inflight: asyncio.Future[dict[str, int] | None] | None = None

    async def running(self, model: str) -> int | None:
        """Running replicas of the model's deployment; None when unknown."""
        name = self.deployments.get(model)
        if name is None:
            return None
        if self._counts is None or self._clock() - self._at > self.ttl_s:
            if self._inflight is None:
                self._inflight = asyncio.ensure_future(self._refresh())
            inflight = self._inflight
            # Shielded: one caller going away must not cancel the others' fetch.
            await asyncio.shield(inflight)
        return None if self._counts is None else self._counts.get(name)

    async def _refresh(self) -> dict[str, int] | None:
        try:
            counts = await asyncio.to_thread(self._fetch)
            self._counts, self._at = counts, self._clock()
        except Exception:  # noqa: BLE001 - unknown: requests are not held (see ColdStartHold)
            log.warning("cannot read Serve's replica states", exc_info=True)
            self._counts, self._at = None, self._clock()
        finally:
            self._inflight = None
        return self._counts


def _serve_running_replicas() -> dict[str, int]:
    """RUNNING replicas per deployment of this replica's application."""
    from ray import serve

    app_name = serve.get_replica_context().app_name
    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return {name: sum(n for state, n in d.replica_states.items()
                      if str(getattr(state, "value", state)) == "RUNNING")
            for name, d in app.deployments.items()}
