"""Budget thresholds (50 / 80 / 100 % of the period's limit) and their webhook notifications.

- :func:`fire_thresholds` (the background job, after evaluating budgets): a threshold a budget's
  spend reached this period gets ONE ``budget_threshold_events`` row (unique per budget, period
  and threshold), so it fires once per period however often the job runs.
- :func:`deliver_pending` (a delivery thread started once the job's transaction committed, never
  on a request path): POSTs each undelivered event to the webhooks that apply (the budget's org's
  and the platform-wide ones), generic JSON or Slack-compatible (``{"text": ...}``), signed
  ``X-Inventiv-Signature: sha256=HMAC(secret, "<timestamp>.<body>")`` with
  ``X-Inventiv-Timestamp``; retried with exponential backoff on 5xx, 429 and transport errors;
  each delivery's outcome is an action log (``budget.webhook``; the URL's host only, never the
  secret or the path, which carries Slack's token). A failing webhook only delays its own
  notifications: admission never waits on it.
- :func:`validate_webhook_url`: https only; http only to a loopback host (tests, local relays).

No HTTP code here (finops is web-free): the transport is a ``Send`` callable the control API
passes in (:func:`control_api.background.httpx_sender`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from core.models import ActionLog, Budget, BudgetScope
from core.models_finops import BudgetThresholdEvent, BudgetWebhook
from finops.windows import month_start

log = logging.getLogger(__name__)
THRESHOLDS = (50, 80, 100)
KINDS = ("generic", "slack")
LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}
_DELIVERY_LOCK = threading.Lock()
# POST ``body`` with ``headers`` to ``url``; returns the HTTP status, raises on transport errors.
Send = Callable[[str, bytes, dict[str, str]], int]


class WebhookUrlError(ValueError):
    """A webhook URL that may not be used (the message says why)."""


def validate_webhook_url(url: str) -> str:
    """The URL, if it is https (or http to a loopback host); else :class:`WebhookUrlError`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise WebhookUrlError("not a URL") from None
    host = (parts.hostname or "").lower()
    if not host or parts.scheme not in ("https", "http"):
        raise WebhookUrlError("webhook URLs must be https://host/...")
    if parts.username or parts.password:
        raise WebhookUrlError("webhook URLs must not carry credentials")
    if parts.scheme == "http" and not _loopback(host):
        raise WebhookUrlError("webhook URLs must be https (http only for loopback hosts)")
    return url


def _loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, ``timestamp`` + "." + body)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def reached(spent: Decimal, limit: Decimal) -> list[int]:
    """Thresholds (percent) ``spent`` reached of ``limit`` (inclusive; a zero limit: all)."""
    if limit <= 0:
        return list(THRESHOLDS) if spent > 0 else []
    return [t for t in THRESHOLDS if spent * 100 >= limit * t]


def fire_thresholds(session: Session, now: datetime) -> list[BudgetThresholdEvent]:
    """Record each threshold reached this period for the first time (as last evaluated)."""
    period = month_start(now)
    fired = {(b, t) for b, t in session.execute(
        select(BudgetThresholdEvent.budget_id, BudgetThresholdEvent.threshold_pct)
        .where(BudgetThresholdEvent.period_start == period))}
    out = []
    for b in session.scalars(select(Budget).where(Budget.spent_eur.is_not(None))):
        # Evaluated in another period (stale): its spend is not this period's.
        if b.evaluated_at is None or b.evaluated_at < period or b.spent_eur is None:
            continue
        for pct in reached(b.spent_eur, b.monthly_eur):
            if (b.id, pct) in fired:
                continue
            ev = BudgetThresholdEvent(budget_id=b.id, period_start=period, threshold_pct=pct,
                                      spent_eur=str(b.spent_eur), fired_at=now)
            try:
                with session.begin_nested():
                    session.add(ev)
                    session.flush()
            except IntegrityError:
                continue  # another worker fired it first: once is once
            out.append(ev)
    return out


def payload(kind: str, budget: Budget, event: BudgetThresholdEvent) -> dict[str, Any]:
    """The JSON body for a webhook of ``kind`` (generic or slack)."""
    scope = BudgetScope(budget.scope).value
    body = {"type": "budget.threshold", "budget_id": str(budget.id), "scope": scope,
            "target_id": str(budget.target_id),
            "org_id": str(budget.org_id) if budget.org_id else None,
            "threshold_pct": event.threshold_pct, "spent_eur": event.spent_eur,
            "limit_eur": str(budget.monthly_eur), "currency": "EUR",
            "period_start": event.period_start.isoformat(),
            "fired_at": event.fired_at.isoformat()}
    if kind == "slack":
        return {"text": f"Inventiv budget {scope} {budget.target_id}: {event.threshold_pct} % "
                        f"reached ({event.spent_eur} EUR of {budget.monthly_eur} EUR this "
                        f"month)", "inventiv": body}
    return body


@dataclass
class Delivery:
    ok: bool
    attempts: int
    status: int | None
    error: str | None


