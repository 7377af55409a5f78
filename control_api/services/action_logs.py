"""Action log search: filters, visibility, keyset pagination and counts per status."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from control_api.deps import Principal
from control_api.pagination import after_cursor, decode_cursor, page
from core.models import ActionLog


@dataclass(frozen=True)
class LogFilters:
    """Filters of an action-log search; ``since`` is inclusive, ``until`` exclusive."""

    type: str | None = None
    status: str | None = None
    component: str | None = None
    instance_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    org_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class LogPage:
    items: list[ActionLog]
    next_cursor: str | None
    counts: dict[str, int]


def _conditions(principal: Principal, f: LogFilters) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = []
    if not principal.is_platform_admin:
        # Others see what happened in their orgs, and what they did themselves.
        conds.append(or_(ActionLog.org_id.in_(list(principal.roles)),
                         ActionLog.user_id == principal.user_id))
    if f.type is not None:
        conds.append(ActionLog.type == f.type)
    if f.status is not None:
        conds.append(ActionLog.status == f.status)
    if f.component is not None:
        conds.append(ActionLog.component == f.component)
    if f.instance_id is not None:
        conds.append(ActionLog.instance_id == f.instance_id)
    if f.user_id is not None:
        conds.append(ActionLog.user_id == f.user_id)
    if f.org_id is not None:
        conds.append(ActionLog.org_id == f.org_id)
    if f.since is not None:
        conds.append(ActionLog.created_at >= f.since)
    if f.until is not None:
        conds.append(ActionLog.created_at < f.until)
    return conds


def search(session: Session, principal: Principal, filters: LogFilters, *, limit: int,
           cursor: str | None = None) -> LogPage:
    """One page of the logs visible to ``principal`` matching ``filters``, newest first.

    ``counts`` covers every matching log (all pages), per status.
    """
    after = decode_cursor(cursor, int) if cursor is not None else None
    conds = _conditions(principal, filters)
    stmt: Any = after_cursor(select(ActionLog).where(*conds), ActionLog.created_at, ActionLog.id,
                             after).limit(limit + 1)
    items, next_cursor = page(list(session.scalars(stmt)), limit)
    counts = {
        status: int(n)
        for status, n in session.execute(
            select(ActionLog.status, func.count()).where(*conds).group_by(ActionLog.status)
        )
    }
    return LogPage(items=items, next_cursor=next_cursor, counts=dict(sorted(counts.items())))
