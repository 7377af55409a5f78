"""Named windows, calendar months and time ranges, validated."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

WINDOWS: dict[str, timedelta] = {
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "365d": timedelta(days=365),
}
BUCKETS: dict[str, timedelta] = {
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
}
MAX_RANGE = timedelta(days=5 * 366)
# A series is bounded so a request cannot ask for millions of points.
MAX_POINTS = 10_000


class WindowError(ValueError):
    """An unknown window name, a reversed or too long range (mapped to 422 at the edge)."""


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        return t.replace(tzinfo=UTC)
    return t.astimezone(UTC)


def month_start(now: datetime) -> datetime:
    """First instant of the calendar month (UTC) containing ``now``."""
    now = _utc(now)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(now: datetime) -> datetime:
    """First instant of the month after the one containing ``now``."""
    m = month_start(now)
    return m.replace(year=m.year + 1, month=1) if m.month == 12 else m.replace(month=m.month + 1)


def resolve_range(now: datetime, window: str | None = None, start: datetime | None = None,
                  end: datetime | None = None) -> TimeRange:
    """A window name ending at ``now`` (plus ``"month"`` = month to date), or ``[start, end)``."""
    now = _utc(now)
    if start is not None or end is not None:
        if window is not None:
            raise WindowError("give either window or start/end, not both")
        if start is None:
            raise WindowError("start is required with end")
        s = _utc(start)
        e = _utc(end) if end is not None else now
        if e <= s:
            raise WindowError("range end must be after its start")
        if e - s > MAX_RANGE:
            raise WindowError("range longer than 5 years")
        return TimeRange(s, e)
    name = window or "day"
    if name == "month":
        return TimeRange(month_start(now), now)
    if name not in WINDOWS:
        raise WindowError(
            f"unknown window {name!r}; expected one of {', '.join([*WINDOWS, 'month'])}")
    return TimeRange(now - WINDOWS[name], now)


def bucket_edges(rng: TimeRange, bucket: str) -> list[datetime]:
    """Edges of buckets aligned to the bucket size (UTC), covering ``rng``, clipped to it."""
    if bucket not in BUCKETS:
        raise WindowError(f"unknown bucket {bucket!r}; expected one of {', '.join(BUCKETS)}")
    step = BUCKETS[bucket]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    first = epoch + ((rng.start - epoch) // step) * step
    n = -(-(rng.end - first) // step)
    if n > MAX_POINTS:
        raise WindowError(f"series would have {n} points (max {MAX_POINTS}); use a larger bucket")
    edges = [max(first + i * step, rng.start) for i in range(n)]
    edges.append(rng.end)
    return edges