def post_signed(send: Send, url: str, secret: str, body: dict[str, Any], *,
                attempts: int = 4, backoff_s: float = 0.5,
                sleep: Callable[[float], None] = time.sleep,
                clock: Callable[[], float] = time.time) -> Delivery:
    """POST ``body`` signed, retrying 5xx / 429 / transport errors with exponential backoff."""
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    status: int | None = None
    error: str | None = None
    for n in range(1, attempts + 1):
        ts = str(int(clock()))
        headers = {"content-type": "application/json", "x-inventiv-timestamp": ts,
                   "x-inventiv-signature": signature(secret, ts, raw),
                   "user-agent": "inventiv-budgets/1"}
        try:
            status, error = send(url, raw, headers), None
            if status < 300:
                return Delivery(True, n, status, None)
            if status < 500 and status != 429:
                return Delivery(False, n, status, f"http_{status}")
            error = f"http_{status}"
        except Exception as exc:  # noqa: BLE001 - any transport failure is retried
            status, error = None, type(exc).__name__
        if n < attempts:
            sleep(backoff_s * (2 ** (n - 1)))
    return Delivery(False, attempts, status, error)


def deliver_pending(sessions: sessionmaker[Session], now: datetime, send: Send, *,
                    attempts: int = 4, backoff_s: float = 0.5,
                    sleep: Callable[[float], None] = time.sleep) -> dict[str, int]:
    """Deliver this period's undelivered threshold events; one delivery run at a time."""
    if not _DELIVERY_LOCK.acquire(blocking=False):
        return {"skipped": 1}
    sent = failed = 0
    try:
        with sessions() as s:
            events = list(s.scalars(select(BudgetThresholdEvent).where(
                BudgetThresholdEvent.delivered.is_(False),
                BudgetThresholdEvent.period_start == month_start(now))
                .order_by(BudgetThresholdEvent.id)))
            hooks = list(s.scalars(select(BudgetWebhook).where(BudgetWebhook.enabled)))
            for ev in events:
                budget = s.get(Budget, ev.budget_id)
                if budget is None:
                    continue
                for hook in hooks:
                    if hook.org_id is not None and hook.org_id != budget.org_id:
                        continue
                    d = post_signed(send, hook.url, hook.secret, payload(hook.kind, budget, ev),
                                    attempts=attempts, backoff_s=backoff_s, sleep=sleep)
                    sent += d.ok
                    failed += not d.ok
                    s.add(ActionLog(
                        type="budget.webhook", component="finops",
                        status="success" if d.ok else "failure",
                        error_code=None if d.ok else (d.error or "failed"),
                        org_id=budget.org_id, created_at=now,
                        details={"webhook_id": str(hook.id), "kind": hook.kind,
                                 "host": urlsplit(hook.url).hostname,
                                 "budget_id": str(budget.id),
                                 "threshold_pct": ev.threshold_pct, "attempts": d.attempts,
                                 "http_status": d.status}))
                ev.delivered = True
                s.commit()
    except Exception as exc:  # noqa: BLE001 - a delivery failure must never spread
        log.warning("budget webhook delivery failed: %s", type(exc).__name__)
    finally:
        _DELIVERY_LOCK.release()
    return {"sent": sent, "failed": failed}


def deliver_in_background(sessions: sessionmaker[Session], now: datetime,
                          send: Send) -> threading.Thread:
    """Run :func:`deliver_pending` in a daemon thread (the background job never waits)."""
    t = threading.Thread(target=deliver_pending, args=(sessions, now, send),
                         name="inventiv-budget-webhooks", daemon=True)
    t.start()
    return t


# ---------------------------------------------------------------- budgets that apply


@dataclass(frozen=True)
class ApplicableBudget:
    """A budget a request of (org, key, deployment) must fit, as last evaluated."""

    budget_id: uuid.UUID
    scope: str
    target_id: uuid.UUID
    limit_eur: Decimal
    spent_eur: Decimal
    period_start: datetime
    state: str
    evaluated_at: datetime | None


def applicable_budgets(session: Session, *, org_id: uuid.UUID | None,
                       api_key_id: uuid.UUID | None, deployment: str | uuid.UUID | None,
                       now: datetime) -> list[ApplicableBudget]:
    """The org, key and deployment budgets that apply to a request, with the spend and limit of
    the current period (as the background job last evaluated them; a budget evaluated in an
    earlier period has spent 0 this one). Reads only. ``deployment``: its name or id."""
    from core.models import Deployment

    dep_id: uuid.UUID | None = None
    if isinstance(deployment, uuid.UUID):
        dep_id = deployment
    elif deployment:
        dep_id = session.scalar(select(Deployment.id).where(Deployment.name == deployment))
    wanted = [(BudgetScope.ORG, org_id), (BudgetScope.API_KEY, api_key_id),
              (BudgetScope.DEPLOYMENT, dep_id)]
    period = month_start(now)
    out = []
    for scope, target in wanted:
        if target is None:
            continue
        for b in session.scalars(select(Budget).where(Budget.scope == scope,
                                                      Budget.target_id == target)):
            fresh = b.evaluated_at is not None and b.evaluated_at >= period
            spent = b.spent_eur if fresh and b.spent_eur is not None else Decimal(0)
            out.append(ApplicableBudget(b.id, BudgetScope(b.scope).value, b.target_id,
                                        b.monthly_eur, spent, period,
                                        str(getattr(b.state, "value", b.state)) if fresh
                                        else "ok", b.evaluated_at))
    return out
