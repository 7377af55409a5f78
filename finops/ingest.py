"""Fast, idempotent insert of usage records (the ingest path's database write).

Postgres: ONE statement per batch whatever its size: the columns are sent as arrays and
``unnest``-ed (``INSERT ... SELECT FROM unnest(...) ON CONFLICT (request_id) DO NOTHING
RETURNING request_id``), so neither SQLAlchemy nor the driver builds a statement with thousands
of parameters (that building was ~80 % of the ingest time). SQLite: an executemany of the same
conflict-ignoring insert. Either way a request id already stored (or repeated in the batch) is
ignored, never doubled, and the ids actually inserted are returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from core.models import UsageRecord

COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "text"), ("api_key_id", "uuid"), ("org_id", "uuid"), ("user_id", "uuid"),
    ("model", "text"), ("deployment", "text"), ("prompt_tokens", "int4"),
    ("completion_tokens", "int4"), ("ttft_ms", "float8"), ("duration_ms", "float8"),
    ("status", "text"), ("streamed", "bool"), ("at", "timestamptz"))
_NAMES = ", ".join(c for c, _ in COLUMNS)
_ARRAYS = ", ".join(f"CAST(:{c} AS {t}[])" for c, t in COLUMNS)
_PG_SQL = text(f"INSERT INTO usage_records ({_NAMES}, rolled_up) "  # noqa: S608 - fixed names
               f"SELECT *, false FROM unnest({_ARRAYS}) "
               "ON CONFLICT (request_id) DO NOTHING RETURNING request_id")


def insert_usage_rows(session: Session, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Insert ``rows`` (dicts with :data:`COLUMNS`' keys; missing optional ones are NULL),
    ignoring known request ids; returns the request ids inserted."""
    seen: set[str] = set()
    unique = []
    for r in rows:
        if r["request_id"] not in seen:
            seen.add(r["request_id"])
            unique.append(r)
    if not unique:
        return []
    if session.get_bind().dialect.name == "postgresql":
        params = {c: [r.get(c) for r in unique] for c, _ in COLUMNS}
        params["streamed"] = [bool(r.get("streamed", False)) for r in unique]
        return [rid for (rid,) in session.execute(_PG_SQL, params)]
    stmt = sqlite_insert(UsageRecord).on_conflict_do_nothing(
        index_elements=[UsageRecord.request_id]).returning(UsageRecord.request_id)
    values = [{c: r.get(c) for c, _ in COLUMNS} | {"streamed": bool(r.get("streamed", False))}
              for r in unique]
    out: list[str] = []
    for i in range(0, len(values), 500):
        out.extend(rid for (rid,) in session.execute(stmt, values[i:i + 500]))
    return out
