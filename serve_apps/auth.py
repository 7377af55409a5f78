"""API key verification for the ingress: format check, then the control API, cached.

- A key that is not ``ia-…`` with a valid checksum is refused without any lookup.
- Otherwise its SHA-256 is verified through the control API (``InternalClient.verify_key``) and
  the answer cached ``ttl`` seconds (at most 30: a revoked key stops working within that), a
  refusal ``negative_ttl`` seconds (so a flood of one bad key costs one lookup per period).
- When the control API cannot answer, a key verified less than ``stale`` seconds ago keeps
  working (an outage of the control plane must not stop inference); unknown keys get a 503.
- One lookup per key at a time (single flight): a burst of requests with a new key waits for
  the same answer. The lookup runs as its own task that every waiter awaits shielded, so one
  client disconnecting (its request cancelled) does not fail the others.
- With the control API's key-checksum secret (``checksum_secret``), a key whose HMAC checksum
  does not match is refused without a lookup (nobody without the secret can mint well-formed
  keys). Failed authentications (malformed or refused keys) are counted per client address:
  over ``max_failures_per_client`` in ``failure_window`` seconds, that client gets 429 without
  any lookup until the window passes.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from control_api.client.internal import (
    ControlApiUnavailable,
    InternalApiError,
    KeyRejected,
)
from core.keys import api_key_well_formed, sha256_hex
from core.wire import KeyVerifyResult
from serve_apps import protocol


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key and its org, what it may use and its limits."""

    api_key_id: uuid.UUID
    org_id: uuid.UUID
    user_id: uuid.UUID | None
    allowed_models: frozenset[str] | None
    rpm_limit: int | None
    tpm_limit: int | None
    budget_left_eur: Decimal | None
    # Wall time (epoch s) of the verification ``budget_left_eur`` comes from.
    verified_at: float = 0.0
    # The org's name (``allowed_orgs`` may name orgs by name or id).
    org_name: str | None = None

    @classmethod
    def from_verify(cls, r: KeyVerifyResult, verified_at: float = 0.0) -> Principal:
        return cls(api_key_id=r.api_key_id, org_id=r.org_id, org_name=r.org_name,
                   user_id=r.user_id,
                   allowed_models=None if r.allowed_models is None else frozenset(
                       r.allowed_models),
                   rpm_limit=r.rpm_limit, tpm_limit=r.tpm_limit,
                   budget_left_eur=r.budget_left_eur, verified_at=verified_at)

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


@dataclass
class _Entry:
    principal: Principal | None  # None: refused
    code: str  # the refusal code when refused
    at: float


@dataclass
class CacheStats:
    lookups: int = 0
    hits: int = 0
    stale_served: int = 0
    rejected_malformed: int = 0
    throttled: int = 0


