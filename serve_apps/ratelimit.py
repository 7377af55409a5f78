"""Per-key requests-per-minute and tokens-per-minute limits, shared by every ingress replica.

The counters live in one Ray actor per Serve app (named, created by the first ingress replica
that needs it, found by the others):

- it is shared by all replicas without new infrastructure (no Redis) and answers in about a
  millisecond inside the cluster;
- an actor runs one method at a time, so check-and-reserve is atomic without locks;
- Postgres would put a write per request on the control plane's hot path, and losing these
  counters (actor restart) only forgets the last minute's window, which is acceptable for a
  rate limit: billing comes from usage records, never from here.

Only keys that have a limit pay the round trip. TPM is reserved at the worst case (prompt +
``max_tokens`` × ``n``) before dispatch and settled to the real count afterwards; settlements
are not on any response's path, so each replica sends them in batches (:class:`SettleBatcher`,
one actor call per ~100 ms instead of one per request).

Leases keep the round trip off most requests of busy keys: when the actor admits a request
and the key's limits are large enough, it also reserves a slice of the key's minute (2 % of
its RPM/TPM) for that replica, which admits the key's next requests locally (:class:`LeaseBook`)
for up to a second, then gives back what it did not use. Slices are reserved in the same
windows as single requests, so the limits hold across replicas; keys with small limits (a
slice under two requests) and requests checked against a budget always ask the actor.

If the actor is unreachable the ingress lets the request through (rate limits protect
capacity; an outage of the limiter must not stop serving) and logs it.

Budgets use the same actor and call (one round trip, atomic): every budget that applies to a
request (the key's own monthly budget, and the org, key and deployment budgets of
``/api/finops/budgets``) is one account here, and the ingress knows what was left of each at a
wall time (``BudgetAsk.left_eur`` at ``verified_at``: the key's verification, or the budget
view's ``as_of``). The actor subtracts what requests settled on that account since then and
what is reserved in flight, and admits a request only if its worst-case cost fits EVERY
account, reserving it on all of them in the same call (so replicas never race: concurrent
requests overspend by at most what settles above its reservation, i.e. nothing past one
request's worst case). Costs are only known in the ingress for deployments with a token price
(``price`` in the deployment YAML); GPU-costed deployments only get the check "budget left > 0"
(done by the ingress without a round trip).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

WINDOW_S = 60.0


@dataclass
class _KeyWindow:
    # reservation id -> [at, tokens, requests], oldest first (a lease counts many requests)
    entries: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)
    tokens: float = 0.0
    requests: float = 0.0
    newest_at: float = float("-inf")  # the latest stamp added (for the reset headers)

    def prune(self, now: float) -> None:
        # A lease is stamped at its end (see ``RateWindows.lease``), so the front entry may be
        # younger than one behind it: those wait for it (at most a lease's duration longer,
        # counted: the safe side).
        while self.entries:
            rid, (at, tokens, requests) = next(iter(self.entries.items()))
            if now - at < WINDOW_S:
                break
            self.entries.popitem(last=False)
            self.tokens -= tokens
            self.requests -= requests

    def add(self, reservation: str, at: float, tokens: float, requests: float) -> None:
        self.entries[reservation] = [at, tokens, requests]
        self.newest_at = max(self.newest_at, at)
        self.tokens += tokens
        self.requests += requests

    def remove(self, reservation: str) -> None:
        entry = self.entries.pop(reservation, None)
        if entry is not None:
            self.tokens -= entry[1]
            self.requests -= entry[2]

    def retry_after(self, now: float, rpm: int | None, tpm: int | None, want: float,
                    requests: float = 1) -> float:
        """Seconds until ``requests`` requests of ``want`` tokens in all would fit (0: now)."""
        if (rpm is None or self.requests + requests <= rpm) and (
                tpm is None or self.tokens + want <= tpm):
            return 0.0
        # Walk the window oldest first until enough has expired.
        count, tokens = self.requests, self.tokens
        for at, entry_tokens, entry_requests in self.entries.values():
            count -= entry_requests
            tokens -= entry_tokens
            if (rpm is None or count + requests <= rpm) and (
                    tpm is None or tokens + want <= tpm):
                return max(0.0, at + WINDOW_S - now)
        return WINDOW_S


# Settled costs are kept this long (s): far longer than a key verification's TTL plus the
# usage flush delay, after which the control API's own spend figure includes them.
SETTLED_RETENTION_S = 600.0
# Costs settled this long before a verification still count against it: they may not have
# reached the control API's spend yet (usage is flushed every second or so). Counting some
# twice errs on the safe side: a budget is never overspent, at worst refused a little early.
FLUSH_MARGIN_S = 10.0
RATE_LIMITED = "rate_limit_exceeded"
OVER_BUDGET = "insufficient_quota"  # the key's own monthly budget (``monthly_budget_eur``)
BUDGET_EXCEEDED = "budget_exceeded"  # an org, key or deployment budget


# A reservation never settled (its replica died) stops counting after this long (s).
RESERVATION_MAX_S = 3600.0


@dataclass
class _KeyBudget:
    """One budget account: reservations in flight and recently settled costs. Settled costs
    are summed per wall-clock second, so checking a busy org's budget stays O(seconds
    retained), not O(requests)."""

    reserved: dict[str, float] = field(default_factory=dict)  # reservation id -> EUR
    reserved_at: OrderedDict[str, float] = field(default_factory=OrderedDict)
    reserved_total: float = 0.0
    settled: deque[list[float]] = field(default_factory=deque)  # [second, EUR], oldest first

    def prune(self, wall_now: float) -> None:
        while self.settled and wall_now - self.settled[0][0] >= SETTLED_RETENTION_S + 1:
            self.settled.popleft()
        while self.reserved_at:
            rid, at = next(iter(self.reserved_at.items()))
            if wall_now - at < RESERVATION_MAX_S:
                break
            self.release(rid)

    def available(self, left_eur: float, verified_at: float) -> float:
        cutoff = verified_at - FLUSH_MARGIN_S
        spent_since = 0.0
        for second, eur in reversed(self.settled):
            if second + 1 <= cutoff:  # a second partly after the cutoff counts (safe side)
                break
            spent_since += eur
        return left_eur - spent_since - self.reserved_total

    def reserve(self, reservation: str, cost_eur: float, wall_now: float) -> None:
        self.release(reservation)
        self.reserved[reservation] = cost_eur
        self.reserved_at[reservation] = wall_now
        self.reserved_total += cost_eur

    def release(self, reservation: str) -> float | None:
        cost = self.reserved.pop(reservation, None)
        self.reserved_at.pop(reservation, None)
        if cost is not None:
            self.reserved_total = max(0.0, self.reserved_total - cost) if self.reserved else 0.0
        return cost

    def add_settled(self, wall_now: float, cost_eur: float) -> None:
        second = float(int(wall_now))
        if self.settled and self.settled[-1][0] >= second:  # same second (or clock went back)
            self.settled[-1][1] += cost_eur
        else:
            self.settled.append([second, cost_eur])


@dataclass(frozen=True)
class BudgetAsk:
    """One budget account (``account``: the key id for its own monthly budget,
    ``budget:<id>`` for a budget row): what was left of it at wall time ``verified_at``, this
    request's worst case, and the reason answered when it does not fit."""

    left_eur: float
    verified_at: float
    cost_eur: float
    account: str = ""
    reason: str = OVER_BUDGET


