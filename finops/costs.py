"""Cost of windows, breakdowns, burn rate and series, read from ``cost_spans``.

Postgres aggregates in SQL with integer arithmetic (``price x overlap`` split into whole seconds
and the microsecond remainder so every product fits in BIGINT; ``SUM(bigint)`` is exact NUMERIC),
all windows of a request in one scan. SQLite (the laptop default) gets the same rows and sums
them in Python, where integers are unbounded. Both give the same integer units
(see :mod:`finops.ledger`).

Call :func:`finops.spans.sync_spans` first (the service layer does) so the spans are current.
"""

from __future__ import annotations

import bisect
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

# group name -> cost_spans column
GROUP_COLUMNS: dict[str, str] = {
    "provider": "provider_code",
    "zone": "zone_code",
    "instance_type": "instance_type_name",
    "instance": "instance_id",
    "deployment": "deployment_id",
}
GroupKey = Any  # str | uuid.UUID | None
_BIG = 2**62


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _fns(pg: bool) -> tuple[str, str]:
    return ("LEAST", "GREATEST") if pg else ("MIN", "MAX")


def _end_expr(pg: bool) -> str:
    """SQL for a span's effective end: stored, or from ``:now`` and the rule while open."""
    least, greatest = _fns(pg)
    billed_now = (f"CASE WHEN :now < interval_start_us THEN interval_start_us "
                  f"ELSE interval_start_us + {greatest}(minimum_us, "
                  f"((:now - interval_start_us + granularity_us - 1) / granularity_us)"
                  f" * granularity_us) END")
    return (f"CASE WHEN is_open THEN {least}(COALESCE(end_us, {_BIG}), {billed_now}) "
            f"ELSE end_us END")


def _normalize_key(value: Any, group: str | None) -> GroupKey:
    if group in ("instance", "deployment") and value is not None and not isinstance(
            value, uuid.UUID):
        return uuid.UUID(str(value))
    return value


DAY_US = 86400 * 1_000_000
# Groups the daily rollup carries (instance is not rolled up: it is read from the spans).
ROLLUP_GROUPS = (None, "provider", "zone", "instance_type", "deployment")


def window_costs_units(session: Session, windows: Sequence[tuple[int, int]], now_us: int,
                       group_by: str | None = None,
                       instance_ids: Sequence[uuid.UUID] | None = None
                       ) -> list[dict[GroupKey, int]]:
    """Cost units per group for each window ``(a_us, b_us)``.

    Whole UTC days of closed spans come from ``cost_daily`` (a few hundred rows a year); the
    partial days at the windows' ends from the closed spans overlapping them (index range scans);
    open spans (what runs now) are integrated row by row. Without ``group_by`` every dict has
    the single key ``None``. ``instance_ids`` (or ``group_by="instance"``) reads the spans only.
    """
    if not windows:
        return []
    if group_by is not None and group_by not in GROUP_COLUMNS:
        raise ValueError(f"unknown group {group_by!r}")
    no_parallel(session)
    if instance_ids is not None or group_by not in ROLLUP_GROUPS:
        return _span_costs(session, windows, now_us, group_by, instance_ids, "all")
    fulls: list[tuple[int, int] | None] = []
    edges: list[list[tuple[int, int]]] = []
    for a, b in windows:
        first, last = -(-a // DAY_US) * DAY_US, (b // DAY_US) * DAY_US
        if first < last:
            fulls.append((first, last))
            edges.append([r for r in ((a, first), (last, b)) if r[0] < r[1]])
        else:
            fulls.append(None)
            edges.append([(a, b)])
    uniq = sorted({r for rs in edges for r in rs})
    daily = _daily_sums(session, fulls, group_by)
    edge_costs = dict(zip(uniq, _span_costs(session, uniq, now_us, group_by, None, "closed"),
                          strict=True)) if uniq else {}
    open_costs = _span_costs(session, windows, now_us, group_by, None, "open")
    out: list[dict[GroupKey, int]] = []
    for k in range(len(windows)):
        acc: dict[GroupKey, int] = defaultdict(int)
        for part in (daily[k], open_costs[k], *(edge_costs[r] for r in edges[k])):
            for g, u in part.items():
                acc[g] += u
        out.append(dict(acc))
    return out


def no_parallel(session: Session) -> None:
    """No parallel workers for the rest of this transaction (Postgres): these are small index
    scans, and starting a worker costs more than the scan (milliseconds on a small box)."""
    if _is_pg(session):
        session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))


