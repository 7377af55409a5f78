"""Each ingress replica's durable spools and its two control-API clients.

A replica owns one spool slot (``<spool_dir>/<slot>/``, :func:`claim_slot`) for its whole
life; its usage client spools there while the control API is down, and a restarted replica
takes over its slot's backlog. The spools of replicas that are gone (scale-down) are adopted
and replayed by a live one (:class:`SpoolAdopter`); :class:`ReplicaClients` wires it all.

A slot directory has exactly one writer: the process holding an exclusive ``flock`` on its
``.owner.lock`` for its whole life. The kernel drops the lock when the process dies (also on
SIGKILL), so "the lock can be taken" means "the owner is gone": any live replica may then
take it, replay the orphaned batches to the control API, and let it go. Replays are safe
against doubles: every usage record carries its request id and the control API counts a
record it already has as a duplicate. On one machine flock is exact. Across nodes the
spool_dir is normally each node's local disk (orphans are adopted by the replicas of the
same node; a node that disappears takes its disk with it); on a shared NFSv4 mount Linux
maps flock to NFS byte-range locks, which the server releases when the dead client's lease
expires (~90 s).

:class:`UsageHealth` is admission's check that usage can be kept: while the spool refuses
writes (full, ENOSPC, EIO, read-only) new requests are answered 503 ``metering_unavailable``
rather than served unmetered; it also moves the usage client's drop/full/error counters onto
the ingress's metrics.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from serve_apps import protocol
from serve_apps.budget_views import BudgetCache

if TYPE_CHECKING:
    from control_api.client.internal import InternalClient
    from serve_apps.metrics import IngressMetrics
    from serve_apps.options import IngressOptions

log = logging.getLogger(__name__)

# How often a replica looks for the spools of replicas that are gone.
ADOPT_INTERVAL_S = 30.0

SLOT_LOCK = ".owner.lock"


class SpoolSlot:
    """Exclusive ownership of one spool slot directory (an ``flock`` held until released)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def try_acquire(cls, path: Path) -> SpoolSlot | None:
        """Own ``path`` (created if missing), or None if a live process owns it."""
        path.mkdir(parents=True, exist_ok=True)
        lock_path = path / SLOT_LOCK
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            # The lock is on the inode we opened: it must still be the file at that path
            # (if someone replaced the file meanwhile, a third process could lock the new one).
            try:
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                # For humans looking at a spool: who owns it. Not used for the decision.
                os.ftruncate(fd, 0)
                os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
                return cls(path, fd)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the slot up (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def claim_slot(root: Path, preferred: str, attempts: int = 64) -> SpoolSlot:
    """Own ``root/preferred``, or the first free ``root/preferred-<n>`` (e.g. while the
    previous holder of the same Serve rank is still shutting down); a process-unique name
    as the last resort."""
    for n in range(attempts):
        slot = SpoolSlot.try_acquire(root / (preferred if n == 0 else f"{preferred}-{n}"))
        if slot is not None:
            return slot
    slot = SpoolSlot.try_acquire(root / f"{preferred}-pid{os.getpid()}-{secrets.token_hex(4)}")
    if slot is None:  # a fresh random name cannot be locked by anyone else
        raise RuntimeError(f"cannot own a spool slot under {root}")
    return slot


def _pending_batches(slot_dir: Path) -> list[Path]:
    """Spool directories (``<slot>/<client>``) with batch files waiting."""
    return [sub for sub in sorted(slot_dir.iterdir())
            if sub.is_dir() and any(sub.glob("*/[0-9]*.json"))]


def adopt_orphan_spools(root: Path, own: str, replay: Callable[[Path], int]) -> dict[str, int]:
    """Replay the spools of every slot under ``root`` whose owner is gone (``own`` is this
    process's slot). ``replay(spool_dir)`` sends one spool directory and returns the number of
    batches sent. Returns ``{slot: batches sent}`` for the slots adopted."""
    adopted: dict[str, int] = {}
    if not root.is_dir():
        return adopted
    for slot_dir in sorted(root.iterdir()):
        if slot_dir.name == own or not slot_dir.is_dir():
            continue
        pending = _pending_batches(slot_dir)
        if not pending:
            continue  # nothing to replay: leave the lock alone
        slot = SpoolSlot.try_acquire(slot_dir)
        if slot is None:
            continue  # its owner (or another adopter) is alive
        try:
            adopted[slot_dir.name] = sum(replay(sub) for sub in _pending_batches(slot_dir))
        except Exception:  # noqa: BLE001 - try again next round; the files stay
            log.warning("replaying orphaned spool %s failed", slot_dir, exc_info=True)
        finally:
            slot.release()
    return adopted


class SpoolAdopter:
    """A daemon thread running :func:`adopt_orphan_spools` every ``interval_s``."""

    def __init__(self, root: Path, own: str, replay: Callable[[Path], int], *,
                 interval_s: float = 30.0) -> None:
        self.root, self.own, self.replay, self.interval_s = root, own, replay, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="inventiv-spool-adopter",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                adopted = adopt_orphan_spools(self.root, self.own, self.replay)
                if adopted:
                    log.info("replayed orphaned spools: %s", adopted)
            except Exception:  # noqa: BLE001 - the adopter must survive anything
                log.exception("spool adoption failed")
            self._stop.wait(self.interval_s)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def replay_spool(control_api_url: str, token: str, spool_dir: Path) -> int:
    """Replay one orphaned spool directory; the number of batches the control API took."""
    from control_api.client.internal import InternalClient

    client = InternalClient(control_api_url, token, spool_dir=spool_dir, max_retries=1)
    try:
        return client.replay().sent_batches
    finally:
        client.close(flush=False)


def metering_unavailable(reason: str) -> protocol.OpenAIError:
    """The answer while usage cannot be kept durably (nothing is served unmetered)."""
    return protocol.OpenAIError(
        503, "Usage metering is temporarily unavailable; retry shortly.", type=protocol.SERVER,
        code="metering_unavailable", headers={"Retry-After": "5", "x-inventiv-reason": reason})


class UsageHealth:
    """Whether the usage client can keep usage now (``check``, on every admission), and its
    counters moved onto the ingress's metrics at most every ``sync_interval_s``."""

    def __init__(self, client: InternalClient, *, sync_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.sync_interval_s = sync_interval_s
        self._clock = clock
        self._synced_at = float("-inf")

    def check(self, metrics: IngressMetrics | None = None) -> None:
        """Raise the 503 ``metering_unavailable`` while the spool refuses writes."""
        failure = self.client.spool_failure
        if metrics is not None:
            self.sync(metrics, force=failure is not None)
        if failure is not None:
            if metrics is not None:
                metrics.unavailable()
            raise metering_unavailable(failure)

    def sync(self, metrics: IngressMetrics, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._synced_at < self.sync_interval_s:
            return
        self._synced_at = now
        st = self.client.stats
        metrics.client_stats(st.dropped_usage_records, st.spool_full_errors,
                             st.spool_write_errors, self.client.spool_failure,
                             self.client.buffered_usage, self.client.spool.count("usage"))


def replica_slot() -> str:
    """``rank-<n>``: the replica's rank on its node (Serve reassigns ranks to restarted
    replicas), or the process id outside Serve."""
    try:
        from ray import serve

        return f"rank-{serve.get_replica_context().rank.local_rank}"
    except Exception:  # noqa: BLE001 - not in a Serve replica (tests, scripts)
        return f"pid-{os.getpid()}"


class ReplicaClients:
    """One replica's spool slot and its two control-API clients: key checks fail fast (one
    retry, short timeout); usage waits in a buffer, then in the durable spool, and is retried
    for as long as it takes. Also runs the adopter of the spools of replicas that are gone."""

    def __init__(self, options: IngressOptions) -> None:
        from control_api.client.internal import InternalClient

        url = options.control_api_url
        token = Path(options.service_token_file).read_text(encoding="utf-8").strip()
        root = Path(options.spool_dir)
        self.slot = claim_slot(root, replica_slot())
        spool = self.slot.path
        self.verify: InternalClient = InternalClient(
            url, token, spool_dir=spool / "verify", timeout=options.verify_timeout_s,
            max_retries=1)
        self.usage: InternalClient = InternalClient(url, token, spool_dir=spool / "usage")
        self.usage.start_background_flush(options.usage_flush_interval_s)
        self.health = UsageHealth(self.usage)
        self.budgets = BudgetCache(self.verify.applicable_budgets)
        self.adopter = SpoolAdopter(root, spool.name, lambda d: replay_spool(url, token, d),
                                    interval_s=ADOPT_INTERVAL_S)
        self.adopter.start()

    def close(self) -> None:
        """Stop adopting, flush and close both clients, then give the slot up (what is still
        spooled is adopted by a live replica). Blocks: run it in a thread."""
        self.adopter.stop()
        self.usage.close()
        self.verify.close()
        self.slot.release()
