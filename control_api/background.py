"""Periodic jobs of the control API, each runner in a daemon thread started by the app's lifespan.

FinOps derived data (cost spans, hourly usage rollups, budget states) is refreshed here, so
reads stay fast and budget states change even when nobody looks at them; the Serve sync and the
reconcile pass (:mod:`control_api.reconcile`) run the same way. Each job runs in its own unit of
work; a failing job is logged and retried on the next tick, never kills the loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from core.db import session_scope, utcnow

log = logging.getLogger(__name__)

Job = Callable[[Session, datetime], object]


WEBHOOK_TIMEOUT_S = 3.0


def httpx_sender(timeout_s: float = WEBHOOK_TIMEOUT_S) -> Callable[[str, bytes, dict[str, str]],
                                                                    int]:
    """The webhook transport of :mod:`finops.notify`: one POST, no redirects, short timeout."""
    import httpx

    def send(url: str, body: bytes, headers: dict[str, str]) -> int:
        with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
            return client.post(url, content=body, headers=headers).status_code

    return send


def finops_refresh(session: Session, now: datetime, *, notify: bool = True) -> object:
    """Sync cost spans of new/closed intervals, fold usage into hourly rows, evaluate budgets
    and fire the budget thresholds reached (50/80/100 %, once per period). This job is the only
    writer of that derived data: FinOps reads and /metrics never write.

    With ``notify``, once this transaction commits, a daemon thread delivers the thresholds'
    webhooks (:func:`finops.notify.deliver_pending`): slow or failing webhooks never hold the
    job, the transaction, or any request."""
    from sqlalchemy import event

    from core.db import make_sessionmaker
    from finops.budgets import evaluate_budgets
    from finops.notify import deliver_in_background, fire_thresholds
    from finops.spans import sync_spans
    from finops.usage import rollup_usage

    synced = sync_spans(session)
    rolled = rollup_usage(session)
    evaluated = len(evaluate_budgets(session, now))
    fired = fire_thresholds(session, now)
    if notify and fired:
        bind = session.get_bind()

        def after_commit(_: Session) -> None:
            deliver_in_background(make_sessionmaker(bind), now,  # type: ignore[arg-type]
                                  httpx_sender())

        event.listen(session, "after_commit", after_commit, once=True)
    return {"intervals_synced": synced, "usage_rolled_up": rolled, "budgets": evaluated,
            "thresholds_fired": len(fired)}


@dataclass
class PeriodicJobs:
    """Runs ``jobs`` every ``interval_s`` seconds until ``stop()`` (``run_at_start``: a first
    run at once, rather than after the first interval)."""

    sessions: sessionmaker[Session]
    jobs: dict[str, Job]
    interval_s: float
    clock: Callable[[], datetime] = utcnow
    run_at_start: bool = False
    thread_name: str = "inventiv-jobs"
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    last_results: dict[str, object] = field(default_factory=dict)

    def run_once(self) -> dict[str, object]:
        """Run every job once; a failing job is logged and its error kept as its result."""
        for name, job in self.jobs.items():
            try:
                with session_scope(self.sessions) as s:
                    self.last_results[name] = job(s, self.clock())
            except Exception as exc:  # noqa: BLE001 - a job failure must not stop the loop
                log.warning("background job %s failed: %s: %s", name, type(exc).__name__, exc)
                self.last_results[name] = {"error": type(exc).__name__}
        return dict(self.last_results)

    def start(self) -> threading.Thread:
        """Start the loop in a daemon thread (returned)."""
        def loop() -> None:
            if self.run_at_start:
                self.run_once()
            while not self._stop.wait(self.interval_s):
                self.run_once()

        self._thread = threading.Thread(target=loop, name=self.thread_name, daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the running job, waiting up to ``timeout`` seconds for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
