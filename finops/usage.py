"""Usage (requests and tokens) by key, user, org, model, deployment and window.

Raw ``usage_records`` are rolled up into ``usage_hourly`` (exact integer sums per UTC hour and
dimensions) by :func:`rollup_usage`; a record is marked ``rolled_up`` in the same transaction, so
it is counted exactly once. Queries read, in ONE statement (one snapshot: a concurrent rollup can
neither hide nor double a record): the hourly rows of the window's whole hours, the not yet
rolled-up records of those hours, and the raw records of the partial hours at both ends.

A record's deployment is its ``deployment`` name, or its model name when it has none (Serve LLM
names deployments after the model by default).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, literal, select, text, union_all, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.models import UsageHourly, UsageRecord

USAGE_GROUPS = ("api_key", "user", "org", "model", "deployment")
HOUR = timedelta(hours=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class UsageTotals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, requests: int, prompt: int, completion: int) -> None:
        self.requests += int(requests or 0)
        self.prompt_tokens += int(prompt or 0)
        self.completion_tokens += int(completion or 0)


def floor_hour(t: datetime) -> datetime:
    return EPOCH + ((t - EPOCH) // HOUR) * HOUR


def ceil_hour(t: datetime) -> datetime:
    f = floor_hour(t)
    return f if f == t else f + HOUR


def dims_key(api_key_id: Any, org_id: Any, user_id: Any, model: str,
             deployment: str | None) -> str:
    """Canonical text of a usage row's dimensions (NULL-safe unique key)."""
    return "|".join("" if v is None else str(v)
                    for v in (api_key_id, org_id, user_id, model, deployment))


def rollup_usage(session: Session, *, batch: int = 20000, max_batches: int | None = None) -> int:
    """Fold not yet rolled-up usage records into ``usage_hourly``; returns records folded."""
    u = UsageRecord
    pg = session.get_bind().dialect.name == "postgresql"
    done = n = 0
    while max_batches is None or n < max_batches:
        n += 1
        q = (select(u.id, u.at, u.api_key_id, u.org_id, u.user_id, u.model, u.deployment,
                    u.prompt_tokens, u.completion_tokens)
             .where(text("NOT usage_records.rolled_up")).order_by(u.id).limit(batch))
        if pg:
            q = q.with_for_update(skip_locked=True)
        rows = session.execute(q).all()
        if not rows:
            break
        agg: dict[tuple[datetime, str], dict[str, Any]] = {}
        for r in rows:
            hour = floor_hour(r.at)
            key = (hour, dims_key(r.api_key_id, r.org_id, r.user_id, r.model, r.deployment))
            a = agg.get(key)
            if a is None:
                a = agg[key] = {"hour": hour, "dims": key[1], "api_key_id": r.api_key_id,
                                "org_id": r.org_id, "user_id": r.user_id, "model": r.model,
                                "deployment": r.deployment, "requests": 0, "prompt_tokens": 0,
                                "completion_tokens": 0}
            a["requests"] += 1
            a["prompt_tokens"] += int(r.prompt_tokens or 0)
            a["completion_tokens"] += int(r.completion_tokens or 0)
        ins_mod = postgresql if pg else sqlite
        stmt = ins_mod.insert(UsageHourly)
        stmt = stmt.on_conflict_do_update(
            index_elements=["hour", "dims"],
            set_={c: getattr(UsageHourly, c) + getattr(stmt.excluded, c)
                  for c in ("requests", "prompt_tokens", "completion_tokens")})
        # Sorted so concurrent rollups lock hourly rows in the same order (no deadlock).
        values = [agg[k] for k in sorted(agg)]
        for i in range(0, len(values), 1000):
            session.execute(stmt, values[i:i + 1000])
        ids = [r.id for r in rows]
        for i in range(0, len(ids), 5000):
            session.execute(update(u).where(u.id.in_(ids[i:i + 5000])).values(rolled_up=True)
                            .execution_options(synchronize_session=False))
        done += len(rows)
        if len(rows) < batch:
            break
    session.flush()
    return done


