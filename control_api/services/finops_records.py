"""Per-request usage records behind /api/finops/usage/records and /usage/export.

Org-scoped (non-admins: their orgs' records only), newest first with keyset cursors (list), or
oldest first in chunks (export, streamed as NDJSON). Each record's cost: its tokens x the
deployment's token price when the spec sets one, else its token share of the deployment's
attributed cost (:mod:`finops.attribution`) over the record's UTC day. Reads only.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from control_api.deps import Principal
from control_api.pagination import after_cursor, decode_cursor, page
from control_api.schemas import finops as sch
from core.models import Deployment, UsageRecord
from finops.attribution_db import window_attribution
from finops.deployments import token_price_override
from finops.ledger import EUR_QUANTUM, UNITS_PER_EUR, to_us
from finops.usage import floor_hour, usage_totals

DAY = timedelta(days=1)
EXPORT_CHUNK = 1000


def _floor_day(t: datetime) -> datetime:
    h = floor_hour(t)
    return h - timedelta(hours=h.hour)


class RecordCoster:
    """Costs records, caching each UTC day's attribution and token totals."""

    def __init__(self, session: Session, now: datetime) -> None:
        self.s = session
        self.now = now
        self._days: dict[datetime, tuple[dict[Any, int], dict[str, int]]] = {}
        self._deps: dict[str, tuple[uuid.UUID, dict[str, Any]]] = {
            n: (i, spec or {}) for n, i, spec in session.execute(
                select(Deployment.name, Deployment.id, Deployment.spec))}

    def _day(self, day: datetime) -> tuple[dict[Any, int], dict[str, int]]:
        hit = self._days.get(day)
        if hit is None:
            end = min(day + DAY, self.now)
            att = window_attribution(self.s, to_us(day), to_us(end), to_us(self.now))
            tokens = {n: t.tokens for (n,), t in usage_totals(self.s, day, day + DAY,
                                                              ("deployment",)).items()}
            hit = self._days[day] = (att.by_owner, tokens)
        return hit

    def cost(self, r: UsageRecord) -> Decimal | None:
        name = r.deployment or r.model
        dep = self._deps.get(name)
        if dep is None:
            return None
        override = token_price_override(dep[1])
        if override is not None:
            eur = (Fraction(r.prompt_tokens) * Fraction(override[0])
                   + Fraction(r.completion_tokens) * Fraction(override[1])) / 1_000_000
        else:
            units, tokens = self._day(_floor_day(r.at))
            total = tokens.get(name, 0)
            mine = r.prompt_tokens + r.completion_tokens
            if total <= 0 or mine <= 0:
                return Decimal(0).quantize(EUR_QUANTUM)
            eur = Fraction(units.get(dep[0], 0) * mine, total * UNITS_PER_EUR)
        return (Decimal(eur.numerator) / Decimal(eur.denominator)).quantize(EUR_QUANTUM)


def record_out(r: UsageRecord, cost: Decimal | None) -> sch.UsageRecordOut:
    return sch.UsageRecordOut(
        request_id=r.request_id, api_key_id=r.api_key_id, org_id=r.org_id, user_id=r.user_id,
        deployment=r.deployment, model=r.model, prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
        total_tokens=r.prompt_tokens + r.completion_tokens, status=r.status,
        streamed=bool(r.streamed), ttft_ms=r.ttft_ms, latency_ms=r.duration_ms, at=r.at,
        cost_eur=cost)


def visible_orgs(principal: Principal) -> list[uuid.UUID] | None:
    """None for platform admins (every record), else the caller's orgs."""
    return None if principal.is_platform_admin else list(principal.roles)


def _filtered(orgs: list[uuid.UUID] | None, request_id: str | None, key_id: uuid.UUID | None,
              since: datetime | None) -> Any:
    q = select(UsageRecord)
    if orgs is not None:
        q = q.where(UsageRecord.org_id.in_(orgs))
    if request_id is not None:
        q = q.where(UsageRecord.request_id == request_id)
    if key_id is not None:
        q = q.where(UsageRecord.api_key_id == key_id)
    if since is not None:
        q = q.where(UsageRecord.at >= since)
    return q


def list_records(session: Session, principal: Principal, now: datetime, *,
                 request_id: str | None = None, key_id: uuid.UUID | None = None,
                 since: datetime | None = None, limit: int = 50,
                 cursor: str | None = None) -> sch.UsageRecordList:
    after = decode_cursor(cursor, int) if cursor is not None else None
    base = _filtered(visible_orgs(principal), request_id, key_id, since)
    stmt = after_cursor(base, UsageRecord.at, UsageRecord.id, after).limit(limit + 1)
    rows, next_cursor = page(list(session.scalars(stmt)), limit, created="at")
    coster = RecordCoster(session, now)
    return sch.UsageRecordList(items=[record_out(r, coster.cost(r)) for r in rows],
                               next_cursor=next_cursor)


def export_ndjson(sessions: sessionmaker[Session], principal: Principal, now: datetime, *,
                  request_id: str | None = None, key_id: uuid.UUID | None = None,
                  since: datetime | None = None) -> Iterator[bytes]:
    """NDJSON lines, oldest first, read in chunks (its own session: the stream outlives the
    request's)."""
    orgs = visible_orgs(principal)  # read now: the request's session is gone while streaming
    return _export(sessions, orgs, now, request_id, key_id, since)


def _export(sessions: sessionmaker[Session], orgs: list[uuid.UUID] | None, now: datetime,
            request_id: str | None, key_id: uuid.UUID | None,
            since: datetime | None) -> Iterator[bytes]:
    last_id = 0
    with sessions() as s:
        coster = RecordCoster(s, now)
        while True:
            rows = list(s.scalars(_filtered(orgs, request_id, key_id, since)
                                  .where(UsageRecord.id > last_id)
                                  .order_by(UsageRecord.id).limit(EXPORT_CHUNK)))
            if not rows:
                return
            buf = []
            for r in rows:
                buf.append(json.dumps(record_out(r, coster.cost(r)).model_dump(mode="json"),
                                      separators=(",", ":")))
            yield ("\n".join(buf) + "\n").encode()
            last_id = rows[-1].id
            s.expunge_all()
