"""Replicas of one node starting at once, as threads: what the weights cache's lock is for."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def concurrently(replica: Callable[[], T], n: int = 2, timeout_s: float = 60) -> list[T]:
    """Run ``replica`` in ``n`` threads at once; their results (in finishing order). The first
    exception a replica raised is raised here, and so is one still running after ``timeout_s``."""
    results: list[T] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            result = replica()
        except BaseException as exc:  # noqa: BLE001 - raised below, in the test's thread
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run, name=f"replica-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    if errors:
        raise errors[0]
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"still running after {timeout_s} s: {stuck}"
    return results
