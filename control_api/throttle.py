"""Login throttling per account and per client IP.

Failed attempts are rows of ``login_attempts`` so every API worker sees the same counts. A caller
over either limit gets 429 with ``Retry-After`` (seconds until the oldest counted failure leaves
the window). The check and the insert are not one atomic step, so N concurrent requests can
overshoot a limit by at most N-1 attempts: acceptable for a brute-force brake.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta

from fastapi import Request
from sqlalchemy import delete, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from control_api.errors import TooManyRequests
from control_api.settings import Settings
from core.db import utcnow
from core.models import LoginAttempt

Clock = Callable[[], datetime]


def get_clock(request: Request) -> Clock:
    """The app's clock: ``app.state.clock`` when a test installed one, else real UTC time."""
    return getattr(request.app.state, "clock", None) or utcnow


def client_ip(request: Request) -> str:
    """The peer address. ``X-Forwarded-For`` is not trusted: any client could forge it."""
    return request.client.host if request.client else "unknown"


class LoginThrottle:
    """Counts failed logins in a sliding window, per account key and per IP."""

    def __init__(self, max_per_account: int, max_per_ip: int, window_seconds: int,
                 clock: Clock = utcnow) -> None:
        self.max_per_account = max_per_account
        self.max_per_ip = max_per_ip
        self.window = timedelta(seconds=window_seconds)
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = utcnow) -> LoginThrottle:
        return cls(settings.login_max_failures_per_account, settings.login_max_failures_per_ip,
                   settings.login_window_seconds, clock)

    def _retry_after(self, db: Session, column: InstrumentedAttribute[str], value: str,
                     limit: int, now: datetime) -> int | None:
        since = now - self.window
        times = list(db.scalars(
            select(LoginAttempt.at).where(column == value, LoginAttempt.at > since)
            .order_by(LoginAttempt.at)))
        if len(times) < limit:
            return None
        # Allowed again once enough old failures have left the window to drop below the limit.
        free_at = times[len(times) - limit] + self.window
        return max(1, math.ceil((free_at - now).total_seconds()))

    def check(self, db: Session, account: str, ip: str) -> None:
        """Raise 429 (with ``Retry-After``) when the account or the IP is over its limit."""
        now = self.clock()
        waits = [w for w in (
            self._retry_after(db, LoginAttempt.account, account, self.max_per_account, now),
            self._retry_after(db, LoginAttempt.ip, ip, self.max_per_ip, now),
        ) if w is not None]
        if waits:
            wait = max(waits)
            raise TooManyRequests(f"too many failed logins; retry in {wait} s",
                                  headers={"Retry-After": str(wait)})

    def record_failure(self, db: Session, account: str, ip: str) -> None:
        """Count one failure, and drop this account's and IP's rows that left the window."""
        now = self.clock()
        cutoff = now - self.window
        db.execute(delete(LoginAttempt).where(LoginAttempt.account == account,
                                              LoginAttempt.at <= cutoff))
        db.execute(delete(LoginAttempt).where(LoginAttempt.ip == ip, LoginAttempt.at <= cutoff))
        db.add(LoginAttempt(account=account[:254], ip=ip[:64], at=now))
        db.flush()

    def clear_account(self, db: Session, account: str) -> None:
        """After a success: forget this account's failures. Other accounts' rows (and so the
        IP counter they feed) are kept."""
        db.execute(delete(LoginAttempt).where(LoginAttempt.account == account))
