"""Keep ``cost_spans`` in step with ``billing_intervals``, prices and billing rules.

``cost_spans`` is derived data: each billing interval's billed span, split at price changes, in
integer microseconds and micro-EUR/h. The lifecycle code only opens and closes intervals; this
module notices, by two flags on the interval row (``ledger_spans``: spans written; and
``ledger_closed``: spans reflect the closed interval), which intervals need (re)writing. Found
through a partial index, so a sync with nothing to do costs one small index scan.

A change of prices or billing rules (detected by a fingerprint kept in ``finops_state``) resets
only the intervals it can affect: those of the changed instance type (or provider) whose billed
span reaches the earliest changed price instant.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, insert, literal_column, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from core.db import utcnow
from core.models import (
    LEDGER_PENDING,
    BillingInterval,
    CostDaily,
    CostSpan,
    FinopsState,
    InstanceType,
    Provider,
)
from finops.ledger import (
    US_PER_SECOND,
    BillingRule,
    PriceSchedule,
    billed_span_us,
    from_us,
    price_to_micro,
    to_us,
)
from finops.queries import load_prices, load_rules

FINGERPRINT_KEY = "ledger_fingerprint"
NO_PRICE = -(2**62)  # "before any price": resets everything of that type


@dataclass(frozen=True)
class Piece:
    start_us: int
    end_us: int | None
    price_micro: int


def interval_pieces(start_us: int, end_us: int | None, rule: BillingRule,
                    prices: PriceSchedule) -> list[Piece]:
    """Pieces of an interval's billed span, one per price in force.

    Closed: ``[start, start + billed)`` split at the price changes inside it. Open: split at every
    price change after ``start`` (future ones too), the last piece without an end; the end is
    applied at query time from ``now`` and the rule.
    """
    if end_us is not None:
        s, e = billed_span_us(start_us, end_us, end_us, rule)
        if e <= s:
            return [Piece(s, s, prices.price_at(s))]
        cuts = [s, *prices.change_points(s, e), e]
        return [Piece(a, b, prices.price_at(a)) for a, b in zip(cuts, cuts[1:], strict=False)]
    cuts = [start_us, *prices.change_points(start_us, 2**62)]
    ends: list[int | None] = [*cuts[1:], None]
    return [Piece(a, b, prices.price_at(a)) for a, b in zip(cuts, ends, strict=True)]


DAY_US = 86400 * US_PER_SECOND
DimsT = tuple[str, str | None, str, object]  # provider, zone, instance type, deployment id


def dims_text(d: DimsT | None) -> str:
    """``cost_daily.dims`` of a dimensions tuple ('' = the day's total)."""
    return "" if d is None else "|".join("" if v is None else str(v) for v in d)


def daily_contributions(pieces: Iterable[tuple[DimsT, int, int, int]]
                        ) -> dict[tuple[int, DimsT | None], int]:
    """Units per (UTC day, dims) and per (day, total) of closed pieces ``(dims, price, s, e)``."""
    out: dict[tuple[int, DimsT | None], int] = defaultdict(int)
    for dims, price, s, e in pieces:
        if price == 0 or e <= s:
            continue
        d = (s // DAY_US) * DAY_US
        while d < e:
            u = price * (min(e, d + DAY_US) - max(s, d))
            out[(d, dims)] += u
            out[(d, None)] += u
            d += DAY_US
    return out


def apply_daily(session: Session, contrib: dict[tuple[int, DimsT | None], int],
                sign: int = 1) -> None:
    """Add (or subtract) contributions to ``cost_daily``, in key order (no deadlocks)."""
    if not contrib:
        return
    rows = []
    for (day, dims), units in sorted(contrib.items(), key=lambda kv: (kv[0][0],
                                                                      dims_text(kv[0][1]))):
        p, z, t, dep = dims if dims is not None else (None, None, None, None)
        rows.append({"day_us": day, "dims": dims_text(dims), "provider_code": p,
                     "zone_code": z, "instance_type_name": t, "deployment_id": dep,
                     "units": sign * units})
    if session.get_bind().dialect.name == "postgresql":
        stmt = pg_insert(CostDaily)
        stmt = stmt.on_conflict_do_update(index_elements=["day_us", "dims"],
                                          set_={"units": literal_column(
                                              "cost_daily.units + excluded.units")})
        for i in range(0, len(rows), 2000):
            session.execute(stmt, rows[i:i + 2000])
        return
    # SQLite: units are text (exact big integers), so add in Python; writers are serialized.
    for i in range(0, len(rows), 500):
        chunk = rows[i:i + 500]
        keys = {(r["day_us"], r["dims"]) for r in chunk}
        existing = {(d, k): (rid, u) for rid, d, k, u in session.execute(
            select(CostDaily.id, CostDaily.day_us, CostDaily.dims, CostDaily.units).where(
                CostDaily.day_us.in_({k[0] for k in keys}), CostDaily.dims.in_(
                    {k[1] for k in keys})))}
        new_rows = []
        for r in chunk:
            hit = existing.get((r["day_us"], r["dims"]))
            if hit is None:
                new_rows.append(r)
            else:
                session.execute(update(CostDaily).where(CostDaily.id == hit[0])
                                .values(units=hit[1] + r["units"]))
        if new_rows:
            session.execute(insert(CostDaily), new_rows)


def _closed_contributions(session: Session, where: list[object]) -> dict[tuple[int, DimsT | None],
                                                                         int]:
    cs = CostSpan
    ids = select(BillingInterval.id).where(*where)  # type: ignore[arg-type]
    rows = session.execute(select(cs.provider_code, cs.zone_code, cs.instance_type_name,
                                  cs.deployment_id, cs.price_micro, cs.start_us, cs.end_us)
                           .where(cs.interval_id.in_(ids), cs.is_open.is_(False)))
    return daily_contributions(((p, z, t, d), pr, s, e) for p, z, t, d, pr, s, e in rows)


def _price_points(session: Session) -> dict[str, list[tuple[int, int]]]:
    from core.models import InstanceTypePrice

    rows = session.execute(
        select(InstanceType.provider_code, InstanceType.name, InstanceTypePrice.effective_from,
               InstanceTypePrice.hourly_eur)
        .join(InstanceTypePrice, InstanceTypePrice.instance_type_id == InstanceType.id))
    out: dict[str, list[tuple[int, int]]] = {}
    for prov, name, eff, eur in rows:
        out.setdefault(f"{prov}/{name}", []).append((to_us(eff), price_to_micro(eur)))
    for v in out.values():
        v.sort()
    return out


def _fingerprint(session: Session) -> dict[str, object]:
    rules = {c: [g, m] for c, g, m in session.execute(
        select(Provider.code, Provider.billing_granularity_seconds,
               Provider.billing_minimum_seconds))}
    prices = _price_points(session)
    digest = hashlib.sha256(json.dumps([rules, prices], sort_keys=True).encode()).hexdigest()
    return {"digest": digest, "rules": rules, "prices": prices}


def _earliest_change(old: Sequence[Sequence[int]], new: Sequence[Sequence[int]]) -> int | None:
    """First instant from which two price lists differ (``NO_PRICE``: from the beginning)."""
    a = {tuple(x) for x in old}
    b = {tuple(x) for x in new}
    diff = a ^ b
    if not diff:
        return None
    first = min(p for p, _ in diff)
    # The first price also applies before its effective date (see PriceSchedule).
    if not old or not new or first <= min(min(p for p, _ in old), min(p for p, _ in new)):
        return NO_PRICE
    return first


def _reset(session: Session, where: list[object]) -> None:
    # Take the closed spans' days out of the rollup before dropping the spans.
    apply_daily(session, _closed_contributions(session, where), sign=-1)
    ids = select(BillingInterval.id).where(*where)  # type: ignore[arg-type]
    session.execute(delete(CostSpan).where(CostSpan.interval_id.in_(ids)))
    session.execute(update(BillingInterval).where(*where)  # type: ignore[arg-type]
                    .values(ledger_spans=False, ledger_closed=False)
                    .execution_options(synchronize_session=False))


def check_fingerprint(session: Session) -> bool:
    """Reset the intervals a price or rule change affects; True if anything changed."""
    fp = _fingerprint(session)
    state = session.get(FinopsState, FINGERPRINT_KEY)
    if state is not None and state.value.get("digest") == fp["digest"]:
        return False
    rules = load_rules(session)
    ext = timedelta(microseconds=max((r.max_extension_us for r in rules.values()),
                                     default=US_PER_SECOND))
    old_rules: dict[str, list[int]] = state.value.get("rules", {}) if state else {}
    old_prices: dict[str, list[list[int]]] = state.value.get("prices", {}) if state else {}
    new_rules: dict[str, list[int]] = fp["rules"]  # type: ignore[assignment]
    new_prices: dict[str, list[tuple[int, int]]] = fp["prices"]  # type: ignore[assignment]
    changed_providers = {c for c in set(old_rules) | set(new_rules)
                         if old_rules.get(c) != list(new_rules.get(c, []) or [])}
    if state is None:
        # First run: nothing was derived with an older catalog; only unsynced rows are pending.
        changed_providers = set()
    bi = BillingInterval
    for code in changed_providers:
        _reset(session, [bi.provider_code == code])
    if state is not None:
        for key in set(old_prices) | set(new_prices):
            prov, _, name = key.partition("/")
            if prov in changed_providers:
                continue
            since = _earliest_change(old_prices.get(key, []), new_prices.get(key, []))
            if since is None:
                continue
            where: list[object] = [bi.provider_code == prov, bi.instance_type_name == name]
            if since != NO_PRICE:
                where.append(or_(bi.ended_at.is_(None), bi.ended_at >= from_us(since) - ext))
            _reset(session, where)
    if state is None:
        session.add(FinopsState(key=FINGERPRINT_KEY, value=fp, updated_at=utcnow()))
    else:
        state.value = fp
        state.updated_at = utcnow()
    session.flush()
    return True


def sync_spans(session: Session, *, batch: int = 5000, max_batches: int | None = None) -> int:
    """Write the cost spans of new, closed or reset intervals; returns intervals synced.

    Postgres: pending rows are locked with SKIP LOCKED, so concurrent API workers never write the
    same interval twice; an interval being closed right now is picked up by the next sync.
    """
    check_fingerprint(session)
    rules: dict[str, BillingRule] | None = None
    prices: dict[tuple[str, str], PriceSchedule] = {}
    empty = PriceSchedule(())
    bi = BillingInterval
    pg = session.get_bind().dialect.name == "postgresql"
    done = 0
    n = 0
    while max_batches is None or n < max_batches:
        n += 1
        q = (select(bi.id, bi.instance_id, bi.provider_code, bi.zone_code, bi.instance_type_name,
                    bi.deployment_id, bi.started_at, bi.ended_at)
             # Spelled like the partial index predicate so the planner uses it.
             .where(text(LEDGER_PENDING))
             .order_by(bi.id).limit(batch))
        if pg:
            q = q.with_for_update(skip_locked=True, of=bi)
        rows = session.execute(q).all()
        if not rows:
            break
        if rules is None:  # loaded only when there is work (the common sync has none)
            rules, prices = load_rules(session), load_prices(session)
        ids = [r.id for r in rows]
        session.execute(delete(CostSpan).where(CostSpan.interval_id.in_(ids)))
        spans: list[dict[str, object]] = []
        closed_pieces: list[tuple[DimsT, int, int, int]] = []
        closed_ids: list[int] = []
        open_ids: list[int] = []
        for r in rows:
            rule = rules.get(r.provider_code, BillingRule())
            sched = prices.get((r.provider_code, r.instance_type_name), empty)
            s_us = to_us(r.started_at)
            e_us = None if r.ended_at is None else to_us(r.ended_at)
            (closed_ids if e_us is not None else open_ids).append(r.id)
            for p in interval_pieces(s_us, e_us, rule, sched):
                if e_us is not None and p.end_us is not None:
                    closed_pieces.append(((r.provider_code, r.zone_code, r.instance_type_name,
                                           r.deployment_id), p.price_micro, p.start_us,
                                          p.end_us))
                spans.append({
                    "interval_id": r.id, "instance_id": r.instance_id,
                    "provider_code": r.provider_code, "zone_code": r.zone_code,
                    "instance_type_name": r.instance_type_name,
                    "deployment_id": r.deployment_id, "interval_start_us": s_us,
                    "start_us": p.start_us, "end_us": p.end_us, "is_open": e_us is None,
                    "granularity_us": max(1, rule.granularity_seconds) * US_PER_SECOND,
                    "minimum_us": rule.minimum_seconds * US_PER_SECOND,
                    "price_micro": p.price_micro,
                })
        if spans:
            session.execute(insert(CostSpan), spans)
        apply_daily(session, daily_contributions(closed_pieces))
        if closed_ids:
            session.execute(update(bi).where(bi.id.in_(closed_ids))
                            .values(ledger_spans=True, ledger_closed=True)
                            .execution_options(synchronize_session=False))
        if open_ids:
            session.execute(update(bi).where(bi.id.in_(open_ids))
                            .values(ledger_spans=True)
                            .execution_options(synchronize_session=False))
        done += len(rows)
        if len(rows) < batch:
            break
    session.flush()
    return done

