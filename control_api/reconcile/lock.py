"""The single-runner lock of the reconciler: at most one pass at a time per database.

On Postgres a session-level ``pg_try_advisory_lock`` held on a dedicated connection for the whole
pass; on SQLite (the one-process laptop default) a process-wide lock per database plus an
``flock`` on ``<db file>.reconcile.lock`` for other processes. Never waits: a runner that does not
get the lock skips its pass.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from sqlalchemy import Engine, text

# The advisory-lock key of the reconciler (any fixed 64-bit value unique in this database).
ADVISORY_LOCK_KEY = 0x1A7E_4EC0_0000_0001

_PROCESS_LOCKS: dict[str, threading.Lock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


class RunnerLock:
    """At most one reconcile pass at a time per database (see the module docstring)."""

    def __init__(self, engine: Engine, key: int = ADVISORY_LOCK_KEY) -> None:
        self.engine = engine
        self.key = key

    @contextlib.contextmanager
    def hold(self) -> Iterator[bool]:
        """Yield True with the lock held for the block, False (at once) if another holds it."""
        if self.engine.dialect.name == "postgresql":
            with self._hold_postgres() as got:
                yield got
        else:
            with self._hold_local() as got:
                yield got

    @contextlib.contextmanager
    def _hold_postgres(self) -> Iterator[bool]:
        # Session-level lock on a dedicated connection: it lasts as long as the connection, and
        # a runner that dies loses it with its connection (no stale lock to clean up).
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                    {"k": self.key}).scalar())
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        finally:
            conn.close()

    @contextlib.contextmanager
    def _hold_local(self) -> Iterator[bool]:
        url = self.engine.url.render_as_string(hide_password=True)
        with _PROCESS_LOCKS_GUARD:
            lock = _PROCESS_LOCKS.setdefault(url, threading.Lock())
        if not lock.acquire(blocking=False):
            yield False
            return
        try:
            path = self.engine.url.database
            if not path or path == ":memory:":
                yield True
                return
            import fcntl

            with open(f"{path}.reconcile.lock", "a+") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    yield False
                    return
                try:
                    yield True
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        finally:
            lock.release()