# What a key's window holds after an admission, for the rate-limit headers: requests and
# tokens counted (the request just admitted included) and seconds until the window is empty.
WindowState = tuple[float, float, float]


class RateWindows:
    """Sliding one-minute windows and budget reservations per key (the actor's state)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._wall = wall
        self._keys: dict[str, _KeyWindow] = {}
        self._budgets: dict[str, _KeyBudget] = {}
        # reservation id -> the budget accounts it holds a reservation on
        self._held: OrderedDict[str, tuple[float, list[_KeyBudget]]] = OrderedDict()

    def admit(self, key: str, reservation: str, rpm: int | None, tpm: int | None,
              tokens: float, budgets: tuple[BudgetAsk, ...] | BudgetAsk | None = None
              ) -> tuple[float, str]:
        """Rate limits, then every budget: ``(0.0, "")`` when admitted (all reserved), else
        the seconds to wait and the reason (``rate_limit_exceeded`` or the refusing budget's
        ``reason``); nothing stays reserved on a refusal."""
        if rpm is not None or tpm is not None:
            wait = self.acquire(key, reservation, rpm, tpm, tokens)
            if wait > 0:
                return wait, RATE_LIMITED
        asks = _asks(budgets)
        if asks:
            wall = self._wall()
            accounts = []
            for ask in asks:
                acct = self._budgets.setdefault(ask.account or key, _KeyBudget())
                acct.prune(wall)
                if acct.available(ask.left_eur, ask.verified_at) < ask.cost_eur:
                    self._release_window(key, reservation)
                    return WINDOW_S, ask.reason
                accounts.append((acct, ask.cost_eur))
            for acct, cost in accounts:
                acct.reserve(reservation, cost, wall)
            self._held[reservation] = (wall, [acct for acct, _ in accounts])
            while self._held:  # those never settled (their replica died): forgotten
                _, (at, _accts) = next(iter(self._held.items()))
                if wall - at < RESERVATION_MAX_S:
                    break
                self._held.popitem(last=False)
        return 0.0, ""

    def settle_cost(self, key: str, reservation: str, cost_eur: float) -> None:
        """Replace a request's budget reservations by its real cost (on every account)."""
        wall = self._wall()
        _, accounts = self._held.pop(reservation, (0.0, []))
        for acct in accounts:
            if acct.release(reservation) is not None:
                acct.add_settled(wall, cost_eur)

    def state(self, key: str) -> WindowState:
        """Requests and tokens in the key's window and seconds until it is empty."""
        win = self._keys.get(key)
        if win is None or not win.entries:
            return 0.0, 0.0, 0.0
        return win.requests, win.tokens, max(0.0, win.newest_at + WINDOW_S - self._clock())

    def _release_window(self, key: str, reservation: str) -> None:
        win = self._keys.get(key)
        if win is not None:
            win.remove(reservation)

    def acquire(self, key: str, reservation: str, rpm: int | None, tpm: int | None,
                tokens: float) -> float:
        """Reserve one request of ``tokens``; returns 0.0 if granted, else the seconds to wait.

        A request larger than the whole TPM limit can never fit: it waits a full window and is
        refused (the caller answers 429, the client should lower ``max_tokens``)."""
        now = self._clock()
        win = self._keys.setdefault(key, _KeyWindow())
        win.prune(now)
        if tpm is not None and tokens > tpm:
            return WINDOW_S
        wait = win.retry_after(now, rpm, tpm, tokens)
        if wait > 0:
            return wait
        win.add(reservation, now, tokens, 1)
        return 0.0

    def lease(self, key: str, lease_id: str, rpm: int | None, tpm: int | None,
              want: float, duration_s: float) -> tuple[float, float] | None:
        """Reserve a slice of the key's minute for one replica to admit locally for
        ``duration_s``: ``(requests, tokens)``, or None when the limits are too small (or
        too close to full) for a slice worth having, i.e. every request asks this actor.

        The slices plus the actor's own reservations never exceed the limits, so the limits
        still hold across replicas. The slice is stamped at its END (the last moment a
        request may be admitted under it): it stays in the window until every request
        admitted under it has been there a full minute. What the replica did not use is
        given back when the lease ends (``adjust``)."""
        requests = float("inf") if rpm is None else float(int(rpm * LEASE_FRACTION))
        tokens = float("inf") if tpm is None else tpm * LEASE_FRACTION
        if requests < LEASE_MIN_REQUESTS or tokens < LEASE_MIN_REQUESTS * want:
            return None
        now = self._clock()
        win = self._keys.setdefault(key, _KeyWindow())
        win.prune(now)
        # Unlimited dimensions reserve nothing (a lease is then bounded by the other).
        held_requests = 0.0 if rpm is None else requests
        held_tokens = 0.0 if tpm is None else tokens
        if win.retry_after(now, rpm, tpm, held_tokens, held_requests) > 0:
            return None
        win.add(lease_id, now + duration_s, held_tokens, held_requests)
        return requests, tokens

    def adjust(self, key: str, reservation: str, tokens: float, requests: float = 0) -> None:
        """Add ``tokens``/``requests`` (negative: give back) to a reservation or lease."""
        win = self._keys.get(key)
        entry = None if win is None else win.entries.get(reservation)
        if win is None or entry is None:
            return  # already out of the window
        tokens = max(tokens, -entry[1])
        requests = max(requests, -entry[2])
        entry[1] += tokens
        entry[2] += requests
        win.tokens += tokens
        win.requests += requests

    def settle(self, key: str, reservation: str, tokens: float) -> None:
        """Replace a reservation's worst case by what the request really used."""
        win = self._keys.get(key)
        if win is None or reservation not in win.entries:
            return  # already out of the window
        entry = win.entries[reservation]
        win.tokens += tokens - entry[1]
        entry[1] = tokens

    def usage(self, key: str) -> tuple[float, float]:
        """Requests and tokens in the key's window (leases count what they hold)."""
        win = self._keys.get(key)
        if win is None:
            return 0, 0.0
        win.prune(self._clock())
        return win.requests, win.tokens


