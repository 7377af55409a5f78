"""The typed client the data plane (node provider, ingress) uses to call /api/internal.

- Retries with backoff on connection errors, timeouts, 5xx and 429 only. Retrying is safe: every
  internal POST is idempotent (lifecycle events carry ``event_id``, usage records ``request_id``,
  key verification is a read), so a batch the server applied but whose answer was lost is
  answered "duplicates" the second time, never counted twice. Other 4xx are not retried.
- When the control API stays unreachable, lifecycle and usage batches go to a durable spool
  (:mod:`control_api.client.spool`), replayed oldest first by ``flush()``/``replay()`` (also from
  a new process on the same ``spool_dir``); a spooled batch is deleted only after a 2xx.
- ``enqueue_usage`` never touches the network: records wait in memory and a background thread
  (``start_background_flush``) sends them in batches; the spool takes the overflow.
- A spool the disk refuses (full bound, ENOSPC, EIO, read-only) never loses a batch silently:
  usage goes back to the memory buffer (what does not fit is dropped and counted), the failure
  is counted and ``spool_failure`` names it until the disk takes writes again (probed by the
  background thread) or the control API takes the usage directly; the ingress refuses new
  requests meanwhile (``usage_durable``).
- The service token is sent as a bearer header and never logged nor shown in ``repr``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel

from control_api.client.errors import (
    ControlApiUnavailable,
    InternalApiError,
    InternalClientError,  # noqa: F401 - the errors stay importable from here
    KeyRejected,
)
from control_api.client.spool import KINDS, Spool, SpoolError, SpoolFull, SpoolUnwritable
from core.wire import (
    MAX_LIFECYCLE_EVENTS,
    MAX_USAGE_RECORDS,
    KeyVerifyRequest,
    KeyVerifyResult,
    LifecycleEventIn,
    LifecycleEventsResult,
    UsageRecordIn,
    UsageResult,
)
from core.wire_budgets import ApplicableBudgets, ApplicableBudgetsRequest
from core.wire_weights import WeightProgress, WeightProgressResult

log = logging.getLogger(__name__)

LIFECYCLE_PATH = "/api/internal/lifecycle-events"
USAGE_PATH = "/api/internal/usage"
VERIFY_PATH = "/api/internal/keys/verify"
BUDGETS_PATH = "/api/internal/budgets/applicable"
WEIGHTS_PROGRESS_PATH = "/api/internal/weights/progress"
_PATHS = {"lifecycle": LIFECYCLE_PATH, "usage": USAGE_PATH}
# The key-verify error codes meaning "this key does not authorise anything".
KEY_ERROR_CODES = frozenset(
    {"invalid_api_key", "revoked_api_key", "expired_api_key", "disabled_api_key"})
# Answers that mean "fix the configuration (token), then replay": the batch is kept.
_AUTH_STATUSES = frozenset({401, 403})
# A server asking to wait longer than this (Retry-After) is treated as unavailable for now.
MAX_RETRY_AFTER_SECONDS = 30.0

T = TypeVar("T", bound=BaseModel)


# ---------------------------------------------------------------- values


def exponential_backoff(base: float = 0.2, cap: float = 5.0,
                        rng: Callable[[], float] = random.random) -> Callable[[int], float]:
    """Delay before retry ``attempt`` (0-based): ``base * 2**attempt`` capped, with jitter."""

    def delay(attempt: int) -> float:
        return min(cap, base * (2**attempt)) * (0.5 + rng() / 2)

    return delay


@dataclass
class ClientStats:
    """Counters exposed for metrics and tests; nothing is dropped without being counted here."""

    sent_batches: int = 0
    retries: int = 0
    spooled_batches: int = 0
    replayed_batches: int = 0
    quarantined_batches: int = 0
    spool_full_errors: int = 0
    spool_write_errors: int = 0
    dropped_usage_records: int = 0
    rejected_events: int = 0


@dataclass(frozen=True)
class Sent(Generic[T]):
    """What a ``send_*`` call did: ``result`` sums the batches delivered now; the others were
    spooled and will be delivered by ``flush()``."""

    result: T
    spooled_batches: int = 0

    @property
    def delivered(self) -> bool:
        return self.spooled_batches == 0


@dataclass(frozen=True)
class FlushReport:
    """What a ``flush()``/``replay()`` did."""

    sent_batches: int = 0
    spooled_batches: int = 0
    pending_batches: int = 0
    reachable: bool = True
    results: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------- the client


class InternalClient:
    """Client of /api/internal with retries, a durable spool and a batching usage buffer."""

    def __init__(
        self,
        base_url: str,
        service_token: str,
        *,
        spool_dir: Path | str,
        timeout: float = 5.0,
        max_retries: int = 3,
        backoff: Callable[[int], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        usage_batch_size: int = 500,
        max_buffered_usage: int = 50_000,
        spool_max_bytes: int = 512 * 1024 * 1024,
        spool_max_files: int = 100_000,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not 1 <= usage_batch_size <= MAX_USAGE_RECORDS:
            raise ValueError(f"usage_batch_size must be within 1..{MAX_USAGE_RECORDS}")
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.usage_batch_size = usage_batch_size
        self.max_buffered_usage = max(max_buffered_usage, usage_batch_size)
        self.spool = Spool(spool_dir, max_bytes=spool_max_bytes, max_files=spool_max_files)
        self.stats = ClientStats()
        self._backoff = backoff or exponential_backoff()
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, transport=transport,
            headers={"Authorization": f"Bearer {service_token}"},
        )
        # Held for any network send or spool replay: keeps batches of one kind in order.
        self._io_lock = threading.RLock()
        self._buffer: deque[UsageRecordIn] = deque()
        self._buffer_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._flush_interval = 1.0
        self._last_flush = clock()
        # After an outage the background thread waits this long before touching the network.
        self._offline_until = float("-inf")
        # Why the last spool write failed ("spool_full", "ENOSPC", "EROFS" …); None: it works.
        self.spool_failure: str | None = None

    def __repr__(self) -> str:  # the token stays out of reprs and logs
        return f"InternalClient({self.base_url!r}, spool_dir={str(self.spool.root)!r})"

    # -------------------------------------------------------------- public API

    def send_lifecycle_events(
        self, events: Iterable[LifecycleEventIn | Mapping[str, Any]],
    ) -> Sent[LifecycleEventsResult]:
        """Send lifecycle events (in chunks of 1000); spooled when the API is unreachable."""
        models = [_as(LifecycleEventIn, e) for e in events]
        total = LifecycleEventsResult(applied=0, duplicates=0, rejected=[])
        spooled = 0
        for chunk in _chunks(models, MAX_LIFECYCLE_EVENTS):
            body = {"events": [e.model_dump(mode="json") for e in chunk]}
            answer = self._deliver("lifecycle", body)
            if answer is None:
                spooled += 1
                continue
            part = LifecycleEventsResult.model_validate(answer)
            total.applied += part.applied
            total.duplicates += part.duplicates
            total.rejected.extend(part.rejected)
        return Sent(result=total, spooled_batches=spooled)

    def send_usage(self, records: Iterable[UsageRecordIn | Mapping[str, Any]]) -> Sent[UsageResult]:
        """Send usage records (in chunks of ``usage_batch_size``); spooled when unreachable."""
        models = [_as(UsageRecordIn, r) for r in records]
        total = UsageResult(inserted=0, duplicates=0)
        spooled = 0
        for chunk in _chunks(models, self.usage_batch_size):
            answer = self._deliver("usage", _usage_body(chunk))
            if answer is None:
                spooled += 1
                continue
            part = UsageResult.model_validate(answer)
            total.inserted += part.inserted
            total.duplicates += part.duplicates
            total.rejected.extend(part.rejected)
        return Sent(result=total, spooled_batches=spooled)

    def verify_key(self, key_hash: str) -> KeyVerifyResult:
        """The principal of an API key hash. Raises ``KeyRejected`` for unusable keys and
        ``ControlApiUnavailable`` when the API cannot answer (never spooled: it is a read)."""
        body = KeyVerifyRequest(key_hash=key_hash).model_dump(mode="json")
        return KeyVerifyResult.model_validate(self._post(VERIFY_PATH, body).json())

    def applicable_budgets(self, org_id: uuid.UUID | str, api_key_id: uuid.UUID | str,
                           deployment: str) -> ApplicableBudgets:
        """The budgets on an org, a key and a deployment (by name) with what is left of each.
        Raises ``ControlApiUnavailable`` when the API cannot answer (a read: never spooled)."""
        body = ApplicableBudgetsRequest(org_id=uuid.UUID(str(org_id)),
                                        api_key_id=uuid.UUID(str(api_key_id)),
                                        deployment=deployment).model_dump(mode="json")
        return ApplicableBudgets.model_validate(self._post(BUDGETS_PATH, body).json())

    def weights_progress(self, report: WeightProgress | Mapping[str, Any]) -> WeightProgressResult:
        """Report a node's weight download progress, or its failure (``state: failed`` with
        ``error``: the control API then marks the deployment failed and stops its scale-up).

        Latest report per (deployment, node) wins, so a retry (5xx, 429, timeouts) is safe; it
        is never spooled: a stale progress report is worth nothing once a newer one exists, and
        the caller reports again. Raises ``ControlApiUnavailable`` when the API cannot answer,
        ``InternalApiError`` for a refusal (404 ``deployment_not_found``, 422 naming a field)."""
        body = _as(WeightProgress, report).model_dump(mode="json")
        return WeightProgressResult.model_validate(
            self._post(WEIGHTS_PROGRESS_PATH, body).json())

    def enqueue_usage(self, record: UsageRecordIn | Mapping[str, Any]) -> None:
        """Buffer one usage record; never does network I/O.

        The background thread (``start_background_flush``) sends the buffer in batches; without
        it, ``flush()``/``close()`` do. Over ``max_buffered_usage`` the oldest batch goes to the
        spool (a local disk write); if the spool is full too, records are dropped and counted in
        ``stats.dropped_usage_records`` (with an error log).
        """
        rec = _as(UsageRecordIn, record)
        with self._buffer_lock:
            self._buffer.append(rec)
            n = len(self._buffer)
        if n >= self.usage_batch_size:
            self._wake.set()
        if n > self.max_buffered_usage:
            self._spill_oldest()

    @property
    def usage_durable(self) -> bool:
        """Whether usage can be kept durably now: False from a failed spool write until the
        disk takes writes again or the control API takes usage directly."""
        return self.spool_failure is None

    def check_spool(self) -> bool:
        """Probe a failed spool; clears ``spool_failure`` when it takes writes again."""
        if self.spool_failure is None:
            return True
        try:
            self.spool.probe()
        except SpoolError:
            return False
        log.warning("spool %s takes writes again", self.spool.root)
        self.spool_failure = None
        return True

    @property
    def buffered_usage(self) -> int:
        """Usage records waiting in memory."""
        with self._buffer_lock:
            return len(self._buffer)

    def replay(self) -> FlushReport:
        """Send spooled batches oldest first; each file is deleted only after a 2xx."""
        with self._io_lock:
            results: list[dict[str, Any]] = []
            sent = 0
            reachable = True
            for kind in KINDS:
                n, ok = self._replay_kind(kind, results)
                sent += n
                reachable = reachable and ok
            return FlushReport(sent_batches=sent, pending_batches=self.spool.count(),
                               reachable=reachable, results=results)

    def flush(self) -> FlushReport:
        """Replay the spool, then send the in-memory usage buffer; what cannot be sent is
        spooled (so it survives a restart)."""
        with self._io_lock:
            report = self.replay()
            sent, spooled, reachable = report.sent_batches, 0, report.reachable
            while True:
                chunk = self._take(self.usage_batch_size)
                if not chunk:
                    break
                body = _usage_body(chunk)
                if reachable:
                    try:
                        report.results.append(self._post_batch("usage", body))
                        sent += 1
                        continue
                    except ControlApiUnavailable as exc:
                        log.warning("control API unavailable, spooling usage: %s", exc)
                        reachable = False
                    except InternalApiError as exc:
                        if exc.status not in _AUTH_STATUSES:
                            # Validated by the shared schema, so a refusal is a bug: keep the
                            # batch aside for inspection rather than retrying it forever.
                            self._set_aside(body, chunk, exc)
                            continue
                        log.error("usage batch refused (%s): spooled until the token is fixed",
                                  exc.code)
                        reachable = False
                if self._spool_or_rebuffer(body, chunk):
                    spooled += 1
                else:
                    break
            self._last_flush = self._clock()
            if reachable and self.spool_failure is not None and not self.buffered_usage:
                # Usage reaches the control API directly: nothing depends on the disk now.
                self.spool_failure = None
            return FlushReport(sent_batches=sent, spooled_batches=spooled,
                               pending_batches=self.spool.count(), reachable=reachable,
                               results=report.results)

    def start_background_flush(self, interval: float = 1.0) -> None:
        """Start a daemon thread flushing every ``interval`` seconds (sooner when a full batch
        is buffered). After an outage it waits ``interval`` before trying the network again."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._flush_interval = interval
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="inventiv-internal-flush",
                                        daemon=True)
        self._thread.start()

    def close(self, *, flush: bool = True, timeout: float | None = 30.0) -> None:
        """Stop the background thread; by default flush (or spool) what is buffered first."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        try:
            if flush:
                self.flush()
        finally:
            self._http.close()

    def __enter__(self) -> InternalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- sending

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST with retries; 2xx response, or ``InternalApiError``/``ControlApiUnavailable``."""
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                resp = self._http.post(path, json=body)
            except httpx.TransportError as exc:
                # Refused, reset, timed out, or closed before answering (maybe after applying
                # the batch): all safe to retry, the batch is idempotent.
                reason = f"{type(exc).__name__}"
            else:
                if resp.is_success:
                    return resp
                if resp.status_code != 429 and resp.status_code < 500:
                    raise _api_error(resp)
                reason = f"HTTP {resp.status_code}"
                retry_after = _retry_after(resp)
            if attempt >= self.max_retries or (
                    retry_after is not None and retry_after > MAX_RETRY_AFTER_SECONDS):
                raise ControlApiUnavailable(
                    f"{self.base_url}{path}: {reason} after {attempt + 1} attempt(s)")
            delay = self._backoff(attempt)
            if retry_after is not None:
                delay = max(delay, retry_after)
            self.stats.retries += 1
            self._sleep(delay)
            attempt += 1

    def _post_batch(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self._post(_PATHS[kind], body).json()
        self.stats.sent_batches += 1
        if kind == "lifecycle":
            for rej in answer.get("rejected", []):
                self.stats.rejected_events += 1
                log.warning("lifecycle event %s rejected: %s (%s)", rej.get("event_id"),
                            rej.get("code"), rej.get("message"))
        return answer

    def _deliver(self, kind: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Send one batch now, or spool it (``None``). Raises ``SpoolFull`` if it cannot be
        spooled, ``InternalApiError`` if the API refused it for good.

        Spooled batches of the same kind are replayed first (synchronously), so after an outage
        the first send also drains the backlog, in order.
        """
        with self._io_lock:
            if self.spool.count(kind):
                # Older batches of this kind go first (lifecycle order matters).
                self._replay_kind(kind, [])
            if not self.spool.count(kind):
                try:
                    return self._post_batch(kind, body)
                except ControlApiUnavailable as exc:
                    log.warning("control API unavailable, spooling %s batch: %s", kind, exc)
                except InternalApiError as exc:
                    if exc.status not in _AUTH_STATUSES:
                        raise
                    log.error("%s batch refused (%s): spooled until the token is fixed",
                              kind, exc.code)
            self._spool_put(kind, body)
            return None

    def _replay_kind(self, kind: str, results: list[dict[str, Any]]) -> tuple[int, bool]:
        """Replay one kind oldest first; stops at the first batch that cannot be sent."""
        sent = 0
        for path in self.spool.pending(kind):
            batch = self.spool.read(path)
            if batch is None:
                if not path.exists():
                    continue
                self.stats.quarantined_batches += 1
                continue
            try:
                results.append(self._post_batch(kind, batch.body))
            except ControlApiUnavailable as exc:
                log.warning("spool replay paused (%d %s batches waiting): %s",
                            self.spool.count(kind), kind, exc)
                return sent, False
            except InternalApiError as exc:
                if exc.status in _AUTH_STATUSES:
                    log.error("spool replay refused (%s): fix the service token", exc.code)
                    return sent, False
                # Refused for good (e.g. 422): it would block the queue forever; set aside.
                self.spool.quarantine(path, f"refused: HTTP {exc.status} {exc.code}")
                self.stats.quarantined_batches += 1
                continue
            self.spool.remove(path)
            self.stats.replayed_batches += 1
            sent += 1
        return sent, True

    # -------------------------------------------------------------- spool and buffer

    def _spool_put(self, kind: str, body: dict[str, Any]) -> None:
        try:
            self.spool.put(kind, body)
        except SpoolFull:
            self.stats.spool_full_errors += 1
            self.spool_failure = "spool_full"
            log.error("spool full: %s batch NOT stored (the caller gets SpoolFull)", kind)
            raise
        except SpoolUnwritable as exc:
            self.stats.spool_write_errors += 1
            self.spool_failure = exc.errno_name
            log.error("spool write failed (%s): %s batch NOT stored (the caller gets "
                      "SpoolUnwritable)", exc.errno_name, kind)
            raise
        self.spool_failure = None
        self.stats.spooled_batches += 1

    def _spool_or_rebuffer(self, body: dict[str, Any], chunk: list[UsageRecordIn]) -> bool:
        """Spool a usage batch; if the spool is full, put it back in memory (dropping, and
        counting, what does not fit). Returns whether it was spooled."""
        try:
            self._spool_put("usage", body)
            return True
        except SpoolError:
            with self._buffer_lock:
                room = max(0, self.max_buffered_usage - len(self._buffer))
                keep = chunk[:room]
                self._buffer.extendleft(reversed(keep))
            dropped = len(chunk) - len(keep)
            if dropped:
                self.stats.dropped_usage_records += dropped
                log.error("spool and buffer full: %d usage records dropped", dropped)
            return False

    def _set_aside(self, body: dict[str, Any], chunk: list[UsageRecordIn],
                   exc: InternalApiError) -> None:
        try:
            path = self.spool.put("usage", body)
        except SpoolError as spool_exc:
            self.stats.dropped_usage_records += len(chunk)
            log.error("usage batch refused (%s) and not spooled (%s): %d records dropped",
                      exc, spool_exc.code, len(chunk))
            return
        self.spool.quarantine(path, f"refused: HTTP {exc.status} {exc.code}")
        self.stats.quarantined_batches += 1

    def _take(self, n: int) -> list[UsageRecordIn]:
        with self._buffer_lock:
            return [self._buffer.popleft() for _ in range(min(n, len(self._buffer)))]

    def _spill_oldest(self) -> None:
        chunk = self._take(self.usage_batch_size)
        if chunk:
            self._spool_or_rebuffer(_usage_body(chunk), chunk)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            now = self._clock()
            if now < self._offline_until:
                # Offline: move full batches to disk (durable, bounded memory), no network.
                if not self.check_spool():
                    continue  # the disk still refuses: keep them in memory
                while self.buffered_usage >= self.usage_batch_size and self.usage_durable:
                    self._spill_oldest()
                continue
            due = now - self._last_flush >= self._flush_interval
            if not (due or self.buffered_usage >= self.usage_batch_size):
                continue
            try:
                report = self.flush()
            except Exception:  # noqa: BLE001 - the flusher must survive anything
                log.exception("background flush failed")
                continue
            if not report.reachable:
                self._offline_until = self._clock() + self._flush_interval


def _as(model: type[T], value: T | Mapping[str, Any]) -> T:
    return value if isinstance(value, model) else model.model_validate(value)


def _chunks(items: Sequence[T], size: int) -> Iterable[list[T]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _usage_body(records: Sequence[UsageRecordIn]) -> dict[str, Any]:
    return {"records": [r.model_dump(mode="json") for r in records]}


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: fall back to our own backoff


def _api_error(resp: httpx.Response) -> InternalApiError:
    code, message = f"http_{resp.status_code}", resp.reason_phrase or "request refused"
    try:
        err = resp.json().get("error")
        if isinstance(err, dict):
            code = str(err.get("code") or code)
            message = str(err.get("message") or message)
    except (ValueError, AttributeError):
        pass
    cls = KeyRejected if resp.status_code == 404 and code in KEY_ERROR_CODES else InternalApiError
    return cls(resp.status_code, code, message)