def bearer_key(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header (None if absent or not Bearer)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class KeyCache:
    """Resolve API keys to principals, with TTL, stale-while-down and single flight."""

    def __init__(self, verify: Callable[[str], KeyVerifyResult], *, ttl: float = 15.0,
                 stale: float = 900.0, negative_ttl: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 max_entries: int = 100_000, checksum_secret: bytes | None = None,
                 max_failures_per_client: int = 20, failure_window: float = 60.0) -> None:
        if ttl > 30:
            raise ValueError("ttl must be <= 30 s: a revoked key must stop within 30 s")
        self._verify = verify
        self.ttl = ttl
        self.stale = max(stale, ttl)
        self.negative_ttl = negative_ttl
        self._clock = clock
        self._wall = wall
        self._max = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[_Entry]] = {}
        self._checksum_secret = checksum_secret
        self.max_failures_per_client = max_failures_per_client
        self.failure_window = failure_window
        # client address -> (window start, failures in it); bounded like the entries.
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()
        # After a failed lookup the control API is presumed down this long: known keys are
        # served from the cache without a lookup each (no retry storm against a dead API).
        self.down_backoff = min(ttl, 5.0)
        self._down_until = float("-inf")
        self.stats = CacheStats()

    async def authenticate(self, authorization: str | None, *,
                           client: str | None = None) -> Principal:
        """The principal of a request's ``Authorization`` header, or an ``OpenAIError``
        (401 missing/malformed/unknown/revoked, 429 when ``client`` (its address) failed too
        often recently, 503 when it cannot be verified)."""
        key = bearer_key(authorization)
        if key is None:
            raise protocol.missing_key()
        if client is not None:
            self._check_client(client)
        if not api_key_well_formed(key, self._checksum_secret):
            self.stats.rejected_malformed += 1
            self._count_failure(client)
            raise protocol.invalid_key()
        try:
            return await self.principal(sha256_hex(key))
        except protocol.OpenAIError as exc:
            if exc.status == 401:
                self._count_failure(client)
            raise

    def _check_client(self, client: str) -> None:
        seen = self._failures.get(client)
        if seen is None:
            return
        start, count = seen
        left = start + self.failure_window - self._clock()
        if left <= 0:
            del self._failures[client]
        elif count >= self.max_failures_per_client:
            self.stats.throttled += 1
            raise protocol.rate_limited(
                "Too many requests with invalid API keys from this address.", left,
                code="too_many_invalid_keys")

    def _count_failure(self, client: str | None) -> None:
        if client is None:
            return
        now = self._clock()
        start, count = self._failures.get(client, (now, 0))
        if now - start >= self.failure_window:
            start, count = now, 0
        self._failures[client] = (start, count + 1)
        self._failures.move_to_end(client)
        while len(self._failures) > self._max:
            self._failures.popitem(last=False)

    async def principal(self, key_hash: str) -> Principal:
        now = self._clock()
        entry = self._entries.get(key_hash)
        if entry is not None and now - entry.at < (
                self.ttl if entry.principal is not None else self.negative_ttl):
            self.stats.hits += 1
            return _unwrap(entry)
        if entry is not None and entry.principal is not None and now < self._down_until \
                and now - entry.at < self.stale:
            self.stats.stale_served += 1
            return entry.principal
        task = self._inflight.get(key_hash)
        if task is None:
            # The lookup is a task of its own, awaited shielded by every waiter (the first
            # included): a cancelled waiter stops waiting, the lookup and the others go on.
            task = asyncio.ensure_future(self._lookup(key_hash, entry))
            self._inflight[key_hash] = task
            task.add_done_callback(functools.partial(self._done, key_hash))
        return _unwrap(await asyncio.shield(task))

    def _done(self, key_hash: str, task: asyncio.Task[_Entry]) -> None:
        if self._inflight.get(key_hash) is task:
            del self._inflight[key_hash]
        if not task.cancelled():
            task.exception()  # retrieved, even when every waiter went away

    async def _lookup(self, key_hash: str, old: _Entry | None) -> _Entry:
        self.stats.lookups += 1
        asked_at = self._wall()
        try:
            result = await asyncio.to_thread(self._verify, key_hash)
        except KeyRejected as exc:
            entry = _Entry(None, exc.code, self._clock())
        except (ControlApiUnavailable, InternalApiError) as exc:
            # Unreachable, or a refusal that says nothing about the key (e.g. our service
            # token): serve what we knew, within the stale limit.
            if isinstance(exc, InternalApiError) and exc.status == 404:
                raise
            self._down_until = self._clock() + self.down_backoff
            if old is not None and old.principal is not None and \
                    self._clock() - old.at < self.stale:
                self.stats.stale_served += 1
                return old
            raise protocol.auth_unavailable() from exc
        else:
            entry = _Entry(Principal.from_verify(result, verified_at=asked_at), "",
                           self._clock())
        self._store(key_hash, entry)
        return entry

    def _store(self, key_hash: str, entry: _Entry) -> None:
        self._entries[key_hash] = entry
        self._entries.move_to_end(key_hash)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def forget(self, key_hash: str) -> None:
        self._entries.pop(key_hash, None)


def _unwrap(entry: _Entry) -> Principal:
    if entry.principal is None:
        raise protocol.invalid_key(entry.code)
    return entry.principal