class RateLimiterActor:
    """The Ray actor holding ``RateWindows`` (see the module docstring for why an actor)."""

    def __init__(self) -> None:
        self.windows = RateWindows()

    def admit_lease(self, key: str, reservation: str, rpm: int | None, tpm: int | None,
                    tokens: float, budgets: tuple[BudgetAsk, ...] | BudgetAsk | None,
                    lease_id: str, duration_s: float
                    ) -> tuple[float, str, tuple[float, float] | None, WindowState]:
        """``admit``, then (admitted, no budget to check) a lease for the caller to admit the
        key's next requests locally: ``(wait, reason, (requests, tokens) or None, the key's
        window state)``."""
        wait, reason = self.windows.admit(key, reservation, rpm, tpm, tokens, budgets)
        lease = None
        if wait == 0 and not _asks(budgets):
            lease = self.windows.lease(key, lease_id, rpm, tpm, tokens, duration_s)
        return wait, reason, lease, self.windows.state(key)

    def settle_many(self, settlements: list[Settlement]) -> None:
        """In order: ``("settle", key, reservation, tokens, cost_eur)`` replaces a
        reservation by what was used; ``("adjust", key, lease id, tokens, requests)`` adds
        (negative: gives back) to a lease."""
        for op, key, reservation, a, b in settlements:
            if op == "adjust":
                self.windows.adjust(key, reservation, a, b or 0)
                continue
            self.windows.settle(key, reservation, a)
            if b is not None:
                self.windows.settle_cost(key, reservation, b)

    def usage(self, key: str) -> tuple[float, float]:
        return self.windows.usage(key)


