"""The cost ledger: billing intervals x time-versioned hourly prices, exactly.

Pure functions, no database. Arithmetic is on integers ("units") so sums are exact and additive:

    1 unit = 1 micro-EUR-per-hour x 1 microsecond = 1 / 3.6e15 EUR

A price (``NUMERIC(18, 6)``) is an integer number of micro-EUR per hour; an overlap is an integer
number of microseconds; their product is exact. Converting to EUR happens once, at the edge
(:func:`units_to_eur`), so the cost of a window equals the sum over any partition of it, exactly.

Billing rule (per provider): an interval of duration ``d`` is billed for
``max(minimum, ceil(d / granularity) * granularity)``, as if the VM had run from ``started_at`` to
``started_at + billed``: the *billed span*. Open intervals use ``now`` as their end (so the minute
being used is billed as it starts, like Scaleway does). The cost of a window is the price integrated
over the part of each billed span inside the window, so any window (or partition) is exact.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

US_PER_SECOND = 1_000_000
US_PER_HOUR = 3600 * US_PER_SECOND
MICRO = 1_000_000
UNITS_PER_EUR = MICRO * US_PER_HOUR  # 3.6e15
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EUR_QUANTUM = Decimal("0.000001")
CENT = Decimal("0.01")


def to_us(t: datetime) -> int:
    """Microseconds since the epoch of a UTC-aware datetime (exact, no float)."""
    if t.tzinfo is None:
        raise ValueError("naive datetime; use UTC-aware datetimes")
    d = t - EPOCH
    return (d.days * 86400 + d.seconds) * US_PER_SECOND + d.microseconds


def from_us(us: int) -> datetime:
    """Inverse of :func:`to_us`."""
    return EPOCH + timedelta(microseconds=us)


def price_to_micro(hourly_eur: Decimal | str | int) -> int:
    """An hourly price as integer micro-EUR per hour (money has 6 decimals)."""
    d = Decimal(hourly_eur) * MICRO
    return int(d.to_integral_value(rounding=ROUND_HALF_EVEN))


def units_to_eur(units: int, quantum: Decimal = EUR_QUANTUM) -> Decimal:
    """Convert exact units to EUR rounded (half-even) to ``quantum`` (default micro-EUR)."""
    with localcontext() as ctx:
        ctx.prec = 60
        return (Decimal(units) / UNITS_PER_EUR).quantize(quantum, rounding=ROUND_HALF_EVEN)


def units_per_hour_to_eur(micro_per_hour: int) -> Decimal:
    """A burn rate in micro-EUR/h to EUR/h."""
    return (Decimal(micro_per_hour) / MICRO).quantize(EUR_QUANTUM)


@dataclass(frozen=True)
class BillingRule:
    """How a provider rounds a VM's life: per ``granularity_seconds``, at least ``minimum``."""

    granularity_seconds: int = 60
    minimum_seconds: int = 60

    def billed_us(self, duration_us: int) -> int:
        """Billed microseconds for a run of ``duration_us``."""
        g = max(1, self.granularity_seconds) * US_PER_SECOND
        rounded = -(-max(0, duration_us) // g) * g
        return max(self.minimum_seconds * US_PER_SECOND, rounded)

    @property
    def max_extension_us(self) -> int:
        """How far past its real end a billed span can reach (to widen window filters)."""
        return max(self.minimum_seconds, self.granularity_seconds, 1) * US_PER_SECOND


class PriceSchedule:
    """Hourly prices of one instance type, each in force from ``effective_from`` to the next.

    Before the first version the first price applies: an instance type always has a catalog price
    and a VM is never free because its price row is newer than the VM.
    """

    __slots__ = ("_starts", "_prices")

    def __init__(self, points: Iterable[tuple[datetime | int, Decimal | int]]) -> None:
        pts = sorted(
            ((p if isinstance(p, int) else to_us(p)),
             (v if isinstance(v, int) else price_to_micro(v)))
            for p, v in points
        )
        self._starts = [p for p, _ in pts]
        self._prices = [v for _, v in pts]

    def __bool__(self) -> bool:
        return bool(self._starts)

    def price_at(self, t_us: int) -> int:
        """Micro-EUR per hour in force at ``t_us`` (0 if the type has no price at all)."""
        if not self._starts:
            return 0
        i = bisect.bisect_right(self._starts, t_us) - 1
        return self._prices[max(i, 0)]

    def integrate(self, a_us: int, b_us: int) -> int:
        """Units (price x microseconds) over ``[a_us, b_us)``, splitting at price changes."""
        if b_us <= a_us or not self._starts:
            return 0
        i = max(bisect.bisect_right(self._starts, a_us) - 1, 0)
        n = len(self._starts)
        total = 0
        t = a_us
        while t < b_us:
            end = min(b_us, self._starts[i + 1]) if i + 1 < n else b_us
            total += self._prices[i] * (end - t)
            t = end
            i += 1
        return total

    def change_points(self, a_us: int, b_us: int) -> list[int]:
        """Price change instants strictly inside ``(a_us, b_us)``."""
        lo = bisect.bisect_right(self._starts, a_us)
        hi = bisect.bisect_left(self._starts, b_us)
        return self._starts[lo:hi]


@dataclass(frozen=True)
class Interval:
    """A billing interval with the dimensions costs are grouped by."""

    started_at: datetime
    ended_at: datetime | None
    provider_code: str
    instance_type_name: str
    zone_code: str | None = None
    instance_id: uuid.UUID | None = None
    deployment_id: uuid.UUID | None = None


def billed_span_us(start_us: int, end_us: int | None, now_us: int,
                   rule: BillingRule) -> tuple[int, int]:
    """The billed span ``[start, start + billed)`` of an interval (open ones end at ``now``).

    An interval opened after ``now`` (clock skew, future-dated events) bills nothing yet.
    """
    end = now_us if end_us is None else end_us
    if end_us is None and now_us < start_us:
        return start_us, start_us
    return start_us, start_us + rule.billed_us(end - start_us)


def interval_cost_units(start_us: int, end_us: int | None, rule: BillingRule,
                        prices: PriceSchedule, window: tuple[int, int], now_us: int) -> int:
    """Cost in units of one interval inside ``window = (a, b)``."""
    s, e = billed_span_us(start_us, end_us, now_us, rule)
    a, b = window
    return prices.integrate(max(s, a), min(e, b))


def window_cost_units(intervals: Iterable[Interval], rules: dict[str, BillingRule],
                      prices: dict[tuple[str, str], PriceSchedule], start: datetime,
                      end: datetime, now: datetime) -> int:
    """Total cost in units of ``intervals`` over ``[start, end)``."""
    w = (to_us(start), to_us(end))
    now_us = to_us(now)
    empty = PriceSchedule(())
    total = 0
    for iv in intervals:
        rule = rules.get(iv.provider_code, BillingRule())
        sched = prices.get((iv.provider_code, iv.instance_type_name), empty)
        total += interval_cost_units(
            to_us(iv.started_at), None if iv.ended_at is None else to_us(iv.ended_at),
            rule, sched, w, now_us)
    return total


def bucket_costs_units(start_us: int, end_us: int | None, rule: BillingRule,
                       prices: PriceSchedule, edges: Sequence[int], now_us: int) -> list[int]:
    """Cost of one interval in each bucket ``[edges[i], edges[i+1])`` (len(edges) - 1 values).

    O(buckets touched): only the buckets the billed span overlaps are integrated.
    """
    out = [0] * (len(edges) - 1)
    s, e = billed_span_us(start_us, end_us, now_us, rule)
    if e <= s or not edges or e <= edges[0] or s >= edges[-1]:
        return out
    i = max(bisect.bisect_right(edges, s) - 1, 0)
    while i < len(out) and edges[i] < e:
        out[i] = prices.integrate(max(s, edges[i]), min(e, edges[i + 1]))
        i += 1
    return out


def burn_rate_micro_per_hour(intervals: Iterable[Interval],
                             prices: dict[tuple[str, str], PriceSchedule], now: datetime) -> int:
    """Sum of the hourly prices in force now of the intervals open at ``now`` (micro-EUR/h)."""
    now_us = to_us(now)
    empty = PriceSchedule(())
    total = 0
    for iv in intervals:
        if iv.ended_at is None and to_us(iv.started_at) <= now_us:
            total += prices.get((iv.provider_code, iv.instance_type_name), empty).price_at(now_us)
    return total


def largest_remainder(total: Decimal, weights: Sequence[int],
                      quantum: Decimal = CENT) -> list[Decimal]:
    """Split ``total`` (rounded to ``quantum``) by integer ``weights``; parts sum to it exactly.

    Hamilton's method: floor each exact share, then hand the leftover quanta to the largest
    remainders (ties: earlier index first, so the result is deterministic).
    """
    if not weights:
        return []
    if any(w < 0 for w in weights):
        raise ValueError("weights must be non-negative")
    total_q = total.quantize(quantum, rounding=ROUND_HALF_EVEN)
    n_quanta = int((total_q / quantum).to_integral_value())
    wsum = sum(weights)
    if wsum == 0:
        # No weights: nobody to charge but the split must still sum; put it all on the first.
        return [total_q] + [Decimal(0).quantize(quantum)] * (len(weights) - 1)
    sign = -1 if n_quanta < 0 else 1
    n = abs(n_quanta)
    floors = [n * w // wsum for w in weights]
    rems = [n * w % wsum for w in weights]
    left = n - sum(floors)
    order = sorted(range(len(weights)), key=lambda i: (-rems[i], i))
    for i in order[:left]:
        floors[i] += 1
    return [(sign * f * quantum).quantize(quantum) for f in floors]