def _daily_sums(session: Session, fulls: Sequence[tuple[int, int] | None],
                group_by: str | None) -> list[dict[GroupKey, int]]:
    """Sums of ``cost_daily`` over whole-day ranges (one query for all of them)."""
    results: list[dict[GroupKey, int]] = [defaultdict(int) for _ in fulls]
    ranges = [f for f in fulls if f is not None]
    if not ranges:
        return [dict(r) for r in results]
    col = GROUP_COLUMNS[group_by] if group_by else "NULL"
    which = "dims <> ''" if group_by else "dims = ''"
    params: dict[str, int] = {"lo": min(a for a, _ in ranges), "hi": max(b for _, b in ranges)}
    base = f"FROM cost_daily WHERE {which} AND day_us >= :lo AND day_us < :hi"
    if _is_pg(session):
        cols = []
        for k, f in enumerate(fulls):
            if f is None:
                cols.append("NULL")
                continue
            params[f"a{k}"], params[f"b{k}"] = f
            cols.append(f"SUM(units) FILTER (WHERE day_us >= :a{k} AND day_us < :b{k})")
        sql = f"SELECT {col}, {', '.join(cols)} {base} GROUP BY 1"  # noqa: S608 - allow-listed
        for row in session.execute(text(sql), params):
            key = _normalize_key(row[0], group_by)
            for k in range(len(fulls)):
                if row[1 + k] is not None:
                    results[k][key] += int(row[1 + k])
    else:
        sql = f"SELECT {col}, day_us, units {base}"  # noqa: S608 - allow-listed identifiers
        for g, day, units in session.execute(text(sql), params):
            key = _normalize_key(g, group_by)
            for k, f in enumerate(fulls):
                if f is not None and f[0] <= day < f[1]:
                    results[k][key] += int(units)
    return [dict(r) for r in results]


def _span_costs(session: Session, windows: Sequence[tuple[int, int]], now_us: int,
                group_by: str | None, instance_ids: Sequence[uuid.UUID] | None,
                which: str) -> list[dict[GroupKey, int]]:
    """Row-level integration over ``cost_spans`` (``which``: all, open or closed spans)."""
    col = GROUP_COLUMNS[group_by] if group_by else "NULL"
    pg = _is_pg(session)
    least, greatest = _fns(pg)
    lo = min(a for a, _ in windows)
    hi = max(b for _, b in windows)
    params: dict[str, int] = {"now": now_us, "lo": lo, "hi": hi}
    if which == "open":
        end, where = _end_expr(pg), "is_open AND start_us < :hi"
    elif which == "closed":
        # One overlap test per range, OR-ed: each arm is an index range scan, not a table scan.
        arms = []
        for k, (a, b) in enumerate(windows):
            params[f"ea{k}"], params[f"eb{k}"] = a, b
            arms.append(f"(start_us < :eb{k} AND end_us > :ea{k})")
        end, where = "end_us", f"NOT is_open AND ({' OR '.join(arms)})"
    else:
        end, where = _end_expr(pg), "start_us < :hi AND (is_open OR end_us > :lo)"
    # Identifiers come from GROUP_COLUMNS (a fixed allow-list); every value is a bound parameter.
    inner = (f"SELECT {col} AS g, price_micro, start_us, {end} AS e "  # noqa: S608
             f"FROM cost_spans WHERE {where} AND price_micro <> 0")
    bind: dict[str, Any] = {}
    if instance_ids is not None:
        inner += " AND instance_id IN :ids"
        bind["ids"] = [i if pg else i.hex for i in instance_ids]
    results: list[dict[GroupKey, int]] = [defaultdict(int) for _ in windows]
    if pg:
        cols = []
        for k, (a, b) in enumerate(windows):
            params[f"a{k}"], params[f"b{k}"] = a, b
            ov = f"({least}(e, :b{k}) - {greatest}(start_us, :a{k}))"
            cols.append(f"SUM(price_micro * ({ov} / 1000000)) FILTER (WHERE {ov} > 0)")
            cols.append(f"SUM(price_micro * ({ov} % 1000000)) FILTER (WHERE {ov} > 0)")
        sql = f"SELECT g, {', '.join(cols)} FROM ({inner}) s GROUP BY g"  # noqa: S608
        stmt = text(sql)
        if bind:
            stmt = stmt.bindparams(bindparam("ids", expanding=True))
        for row in session.execute(stmt, {**params, **bind}):
            key = _normalize_key(row[0], group_by)
            for k in range(len(windows)):
                whole, frac = row[1 + 2 * k], row[2 + 2 * k]
                if whole is None:
                    continue
                results[k][key] += int(whole) * 1_000_000 + int(frac)
    else:
        stmt = text(inner)
        if bind:
            stmt = stmt.bindparams(bindparam("ids", expanding=True))
        for g, price, s, e in session.execute(stmt, {**params, **bind}):
            key = _normalize_key(g, group_by)
            for k, (a, b) in enumerate(windows):
                ov = min(e, b) - max(s, a)
                if ov > 0:
                    results[k][key] += price * ov
    return [dict(r) for r in results]


