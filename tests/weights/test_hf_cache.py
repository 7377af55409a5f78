"""The node's weights cache against the fake Hugging Face Hub (a real HTTP server speaking the
Hub's download API): one download for concurrent replicas, resume after a killed downloader,
corrupted files rejected, 401/403/404 mapped to clear codes, eviction."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serve_apps.weights import (
    HfFetcher,
    WeightsCache,
    WeightsError,
    file_digest,
    release_leases,
)
from tests.weights.fake_hub import FakeHub
from tests.weights.replicas import concurrently

REPO = Path(__file__).resolve().parents[2]
MODEL = "model.safetensors"
MODEL_BYTES = 600_000


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    (root / MODEL).write_bytes(os.urandom(MODEL_BYTES))
    (root / "config.json").write_text('{"model_type": "llama"}\n')
    (root / "tokenizer.json").write_text('{"version": "1.0"}\n')
    (root / "original").mkdir()
    (root / "original" / "consolidated.00.pth").write_bytes(b"x" * 1000)
    (root / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    return root


@pytest.fixture()
def hub(repo_dir: Path) -> Iterator[FakeHub]:
    with FakeHub(repos={"org/tiny": {"files_dir": repo_dir},
                        "org/gated": {"files_dir": repo_dir, "gated": True,
                                      "tokens": {"hf_good"}}}) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _leases() -> Iterator[None]:
    yield
    release_leases()


def cache(root: Path, **kw: Any) -> WeightsCache:
    kw.setdefault("min_free_bytes", 0)
    return WeightsCache(root, backoff_s=0.01, progress_interval_s=0.05, **kw)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()

    def __call__(self, *event: Any) -> None:
        with self.lock:
            self.events.append(event)

    def states(self) -> list[str]:
        return [e[0] for e in self.events]


def test_downloads_verifies_and_reuses(hub: FakeHub, tmp_path: Path, repo_dir: Path) -> None:
    rec = Recorder()
    path = cache(tmp_path).ensure(HfFetcher("org/tiny", None, None, hub.url), rec)
    assert sorted(p.name for p in path.iterdir() if not p.name.startswith(".")) == [
        "config.json", MODEL, "tokenizer.json"]  # no original/ checkpoint, no .gitattributes
    assert file_digest(path / MODEL, "sha256") == hub.file_sha256("org/tiny", MODEL)
    assert rec.states()[0] == "downloading" and rec.states()[-1] == "ready"
    assert rec.events[-1][1:4] == (rec.events[-1][2], rec.events[-1][2], hub.commit("org/tiny"))
    assert "verifying" in rec.states()
    # A second replica on the node: nothing downloaded again.
    again = cache(tmp_path).ensure(HfFetcher("org/tiny", "main", None, hub.url))
    assert again == path
    assert hub.gets[("org/tiny", MODEL)] == 1
    assert hub.gets[("org/tiny", "original/consolidated.00.pth")] == 0


def test_two_concurrent_replicas_download_once(hub: FakeHub, tmp_path: Path) -> None:
    # The first downloader stalls mid-file: the second must be waiting on the lock by then.
    hub.drop_after[MODEL] = 200_000  # one retry, resumed with Range
    results = concurrently(
        lambda: cache(tmp_path).ensure(HfFetcher("org/tiny", None, None, hub.url)))
    assert len(results) == 2 and results[0] == results[1]
    # One file download (its resumed second half aside), whatever the replicas' order.
    ranged = [r for p, r in hub.ranges if p == MODEL]
    assert len(ranged) == 2 and ranged[0] is None
    assert ranged[1] is not None and int(ranged[1].removeprefix("bytes=").rstrip("-")) > 0
    assert hub.gets[("org/tiny", "config.json")] == 1


STALLED_DOWNLOADER = """
import sys
sys.path.insert(0, {repo!r})
from serve_apps.weights import HfFetcher, WeightsCache
WeightsCache({root!r}, min_free_bytes=0).ensure(HfFetcher("org/tiny", None, None, {url!r}))
"""


def test_a_killed_downloader_is_resumed_by_the_next_replica(hub: FakeHub, tmp_path: Path
                                                            ) -> None:
    hub.stall_after[MODEL] = 250_000
    root = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", STALLED_DOWNLOADER.format(
        repo=str(REPO), root=str(root), url=hub.url)],
        env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    try:
        deadline = time.monotonic() + 60
        while True:
            partial = [p for p in root.rglob("*.part") if p.stat().st_size >= 200_000]
            if partial:
                break
            assert proc.poll() is None, "the downloader ended before it stalled"
            assert time.monotonic() < deadline, "no partial file"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait(10)
    kept = partial[0].stat().st_size
    path = cache(root).ensure(HfFetcher("org/tiny", None, None, hub.url))
    assert file_digest(path / MODEL, "sha256") == hub.file_sha256("org/tiny", MODEL)
    assert [r for p, r in hub.ranges if p == MODEL] == [None, f"bytes={kept}-"]


def test_a_corrupted_file_is_rejected(hub: FakeHub, tmp_path: Path) -> None:
    hub.corrupt.add(MODEL)
    rec = Recorder()
    with pytest.raises(WeightsError) as err:
        cache(tmp_path, attempts=2).ensure(HfFetcher("org/tiny", None, None, hub.url), rec)
    assert err.value.code == "hash_mismatch"
    assert hub.gets[("org/tiny", MODEL)] == 2  # fetched again once, then given up
    assert rec.events[-1][0] == "failed" and rec.events[-1][4] == "hash_mismatch"
    assert not list(tmp_path.rglob(MODEL)), "a corrupted file must not stay in the cache"
    # Once the source serves the right bytes, the next replica succeeds.
    hub.corrupt.clear()
    path = cache(tmp_path).ensure(HfFetcher("org/tiny", None, None, hub.url))
    assert file_digest(path / MODEL, "sha256") == hub.file_sha256("org/tiny", MODEL)


@pytest.mark.parametrize(("repo", "token", "revision", "code"), [
    ("org/gated", None, None, "hf_unauthorized"),
    ("org/gated", "hf_wrong", None, "hf_gated"),
    ("org/missing", None, None, "not_found"),
    ("org/tiny", None, "no-such-branch", "not_found"),
])
def test_hub_refusals_map_to_clear_codes(hub: FakeHub, tmp_path: Path, repo: str,
                                         token: str | None, revision: str | None,
                                         code: str) -> None:
    rec = Recorder()
    with pytest.raises(WeightsError) as err:
        cache(tmp_path).ensure(HfFetcher(repo, revision, token, hub.url), rec)
    assert err.value.code == code
    assert rec.events == [("failed", 0, 0, None, code, err.value.message)]
    if token:
        assert token not in err.value.message
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_a_gated_repo_downloads_with_a_good_token(hub: FakeHub, tmp_path: Path) -> None:
    path = cache(tmp_path).ensure(HfFetcher("org/gated", None, "hf_good", hub.url))
    assert (path / MODEL).stat().st_size == MODEL_BYTES
    assert {t for _, _, t in hub.requests} == {"hf_good"}


def test_an_unreachable_hub_is_a_network_error_after_bounded_retries(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(WeightsError) as err:
        cache(tmp_path, attempts=2).ensure(
            HfFetcher("org/tiny", None, None, f"http://127.0.0.1:{port}"))
    assert err.value.code == "network"


def test_eviction_is_lru_and_spares_entries_in_use(hub: FakeHub, tmp_path: Path,
                                                   repo_dir: Path) -> None:
    hub.repos["org/tiny"].branches.update({"b1": "1" * 40, "b2": "2" * 40})
    size = sum(p.stat().st_size for p in repo_dir.rglob("*") if p.is_file()) + 10_000
    root = tmp_path / "cache"
    small = cache(root, max_bytes=2 * size)

    def load(rev: str) -> Path:
        return small.ensure(HfFetcher("org/tiny", rev, None, hub.url))

    first = load("main")
    release_leases()  # that replica ended
    second = load("b1")  # in use from here on (this process holds its lease)
    os.utime(first.parent / "complete.json", (time.time() - 100, time.time() - 100))
    third = load("b2")  # over the bound: the least recently used unused entry goes
    assert not first.parent.exists()
    assert second.exists() and third.exists()
    # Everything left is in use: over the (soft) bound, but never evicted.
    fourth = load("main")
    assert second.exists() and third.exists() and fourth.exists()


def test_a_download_that_cannot_fit_the_disk_fails_cleanly(hub: FakeHub, tmp_path: Path
                                                           ) -> None:
    import shutil

    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(WeightsError) as err:
        cache(tmp_path, min_free_bytes=free).ensure(HfFetcher("org/tiny", None, None, hub.url))
    assert err.value.code == "disk_full"
    assert hub.gets[("org/tiny", MODEL)] == 0
