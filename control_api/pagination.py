"""Keyset pagination with opaque cursors, and the query-parameter types list routes share.

A cursor is the base64url (unpadded) JSON ``[created_at, id]`` of the last row of a page. The next
page holds the rows strictly after it in ``(created_at desc, id desc)`` order, so rows inserted
while a client pages through (always newer) never shift nor repeat the pages it has yet to read.
The cursor is validated on the way in: anything that does not decode to that shape is a 422
``invalid_cursor``, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from control_api.errors import Unprocessable
from control_api.schemas.fields import MAX_CURSOR_LENGTH

# Page bounds and the UTC datetime type are the wire schemas' (control_api.schemas.fields).
KeyT = TypeVar("KeyT", uuid.UUID, int)


def invalid_cursor(message: str = "malformed or foreign cursor") -> Unprocessable:
    return Unprocessable(message, code="invalid_cursor")


def encode_cursor(created_at: datetime, key: uuid.UUID | int) -> str:
    """The opaque cursor pointing just after a row with this ``(created_at, id)``."""
    raw = json.dumps([created_at.astimezone(UTC).isoformat(),
                      str(key) if isinstance(key, uuid.UUID) else key],
                     separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, key_type: type[KeyT]) -> tuple[datetime, KeyT]:
    """Decode and validate a cursor made by :func:`encode_cursor` for ids of ``key_type``."""
    if not cursor or len(cursor) > MAX_CURSOR_LENGTH:
        raise invalid_cursor()
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload: Any = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (binascii.Error, ValueError, UnicodeError):
        raise invalid_cursor() from None
    if not (isinstance(payload, list) and len(payload) == 2 and isinstance(payload[0], str)):
        raise invalid_cursor()
    try:
        created_at = datetime.fromisoformat(payload[0])
    except ValueError:
        raise invalid_cursor() from None
    if created_at.tzinfo is None:
        raise invalid_cursor()
    raw_key = payload[1]
    key: Any
    if key_type is uuid.UUID:
        if not isinstance(raw_key, str):
            raise invalid_cursor()
        try:
            key = uuid.UUID(raw_key)
        except ValueError:
            raise invalid_cursor() from None
    else:
        # bool is an int in Python; a cursor never holds one.
        if not isinstance(raw_key, int) or isinstance(raw_key, bool):
            raise invalid_cursor()
        # Keep the bound inside a signed 64-bit integer so the database accepts it.
        if not -(2**63) <= raw_key < 2**63:
            raise invalid_cursor()
        key = raw_key
    try:
        return created_at.astimezone(UTC), key
    except (OverflowError, ValueError):
        raise invalid_cursor() from None


def after_cursor(
    stmt: Select[Any],
    created_col: InstrumentedAttribute[datetime],
    id_col: InstrumentedAttribute[Any],
    cursor: tuple[datetime, Any] | None,
) -> Select[Any]:
    """Order ``stmt`` newest first and keep only the rows after ``cursor`` (if any)."""
    if cursor is not None:
        at, key = cursor
        stmt = stmt.where(or_(created_col < at, and_(created_col == at, id_col < key)))
    return stmt.order_by(created_col.desc(), id_col.desc())


def page(rows: list[Any], limit: int, created: str = "created_at",
         key: str = "id") -> tuple[list[Any], str | None]:
    """Split ``limit + 1`` fetched rows into the page and the cursor of the next one."""
    if len(rows) <= limit:
        return rows, None
    items = rows[:limit]
    last = items[-1]
    return items, encode_cursor(getattr(last, created), getattr(last, key))
