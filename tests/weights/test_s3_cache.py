"""The node's weights cache against a real S3 API server (moto's, standing in for Scaleway
Object Storage): listing, ETag verification (single and multipart), resume of a partial object
with byte ranges, a changed object, missing buckets and prefixes."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serve_apps.weights import (
    S3Access,
    S3Fetcher,
    WeightsCache,
    WeightsError,
    file_digest,
    release_leases,
    s3_etag_matches,
)
from tests.conftest import MotoS3
from tests.weights.replicas import concurrently

BUCKET = "models"
PREFIX = "tiny/v1"
MODEL = "model.safetensors"
FILES = {MODEL: os.urandom(700_000), "config.json": b'{"model_type": "llama"}\n',
         "sub/extra.json": b"{}\n"}
KEY_ID, SECRET = "SCWTESTKEYID", "test-secret-key-value"


@pytest.fixture(scope="module")
def s3_url(moto_s3: MotoS3) -> str:
    moto_s3.bucket(BUCKET)
    moto_s3.put(BUCKET, PREFIX, FILES)
    return moto_s3.url


@pytest.fixture(autouse=True)
def _leases() -> Iterator[None]:
    yield
    release_leases()


def fetcher(url: str, prefix: str = PREFIX, bucket: str = BUCKET) -> tuple[S3Fetcher,
                                                                         list[dict[str, Any]]]:
    """A fetcher, and the GetObject calls it makes (recorded from botocore's own events)."""
    f = S3Fetcher(bucket, prefix, S3Access(endpoint_url=url, region="fr-par",
                                           access_key_id=KEY_ID, secret_access_key=SECRET))
    calls: list[dict[str, Any]] = []
    f.client().meta.events.register(
        "provide-client-params.s3.GetObject", lambda params, **_: calls.append(dict(params)))
    return f, calls


def cache(root: Path, **kw: Any) -> WeightsCache:
    return WeightsCache(root, min_free_bytes=0, backoff_s=0.01, progress_interval_s=0.05, **kw)


def test_downloads_an_s3_prefix_verified_and_reuses_it(s3_url: str, tmp_path: Path) -> None:
    f, calls = fetcher(s3_url)
    path = cache(tmp_path).ensure(f)
    for name, data in FILES.items():
        assert (path / name).read_bytes() == data
    assert len(calls) == len(FILES)
    assert all(c.get("IfMatch") for c in calls)  # never mixes two versions of an object
    assert "secret" not in repr(f.access) and SECRET not in repr(f.access)
    # The next replica on the node: nothing fetched.
    f2, calls2 = fetcher(s3_url)
    assert cache(tmp_path).ensure(f2) == path
    assert calls2 == []


def test_two_concurrent_replicas_fetch_each_object_once(s3_url: str, tmp_path: Path) -> None:
    def replica() -> list[dict[str, Any]]:
        f, calls = fetcher(s3_url)
        cache(tmp_path).ensure(f)
        return calls

    calls = [c for mine in concurrently(replica) for c in mine]
    assert sorted(c["Key"] for c in calls) == sorted(f"{PREFIX}/{n}" for n in FILES)


def _partial(root: Path, f: S3Fetcher, keep: bytes) -> None:
    """What a downloader killed mid-object leaves: a part file of the first bytes."""
    manifest = f.manifest()
    entry = cache(root).entry(manifest)
    rf = next(x for x in manifest.files if x.path == MODEL)
    tag = hashlib.sha256((rf.etag or "").encode()).hexdigest()[:12]
    part = entry.files / ".parts" / f"{MODEL}.{tag}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(keep)


def test_a_partial_object_is_resumed_with_a_byte_range(s3_url: str, tmp_path: Path) -> None:
    f, calls = fetcher(s3_url)
    _partial(tmp_path, f, FILES[MODEL][:300_000])
    path = cache(tmp_path).ensure(f)
    assert (path / MODEL).read_bytes() == FILES[MODEL]
    [model_call] = [c for c in calls if c["Key"].endswith(MODEL)]
    assert model_call["Range"] == "bytes=300000-"


def test_a_corrupted_partial_is_rejected_and_fetched_again(s3_url: str, tmp_path: Path) -> None:
    f, calls = fetcher(s3_url)
    _partial(tmp_path, f, b"\0" * 300_000)  # not the object's bytes: the MD5 tells
    path = cache(tmp_path).ensure(f)
    assert (path / MODEL).read_bytes() == FILES[MODEL]
    assert [c.get("Range") for c in calls if c["Key"].endswith(MODEL)] == [
        "bytes=300000-", None]


def test_multipart_etags_are_verified(s3_url: str, moto_s3: MotoS3, tmp_path: Path) -> None:
    from boto3.s3.transfer import TransferConfig

    data = os.urandom(11 * 1024 * 1024)
    client = moto_s3.client()
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    client.upload_file(str(src), BUCKET, "multi/v1/model.safetensors", Config=TransferConfig(
        multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024))
    etag = client.head_object(Bucket=BUCKET, Key="multi/v1/model.safetensors")["ETag"]
    assert etag.strip('"').endswith("-3")
    assert s3_etag_matches(src, etag) is True
    bad = tmp_path / "bad.bin"
    bad.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert s3_etag_matches(bad, etag) is None  # a multipart mismatch cannot be told apart
    f, _ = fetcher(s3_url, prefix="multi/v1")
    path = cache(tmp_path / "c").ensure(f)
    assert file_digest(path / MODEL, "sha256") == hashlib.sha256(data).hexdigest()


def test_an_object_changed_during_the_download_is_refused(s3_url: str, moto_s3: MotoS3,
                                                          tmp_path: Path) -> None:
    client = moto_s3.client()
    client.put_object(Bucket=BUCKET, Key="moving/v1/config.json", Body=b"{}")
    f, _ = fetcher(s3_url, prefix="moving/v1")
    manifest = f.manifest()
    client.put_object(Bucket=BUCKET, Key="moving/v1/config.json", Body=b'{"new": 1}')
    (tmp_path / "d").mkdir()
    with pytest.raises(WeightsError) as err:
        f.fetch(manifest.files[0], tmp_path / "d", manifest, force=False)
    assert err.value.code == "source_changed"


@pytest.mark.parametrize(("bucket", "prefix"), [("no-such-bucket", PREFIX),
                                                (BUCKET, "no/such/prefix")])
def test_a_missing_bucket_or_prefix_is_not_found(s3_url: str, tmp_path: Path, bucket: str,
                                                 prefix: str) -> None:
    events: list[tuple[Any, ...]] = []
    f, _ = fetcher(s3_url, prefix=prefix, bucket=bucket)
    with pytest.raises(WeightsError) as err:
        cache(tmp_path).ensure(f, lambda *e: events.append(e))
    assert err.value.code == "not_found"
    assert events[-1][0] == "failed" and events[-1][4] == "not_found"
    assert SECRET not in err.value.message and KEY_ID not in err.value.message


def test_an_unreachable_endpoint_is_a_network_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    f = S3Fetcher(BUCKET, PREFIX, S3Access(endpoint_url=f"http://127.0.0.1:{port}",
                                           region="fr-par", access_key_id=KEY_ID,
                                           secret_access_key=SECRET))
    with pytest.raises(WeightsError) as err:
        cache(tmp_path, attempts=2).ensure(f)
    assert err.value.code == "network"
