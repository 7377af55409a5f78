"""Prometheus metrics of the ingress, through ``ray.util.metrics`` (so they are exported by each
node's Ray metrics agent and show in the Ray dashboard with Ray's own Serve metrics).

Names are prefixed ``ray_`` by Ray's exporter: ``ray_inventiv_requests_total`` etc. Labels:
``model`` and ``org`` (org id; bounded by the number of orgs), plus ``code`` on errors and
``kind`` (prompt/completion) on tokens, ``reason`` on rate-limit rejections.

Scale from zero: ``inventiv_cold_start_held`` (requests held for a deployment at zero replicas,
per ingress replica, by ``model``) and ``inventiv_cold_start_wait_s`` (how long each held
request waited, by ``model`` and ``outcome``: served, failed (the upstream call raised),
timeout, aborted).

Metering health (per replica): ``inventiv_usage_dropped`` (usage records dropped: spool and
buffer full), ``inventiv_spool_full`` and ``inventiv_spool_write_errors`` (spool writes refused,
by ``errno``: ENOSPC, EIO, EROFS …), ``inventiv_metering_unavailable`` (requests answered 503
``metering_unavailable`` while usage cannot be kept), and the gauges
``inventiv_usage_buffered`` / ``inventiv_spool_pending_batches``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray.util import metrics as ray_metrics

# Counter increments are summed per label set and recorded at most this often (s): Ray's
# exporter reports every few seconds anyway, and one ``Counter.inc`` costs tens of µs of
# tag merging and validation, three or four times per request.
COUNTER_FLUSH_S = 1.0

# TTFT buckets (ms): CPU engines sit in the hundreds of ms, GPUs in the tens.
TTFT_BOUNDARIES_MS = [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                      10000.0, 30000.0]
# Cold-start waits (s): node boot + model load, from tens of seconds to minutes.
COLD_START_BOUNDARIES_S = [1.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0,
                           600.0, 1200.0]


class Counter(ray_metrics.Counter):
    """Ray's ``Counter`` with increments made on an event loop summed per tag set and
    recorded ``interval_s`` after the first one pending (off a loop: recorded at once).
    Named ``Counter`` on purpose: the ops kit finds metrics by their constructor's name."""

    def __init__(self, name: str, description: str = "",
                 tag_keys: tuple[str, ...] | None = None,
                 interval_s: float = COUNTER_FLUSH_S) -> None:
        super().__init__(name, description=description, tag_keys=tag_keys)
        self._interval_s = interval_s
        self._pending: dict[tuple[tuple[str, str], ...], float] = {}
        self._flush_handle: asyncio.TimerHandle | None = None

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        if not isinstance(value, int | float) or value <= 0:
            super().inc(value, tags or {})  # Ray's own errors for bad values
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            super().inc(value, tags or {})
            return
        key = tuple(sorted(tags.items())) if tags else ()
        self._pending[key] = self._pending.get(key, 0.0) + value
        if self._flush_handle is None:
            self._flush_handle = loop.call_later(self._interval_s, self.flush)

    def flush(self) -> None:
        """Record what is pending now."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        pending, self._pending = self._pending, {}
        for key, value in pending.items():
            super().inc(value, dict(key))


class IngressMetrics:
    """The ingress's counters and histograms (one set per replica process)."""

    def __init__(self) -> None:
        from ray.util.metrics import Gauge, Histogram

        self.requests = Counter(
            "inventiv_requests", description="Requests answered by the ingress, by model/org.",
            tag_keys=("model", "org", "endpoint"))
        self.errors = Counter(
            "inventiv_errors", description="Requests answered with an error, by HTTP code.",
            tag_keys=("model", "org", "code"))
        self.tokens = Counter(
            "inventiv_tokens", description="Tokens metered, by kind (prompt/completion).",
            tag_keys=("model", "org", "kind"))
        self.rate_limited = Counter(
            "inventiv_rate_limited", description="Requests refused by a rate or budget limit.",
            tag_keys=("model", "org", "reason"))
        self.ttft = Histogram(
            "inventiv_ttft_ms", description="Time to first token of streamed requests (ms).",
            boundaries=TTFT_BOUNDARIES_MS, tag_keys=("model", "org"))
        self.cold_held = Gauge(
            "inventiv_cold_start_held",
            description="Requests held while their deployment starts from zero replicas.",
            tag_keys=("model",))
        self.usage_dropped = Counter(
            "inventiv_usage_dropped",
            description="Usage records dropped (spool and memory buffer both full).")
        self.spool_full = Counter(
            "inventiv_spool_full", description="Usage batches the full spool refused.")
        self.spool_write_errors = Counter(
            "inventiv_spool_write_errors",
            description="Usage batches the disk refused to spool, by errno.",
            tag_keys=("errno",))
        self.metering_unavailable = Counter(
            "inventiv_metering_unavailable",
            description="Requests refused (503) while usage could not be kept durably.")
        self.usage_buffered = Gauge(
            "inventiv_usage_buffered", description="Usage records waiting in memory.")
        self.spool_pending = Gauge(
            "inventiv_spool_pending_batches",
            description="Usage batches waiting in the spool for the control API.")
        # The client's cumulative counters as last recorded (see ``client_stats``).
        self._seen = (0, 0, 0)
        self.cold_wait = Histogram(
            "inventiv_cold_start_wait_s",
            description="Time a request waited for a deployment to start from zero (s).",
            boundaries=COLD_START_BOUNDARIES_S, tag_keys=("model", "outcome"))

    def flush(self) -> None:
        """Record the counters' pending increments now (on shutdown)."""
        for counter in (self.requests, self.errors, self.tokens, self.rate_limited,
                        self.usage_dropped, self.spool_full, self.spool_write_errors,
                        self.metering_unavailable):
            counter.flush()

    def client_stats(self, dropped: int, full: int, write_errors: int, failure: str | None,
                     buffered: int, pending: int) -> None:
        """Record the usage client's cumulative counters (what grew since the last call;
        a write error is tagged with the current ``failure``) and its queue sizes."""
        seen_dropped, seen_full, seen_errors = self._seen
        if dropped > seen_dropped:
            self.usage_dropped.inc(dropped - seen_dropped)
        if full > seen_full:
            self.spool_full.inc(full - seen_full)
        if write_errors > seen_errors:
            self.spool_write_errors.inc(write_errors - seen_errors,
                                        tags={"errno": failure or "unknown"})
        self._seen = (max(dropped, seen_dropped), max(full, seen_full),
                      max(write_errors, seen_errors))
        self.usage_buffered.set(buffered)
        self.spool_pending.set(pending)

    def unavailable(self) -> None:
        self.metering_unavailable.inc(1)

    def request(self, model: str, org: str, endpoint: str) -> None:
        self.requests.inc(1, tags={"model": model, "org": org, "endpoint": endpoint})

    def error(self, model: str, org: str, code: int) -> None:
        self.errors.inc(1, tags={"model": model, "org": org, "code": str(code)})

    def usage(self, record: dict[str, Any]) -> None:
        tags = {"model": record["model"], "org": str(record.get("org_id") or "")}
        if record["prompt_tokens"]:
            self.tokens.inc(record["prompt_tokens"], tags={**tags, "kind": "prompt"})
        if record["completion_tokens"]:
            self.tokens.inc(record["completion_tokens"], tags={**tags, "kind": "completion"})
        if record.get("ttft_ms") is not None:
            self.ttft.observe(record["ttft_ms"], tags=tags)

    def limited(self, model: str, org: str, reason: str) -> None:
        self.rate_limited.inc(1, tags={"model": model, "org": org, "reason": reason})

    def held(self, model: str, count: int) -> None:
        self.cold_held.set(count, tags={"model": model})

    def waited(self, model: str, seconds: float, outcome: str) -> None:
        self.cold_wait.observe(seconds, tags={"model": model, "outcome": outcome})
