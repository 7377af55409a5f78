"""Login throttling per (account, client address) and per client address.

Failed attempts are rows of ``login_attempts`` so every API worker sees the same counts.

- Per (account, address): after ``max_per_account`` failures in the window, each further
  attempt waits an exponential backoff (``backoff_base`` doubling per failure, at most the
  window) counted from the last failure. A flood from one address therefore slows only that
  address's guesses at that account: the owner logging in from elsewhere is not locked out.
- Per address: a hard limit of ``max_per_ip`` failures in the window, whatever the accounts.

A caller over a limit gets 429 with ``Retry-After``. The check and the insert are not one
atomic step, so N concurrent requests can overshoot a limit by at most N-1 attempts: acceptable
for a brute-force brake.

The client address is the peer's, unless the peer is a trusted proxy
(``INVENTIV_TRUSTED_PROXIES``): then the right-most ``X-Forwarded-For`` entry that is not itself
a trusted proxy.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from fastapi import Request
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from control_api.errors import TooManyRequests
from control_api.settings import Settings
from core.db import utcnow
from core.models import LoginAttempt

Clock = Callable[[], datetime]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def get_clock(request: Request) -> Clock:
    """The app's clock: ``app.state.clock`` when a test installed one, else real UTC time."""
    return getattr(request.app.state, "clock", None) or utcnow


def _trusted(host: str, proxies: Sequence[Network]) -> bool:
    try:
        addr = ipaddress.ip_address(host.strip())
    except ValueError:
        return False
    return any(addr in net for net in proxies)


def forwarded_client(peer: str, forwarded_for: str | None, proxies: Sequence[Network]) -> str:
    """The client address: ``peer`` unless it is a trusted proxy, then the right-most
    ``X-Forwarded-For`` hop that is not a trusted proxy (entries left of it are the client's
    own claims and cannot be believed)."""
    if not proxies or not forwarded_for or not _trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            return hop[:64]
    return hops[0][:64] if hops else peer


def client_ip(request: Request) -> str:
    """The calling client's address (see :func:`forwarded_client`)."""
    peer = request.client.host if request.client else "unknown"
    settings: Settings | None = getattr(request.app.state, "settings", None)
    proxies = settings.proxy_networks() if settings is not None else ()
    return forwarded_client(peer, request.headers.get("x-forwarded-for"), proxies)


class LoginThrottle:
    """Counts failed logins in a sliding window, per (account, address) and per address."""

    def __init__(self, max_per_account: int, max_per_ip: int, window_seconds: int,
                 clock: Clock = utcnow, backoff_base_seconds: float = 1.0) -> None:
        self.max_per_account = max_per_account
        self.max_per_ip = max_per_ip
        self.window = timedelta(seconds=window_seconds)
        self.clock = clock
        self.backoff_base = backoff_base_seconds

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = utcnow) -> LoginThrottle:
        return cls(settings.login_max_failures_per_account, settings.login_max_failures_per_ip,
                   settings.login_window_seconds, clock, settings.login_backoff_base_seconds)

    def _ip_wait(self, db: Session, ip: str, now: datetime) -> int | None:
        times = list(db.scalars(
            select(LoginAttempt.at).where(LoginAttempt.ip == ip,
                                          LoginAttempt.at > now - self.window)
            .order_by(LoginAttempt.at)))
        if len(times) < self.max_per_ip:
            return None
        # Allowed again once enough old failures have left the window to drop below the limit.
        free_at = times[len(times) - self.max_per_ip] + self.window
        return max(1, math.ceil((free_at - now).total_seconds()))

    def _pair_wait(self, db: Session, account: str, ip: str, now: datetime) -> int | None:
        times = list(db.scalars(
            select(LoginAttempt.at).where(LoginAttempt.account == account,
                                          LoginAttempt.ip == ip,
                                          LoginAttempt.at > now - self.window)
            .order_by(LoginAttempt.at)))
        over = len(times) - self.max_per_account
        if over < 0:
            return None
        backoff = min(self.window.total_seconds(), self.backoff_base * 2 ** min(over, 40))
        free_at = times[-1] + timedelta(seconds=backoff)
        if free_at <= now:
            return None
        return max(1, math.ceil((free_at - now).total_seconds()))

    def check(self, db: Session, account: str, ip: str) -> None:
        """Raise 429 (with ``Retry-After``) when this address is over its limit, or this
        (account, address) pair is inside its backoff."""
        now = self.clock()
        waits = [w for w in (self._pair_wait(db, account, ip, now),
                             self._ip_wait(db, ip, now)) if w is not None]
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

    def clear_account(self, db: Session, account: str, ip: str | None = None) -> None:
        """After a success: forget this account's failures from this address (all of them
        when ``ip`` is None). Other rows (and so the address counter they feed) are kept."""
        stmt = delete(LoginAttempt).where(LoginAttempt.account == account)
        if ip is not None:
            stmt = stmt.where(LoginAttempt.ip == ip)
        db.execute(stmt)