def _asks(budgets: tuple[BudgetAsk, ...] | BudgetAsk | None) -> tuple[BudgetAsk, ...]:
    if budgets is None:
        return ()
    return (budgets,) if isinstance(budgets, BudgetAsk) else tuple(budgets)


# ("settle", api key id, reservation id, tokens really used, EUR really spent or None) or
# ("adjust", api key id, lease id, tokens delta, requests delta)
Settlement = tuple[str, str, str, float, float | None]

# A lease is this share of a key's per-minute limits, held for LEASE_S; keys whose share is
# under LEASE_MIN_REQUESTS requests (or tokens for that many requests like the current one)
# get none: small limits are decided by the actor, request by request, exactly.
LEASE_FRACTION = 0.02
LEASE_MIN_REQUESTS = 2
LEASE_S = 1.0


@dataclass
class _Lease:
    lease_id: str
    requests: float
    tokens: float
    until: float


class LeaseBook:
    """A replica's leases (one per key at a time): admits locally while the current lease
    has room, and gives back what it did not use when it ends (through ``give_back``, the
    settlement batcher's ``add``)."""

    def __init__(self, give_back: Callable[[Settlement], None], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._give_back = give_back
        self._clock = clock
        self._leases: dict[str, _Lease] = {}

    def take(self, key: str, tokens: float) -> str | None:
        """The lease id that admits a request of ``tokens`` now, or None (ask the actor)."""
        lease = self._leases.get(key)
        if lease is None:
            return None
        if self._clock() >= lease.until:
            self.end(key)
            return None
        if lease.requests < 1 or lease.tokens < tokens:
            return None
        lease.requests -= 1
        lease.tokens -= tokens
        return lease.lease_id

    def left(self, key: str) -> tuple[float, float] | None:
        """What the key's current lease still holds: ``(requests, tokens)``, or None."""
        lease = self._leases.get(key)
        return None if lease is None else (lease.requests, lease.tokens)

    def grant(self, key: str, lease_id: str, requests: float, tokens: float,
              duration_s: float) -> None:
        """Start a lease the actor granted (ending the key's previous one)."""
        self.end(key)
        self._leases[key] = _Lease(lease_id, requests, tokens, self._clock() + duration_s)
        try:
            asyncio.get_running_loop().call_later(duration_s, self._end_if, key, lease_id)
        except RuntimeError:  # no loop (tests): ended by the next take
            pass

    def _end_if(self, key: str, lease_id: str) -> None:
        lease = self._leases.get(key)
        if lease is not None and lease.lease_id == lease_id:
            self.end(key)

    def end(self, key: str) -> None:
        """Stop admitting under the key's lease and give back what is unused."""
        lease = self._leases.pop(key, None)
        if lease is None:
            return
        # Unlimited dimensions (inf) held nothing at the actor: nothing to give back.
        requests = 0.0 if lease.requests == float("inf") else -lease.requests
        tokens = 0.0 if lease.tokens == float("inf") else -lease.tokens
        if requests or tokens:
            self._give_back(("adjust", key, lease.lease_id, tokens, requests))

    def close(self) -> None:
        for key in list(self._leases):
            self.end(key)


class SettleBatcher:
    """Collects settlements and hands them to ``send`` in batches: ``interval_s`` after the
    first one pending, or at once when ``max_pending`` are. A settlement only frees a
    reservation's unused tokens/budget early, so a short delay costs nothing but a reserved
    worst case held that much longer. Runs on the replica's event loop (``add`` too)."""

    def __init__(self, send: Callable[[list[Settlement]], object], *,
                 interval_s: float = 0.1, max_pending: int = 64) -> None:
        self._send = send
        self.interval_s = interval_s
        self.max_pending = max_pending
        self._pending: list[Settlement] = []
        self._ready = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, settlement: Settlement) -> None:
        self._pending.append(settlement)
        if self._task is None or self._task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on an event loop (never in a replica): send now
                self.flush()
                return
            self._task = loop.create_task(self._run())
        self._ready.set()
        if len(self._pending) >= self.max_pending:
            self._full.set()

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            if len(self._pending) < self.max_pending:
                try:
                    await asyncio.wait_for(self._full.wait(), self.interval_s)
                except TimeoutError:
                    pass
            self._ready.clear()
            self._full.clear()
            self.flush()

    def flush(self) -> None:
        """Send what is pending now (also on shutdown)."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self._send(batch)
        except Exception:  # noqa: BLE001 - the window forgets them within a minute anyway
            log.warning("rate limiter unreachable: %d reservations not settled", len(batch),
                        exc_info=True)

    def close(self) -> None:
        """Flush and stop the background task."""
        self.flush()
        if self._task is not None:
            self._task.cancel()
            self._task = None


def get_or_create_limiter(name: str):  # noqa: ANN201 - a Ray actor handle
    """The app's limiter actor (created on first use; ``get_if_exists`` makes it race-free)."""
    import ray

    actor_cls = ray.remote(num_cpus=0, max_restarts=-1)(RateLimiterActor)
    return actor_cls.options(name=name, get_if_exists=True, lifetime="detached").remote()
