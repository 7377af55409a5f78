"""A durable file queue for internal batches the control API could not take yet.

Layout: ``<root>/<kind>/<20-digit sequence>-<8 hex>.json``, one file per batch, where ``kind``
is ``lifecycle`` or ``usage``. A file holds ``{"version": 1, "kind", "spooled_at_ns", "body"}``;
``body`` is exactly the JSON request body to POST. Files are written to a dot-prefixed temporary
name, fsynced, then renamed (atomic on POSIX), and the directory is fsynced, so a crash leaves
either the whole batch or nothing. The sequence only grows, also across restarts (it starts
above the largest name on disk even if the wall clock went back), so sorting names replays
oldest first. Unreadable files are moved to ``<root>/<kind>/quarantine/`` and counted, never
silently dropped. A write the disk refuses (ENOSPC, EIO, EROFS …) raises ``SpoolUnwritable``
(nothing half-written stays), so the caller keeps the batch and says so; ``probe()`` tells
when the disk takes writes again.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_api.client.errors import SpoolError, SpoolFull  # noqa: F401 - importable here too

log = logging.getLogger(__name__)

SPOOL_FORMAT_VERSION = 1
KINDS = ("lifecycle", "usage")
QUARANTINE = "quarantine"
PROBE = ".tmp-probe"


class SpoolUnwritable(SpoolError):
    """The disk refused a spool write (``errno`` says why: ENOSPC, EIO, EROFS …); nothing was
    stored."""

    code = "spool_unwritable"

    def __init__(self, message: str, *, errno_name: str) -> None:
        super().__init__(message)
        self.errno_name = errno_name


def _unwritable(root: Path, exc: OSError) -> SpoolUnwritable:
    name = errno.errorcode.get(exc.errno or 0, "EIO")
    return SpoolUnwritable(f"spool {root} cannot be written ({name}: {exc.strerror})",
                           errno_name=name)


@dataclass(frozen=True)
class SpooledBatch:
    """One spooled batch: its file and the request body to send."""

    path: Path
    kind: str
    body: dict[str, Any]


class Spool:
    """A bounded, ordered, crash-safe queue of request bodies on local disk."""

    def __init__(self, root: Path | str, *, max_bytes: int = 512 * 1024 * 1024,
                 max_files: int = 100_000, clock: Callable[[], int] = time.time_ns) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._clock = clock
        self._lock = threading.Lock()
        self._last_seq = 0
        # Running totals of what waits on disk (bounded-size check without rescanning).
        self._files: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._bytes = 0
        for kind in KINDS:
            d = self.root / kind
            (d / QUARANTINE).mkdir(parents=True, exist_ok=True)
            # Temporary files of a write interrupted by a crash never became batches.
            for tmp in d.glob(".tmp-*"):
                tmp.unlink(missing_ok=True)
            for path in d.glob("[0-9]*.json"):
                self._last_seq = max(self._last_seq, _seq_of(path))
                self._files[kind] += 1
                self._bytes += path.stat().st_size

    # -------------------------------------------------------------- writing

    def put(self, kind: str, body: dict[str, Any]) -> Path:
        """Write one batch durably; raises ``SpoolFull`` (writing nothing) when over the bound."""
        _check_kind(kind)
        data = json.dumps({"version": SPOOL_FORMAT_VERSION, "kind": kind,
                           "spooled_at_ns": self._clock(), "body": body},
                          separators=(",", ":")).encode()
        with self._lock:
            files = sum(self._files.values())
            if files + 1 > self.max_files or self._bytes + len(data) > self.max_bytes:
                raise SpoolFull(
                    f"spool {self.root} is full ({files} files, {self._bytes} bytes; "
                    f"limits {self.max_files} files, {self.max_bytes} bytes)")
            self._last_seq = max(self._last_seq + 1, self._clock())
            name = f"{self._last_seq:020d}-{secrets.token_hex(4)}.json"
            d = self.root / kind
            tmp = d / f".tmp-{name}"
            final = d / name
            try:
                _write_durably(tmp, data)
                os.replace(tmp, final)
            except BaseException as exc:
                _discard(tmp)
                if isinstance(exc, OSError):
                    raise _unwritable(self.root, exc) from exc
                raise
            try:
                _fsync_dir(d)
            except OSError as exc:
                # Renamed but maybe not durable: take it back, the caller keeps the batch.
                _discard(final)
                raise _unwritable(self.root, exc) from exc
            self._files[kind] += 1
            self._bytes += len(data)
            return final

    def probe(self) -> None:
        """Check that a batch could be spooled now: room under the bounds and a disk that
        takes a durable write (a small file written, fsynced and removed). Raises
        ``SpoolFull`` or ``SpoolUnwritable``."""
        with self._lock:
            if sum(self._files.values()) + 1 > self.max_files or self._bytes >= self.max_bytes:
                raise SpoolFull(f"spool {self.root} is full")
        for kind in KINDS:  # where batches are written (a ``.tmp-`` name: cleaned at start)
            path = self.root / kind / PROBE
            try:
                _write_durably(path, b"probe\n", exclusive=False)
                path.unlink()
                _fsync_dir(path.parent)
            except OSError as exc:
                _discard(path)
                raise _unwritable(self.root, exc) from exc

    # -------------------------------------------------------------- reading

    def pending(self, kind: str) -> list[Path]:
        """Spooled batch files of ``kind``, oldest first."""
        _check_kind(kind)
        return sorted((self.root / kind).glob("[0-9]*.json"), key=lambda p: p.name)

    def count(self, kind: str | None = None) -> int:
        """How many batches wait (of one kind, or all), from the running totals."""
        if kind is None:
            return sum(self._files.values())
        _check_kind(kind)
        return self._files[kind]

    def read(self, path: Path) -> SpooledBatch | None:
        """The batch in ``path``; ``None`` (after quarantining it) when the file is unreadable."""
        try:
            doc = json.loads(path.read_bytes())
            if (not isinstance(doc, dict) or doc.get("version") != SPOOL_FORMAT_VERSION
                    or doc.get("kind") not in KINDS or not isinstance(doc.get("body"), dict)):
                raise ValueError("not a spooled batch")
        except FileNotFoundError:
            return None  # replayed and removed by another flusher meanwhile
        except (OSError, ValueError) as exc:
            self.quarantine(path, f"unreadable: {type(exc).__name__}")
            return None
        return SpooledBatch(path=path, kind=doc["kind"], body=doc["body"])

    def remove(self, path: Path) -> None:
        """Delete a batch the control API acknowledged."""
        with self._lock:
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                return
            self._forget(path.parent.name, size)
        _fsync_dir(path.parent)

    def quarantine(self, path: Path, why: str) -> Path:
        """Move a batch that can never be sent aside (kept for inspection, not replayed)."""
        dest = path.parent / QUARANTINE / path.name
        with self._lock:
            try:
                size = path.stat().st_size
                os.replace(path, dest)
            except FileNotFoundError:
                return dest
            self._forget(path.parent.name, size)
        _fsync_dir(path.parent)
        log.error("spool: quarantined %s (%s)", dest, why)
        return dest

    def quarantined(self, kind: str) -> list[Path]:
        """Batches set aside as unsendable."""
        _check_kind(kind)
        return sorted((self.root / kind / QUARANTINE).glob("*.json"))

    @property
    def size_bytes(self) -> int:
        """Bytes of batches waiting on disk."""
        return self._bytes

    def _forget(self, kind: str, size: int) -> None:
        # Called with the lock held.
        if kind in self._files:
            self._files[kind] = max(0, self._files[kind] - 1)
        self._bytes = max(0, self._bytes - size)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown spool kind {kind!r}")


def _seq_of(path: Path) -> int:
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def _write_durably(path: Path, data: bytes, *, exclusive: bool = True) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # e.g. the file system went read-only: nothing more to do
        pass


def _fsync_dir(d: Path) -> None:
    # Makes the rename/unlink itself durable (the entry lives in the directory).
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