def window_cost_units(session: Session, a_us: int, b_us: int, now_us: int) -> int:
    """Total cost units over ``[a_us, b_us)``."""
    return window_costs_units(session, [(a_us, b_us)], now_us)[0].get(None, 0)


@dataclass(frozen=True)
class BurnRate:
    micro_per_hour: int
    running_instances: int
    by_group: dict[GroupKey, int]


def burn_rate(session: Session, now_us: int, group_by: str | None = None) -> BurnRate:
    """Hourly price in force now of every interval open at ``now`` (micro-EUR/h)."""
    col = GROUP_COLUMNS[group_by] if group_by else "NULL"
    sql = (f"SELECT {col}, SUM(price_micro), COUNT(DISTINCT interval_id) "  # noqa: S608
           "FROM cost_spans "
           "WHERE is_open AND interval_start_us <= :now AND start_us <= :now "
           "AND (end_us IS NULL OR end_us > :now) GROUP BY 1")
    by: dict[GroupKey, int] = {}
    total = running = 0
    for g, price, n in session.execute(text(sql), {"now": now_us}):
        by[_normalize_key(g, group_by)] = int(price or 0)
        total += int(price or 0)
        running += int(n)
    return BurnRate(total, running, by)


def fetch_span_rows(session: Session, a_us: int, b_us: int, now_us: int,
                    group_by: str | None = None) -> list[tuple[GroupKey, int, int, int]]:
    """``(group, price, start, effective end)`` of the spans overlapping ``[a_us, b_us)``."""
    pg = _is_pg(session)
    col = GROUP_COLUMNS[group_by] if group_by else "NULL"
    sql = (f"SELECT {col}, price_micro, start_us, {_end_expr(pg)} AS e "  # noqa: S608
           "FROM cost_spans "
           "WHERE start_us < :hi AND (is_open OR end_us > :lo) AND price_micro <> 0")
    rows = session.execute(text(sql), {"now": now_us, "lo": a_us, "hi": b_us})
    return [(_normalize_key(g, group_by), int(p), int(s), int(e)) for g, p, s, e in rows
            if e > a_us and s < b_us]