def _dim_cols(src: Any, groups: Sequence[str]) -> list[Any]:
    cols = []
    for g in groups:
        if g == "api_key":
            cols.append(src.c.api_key_id.label("api_key"))
        elif g == "user":
            cols.append(src.c.user_id.label("user"))
        elif g == "org":
            cols.append(src.c.org_id.label("org"))
        elif g == "model":
            cols.append(src.c.model.label("model"))
        elif g == "deployment":
            cols.append(func.coalesce(src.c.deployment, src.c.model).label("deployment"))
        else:
            raise ValueError(f"unknown usage group {g!r}")
    return cols


def usage_totals(session: Session, start: datetime, end: datetime,
                 group_by: Sequence[str] = (), *,
                 deployments: Sequence[str] | None = None,
                 org_ids: Sequence[uuid.UUID] | None = None,
                 api_key_id: uuid.UUID | None = None,
                 by_hour: bool = False) -> dict[tuple[Any, ...], UsageTotals]:
    """Requests and tokens in ``[start, end)`` grouped by ``group_by`` (in that order).

    ``by_hour`` appends the UTC hour (floor) to each key.
    """
    h = UsageHourly.__table__
    r = UsageRecord.__table__
    first_full, last_full = ceil_hour(start), floor_hour(end)

    def raw(where: list[Any]) -> Any:
        cols = [r.c.api_key_id, r.c.org_id, r.c.user_id, r.c.model, r.c.deployment,
                r.c.at.label("hour"), literal(1).label("requests"), r.c.prompt_tokens,
                r.c.completion_tokens]
        return select(*cols).where(*where)

    parts = []
    if first_full < last_full:
        parts.append(select(h.c.api_key_id, h.c.org_id, h.c.user_id, h.c.model, h.c.deployment,
                            h.c.hour, h.c.requests, h.c.prompt_tokens, h.c.completion_tokens)
                     .where(h.c.hour >= first_full, h.c.hour < last_full))
        parts.append(raw([text("NOT usage_records.rolled_up"), r.c.at >= first_full,
                          r.c.at < last_full]))
        if start < first_full:
            parts.append(raw([r.c.at >= start, r.c.at < first_full]))
        if last_full < end:
            parts.append(raw([r.c.at >= last_full, r.c.at < end]))
    else:
        parts.append(raw([r.c.at >= start, r.c.at < end]))
    src = union_all(*parts).subquery("u") if len(parts) > 1 else parts[0].subquery("u")
    dims = _dim_cols(src, group_by)
    filters: list[ColumnElement[bool]] = []
    if deployments is not None:
        filters.append(func.coalesce(src.c.deployment, src.c.model).in_(list(deployments)))
    if org_ids is not None:
        filters.append(src.c.org_id.in_(list(org_ids)))
    if api_key_id is not None:
        filters.append(src.c.api_key_id == api_key_id)
    sums = [func.sum(src.c.requests), func.sum(src.c.prompt_tokens),
            func.sum(src.c.completion_tokens)]
    if by_hour:
        # Hour of raw rows is their exact time: bucketed in Python (portable, few rows).
        q = select(*dims, src.c.hour, *sums).where(*filters).group_by(*dims, src.c.hour)
    else:
        q = select(*dims, *sums).where(*filters)
        if dims:
            q = q.group_by(*dims)
    out: dict[tuple[Any, ...], UsageTotals] = defaultdict(UsageTotals)
    ng = len(group_by)
    for row in session.execute(q):
        key = tuple(row[:ng])
        if by_hour:
            hour = row[ng]
            if isinstance(hour, str):  # SQLite through a UNION loses the column type
                hour = datetime.fromisoformat(hour)
            if hour.tzinfo is None:
                hour = hour.replace(tzinfo=UTC)
            key = (*key, floor_hour(hour))
            vals = row[ng + 1:]
        else:
            vals = row[ng:]
        out[key].add(*vals)
    return dict(out)