def series_units(session: Session, edges: Sequence[int], now_us: int) -> list[int]:
    """Cost units per bucket ``[edges[i], edges[i+1])``, equal to :func:`bucketize` over
    :func:`fetch_span_rows` of the whole range, without reading a year of spans.

    As :func:`window_costs_units`: every UTC day a bucket contains whole is read from
    ``cost_daily`` (closed spans, one row a day); what is left of a bucket (its partial days,
    every bucket shorter than a day) from the closed spans overlapping it, clipped to it; open
    spans (what runs now) row by row. A 365-day series by day reads 365 rollup rows, the two
    partial days' spans and the open spans, instead of ~100k spans.
    """
    nb = len(edges) - 1
    if nb <= 0:
        return []
    no_parallel(session)
    day_bucket: dict[int, int] = {}  # whole UTC day -> bucket containing it
    rest: list[tuple[int, int]] = []  # parts of buckets not covered by whole days, merged
    for k in range(nb):
        a, b = edges[k], edges[k + 1]
        first, last = -(-a // DAY_US) * DAY_US, (b // DAY_US) * DAY_US
        parts = [(a, b)]
        if first < last:
            for d in range(first, last, DAY_US):
                day_bucket[d] = k
            parts = [r for r in ((a, first), (last, b)) if r[0] < r[1]]
        for lo, hi in parts:
            if rest and rest[-1][1] == lo:
                rest[-1] = (rest[-1][0], hi)
            else:
                rest.append((lo, hi))
    out = [0] * nb
    if day_bucket:
        sql = ("SELECT day_us, units FROM cost_daily WHERE dims = '' "
               "AND day_us >= :lo AND day_us <= :hi")
        for day, units in session.execute(text(sql), {"lo": min(day_bucket),
                                                      "hi": max(day_bucket)}):
            j = day_bucket.get(int(day))
            if j is not None:
                out[j] += int(units)
    rows: list[tuple[int, int, int]] = []
    if rest:
        pg = _is_pg(session)
        least, greatest = _fns(pg)
        params: dict[str, int] = {}
        arms = []
        for k, (a, b) in enumerate(rest):
            params[f"a{k}"], params[f"b{k}"] = a, b
            # Clipped to the uncovered range, so a span reaching into a rolled-up day is not
            # counted twice; each arm is an index range scan.
            arms.append(f"SELECT price_micro, {greatest}(start_us, :a{k}), "  # noqa: S608
                        f"{least}(end_us, :b{k}) FROM cost_spans WHERE NOT is_open "
                        f"AND start_us < :b{k} AND end_us > :a{k} AND price_micro <> 0")
        rows += [(int(p), int(s), int(e)) for p, s, e in session.execute(
            text(" UNION ALL ".join(arms)), params)]
    sql = (f"SELECT price_micro, start_us, {_end_expr(_is_pg(session))} AS e "  # noqa: S608
           "FROM cost_spans WHERE is_open AND start_us < :hi AND price_micro <> 0")
    rows += [(int(p), int(s), int(e)) for p, s, e in session.execute(
        text(sql), {"now": now_us, "hi": edges[-1]})]
    for k, u in enumerate(bucketize(rows, edges)):
        out[k] += u
    return out


def bucketize(rows: Sequence[tuple[int, int, int]], edges: Sequence[int]) -> list[int]:
    """Cost units per bucket ``[edges[i], edges[i+1])`` of spans ``(price, start, end)``.

    A span covering many buckets adds its price to a rate difference array for the buckets it
    covers whole, so the work is O(spans x log(buckets) + buckets), not spans x buckets.
    """
    nb = len(edges) - 1
    out = [0] * max(nb, 0)
    if nb <= 0:
        return out
    rate = [0] * (nb + 1)
    lo, hi = edges[0], edges[-1]
    for price, s, e in rows:
        s, e = max(s, lo), min(e, hi)
        if e <= s:
            continue
        i = bisect.bisect_right(edges, s) - 1
        j = bisect.bisect_left(edges, e) - 1  # bucket containing e - 1 microsecond
        if i == j:
            out[i] += price * (e - s)
            continue
        out[i] += price * (edges[i + 1] - s)
        out[j] += price * (e - edges[j])
        if j > i + 1:
            rate[i + 1] += price
            rate[j] -= price
    running = 0
    for k in range(nb):
        running += rate[k]
        if running:
            out[k] += running * (edges[k + 1] - edges[k])
    return out
