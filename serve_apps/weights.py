"""Model weights on a node: one download per node, into a cache every replica there shares.

A replica of an ``hf:`` or ``s3://`` deployment calls :func:`prepare_weights` when it starts
(through :class:`serve_apps.weights_replica.WeightsCallback`, Ray Serve LLM's node-init hook);
the engine is then given the local directory. What happens, and why:

- **The cache** (``$INVENTIV_WEIGHTS_CACHE``, default ``<ray temp dir>/inventiv-weights``) holds
  one entry per (canonical source, resolved revision): ``<slug>-<key>/files`` is the model
  directory. A branch is resolved to its commit first, so a moved branch is a new entry.
- **One download per node**: the entry's ``.lock`` is an exclusive ``fcntl.flock`` held while
  downloading; a second replica blocks on it, then finds ``complete.json`` and reuses the files
  without downloading anything. A killed downloader's lock goes with its process.
- **Resumable**: hf files resume from ``huggingface_hub``'s ``.incomplete`` files (``Range``);
  s3 objects from ``.parts/<path>.<etag>.part`` with byte-range GETs guarded by ``If-Match``.
- **Verified**: every file's size; hf LFS files against the sha256 the Hub lists, other hf files
  against their git blob sha1; s3 objects against their ETag (MD5, or the multipart MD5 of MD5s
  when the part size can be found). A mismatching file is deleted and fetched again (bounded).
- **Eviction**: before a download, least recently used complete entries (then stale partial
  ones) go until the cache fits ``$INVENTIV_WEIGHTS_CACHE_MAX_BYTES`` and the disk keeps
  ``$INVENTIV_WEIGHTS_MIN_FREE_BYTES`` free. An entry being downloaded (``.lock``) or used by a
  live replica (a shared lock on ``.inuse``, held for the replica's lifetime) is never evicted.
  A download that cannot fit the disk fails with ``disk_full`` instead of filling it.
- **Errors** are :class:`WeightsError` with stable codes (``hf_unauthorized`` 401,
  ``hf_gated`` 403, ``not_found`` 404, ``s3_unauthorized``, ``s3_forbidden``, ``network`` after
  bounded retries, ``hash_mismatch``, ``size_mismatch``, ``source_changed``, ``disk_full``,
  ``secrets_*``), reported to the control API (``POST /api/internal/weights/progress``), which
  marks the deployment failed and takes it out of Serve: no crash loop.

Messages never hold a token or a key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict

from core.spec import ModelSource, parse_source
from core.wire_weights import WeightProgress

log = logging.getLogger(__name__)

ENV_CACHE = "INVENTIV_WEIGHTS_CACHE"
ENV_MAX_BYTES = "INVENTIV_WEIGHTS_CACHE_MAX_BYTES"
ENV_MIN_FREE = "INVENTIV_WEIGHTS_MIN_FREE_BYTES"
# The cluster's Object Storage, when the deployment's `model.s3` leaves them out.
ENV_S3_ENDPOINT = "INVENTIV_S3_ENDPOINT_URL"
ENV_S3_REGION = "INVENTIV_S3_REGION"
PROGRESS_PATH = "/api/internal/weights/progress"
DEFAULT_ATTEMPTS = 3
DEFAULT_MIN_FREE_BYTES = 1 << 30
COMPLETE = "complete.json"
CHUNK = 1 << 20
# Files a serving engine never reads when safetensors are there (e.g. Llama's `original/`).
_SKIP_WITH_SAFETENSORS = re.compile(
    r"(^|/)(original|onnx|openvino|coreml|flax_model|tf_model)[/.]|"
    r"\.(bin|pt|pth|h5|msgpack|ckpt|onnx|tflite|ot|gguf)$")
_SKIP_ALWAYS = {".gitattributes"}
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


class WeightsError(Exception):
    """A download that cannot succeed now. ``code``: see the module docstring; ``retryable``:
    a network-level failure (retried in place, a bounded number of times)."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True)
class RemoteFile:
    """One file of a model as its source lists it."""

    path: str
    size: int
    sha256: str | None = None
    git_sha1: str | None = None
    etag: str | None = None


@dataclass(frozen=True)
class Manifest:
    """What a source holds at one resolved revision."""

    source: str
    revision: str
    files: tuple[RemoteFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class Fetcher(Protocol):
    """A source kind: lists a revision's files and fetches one file into a directory."""

    source: str

    def manifest(self) -> Manifest: ...

    def fetch(self, file: RemoteFile, dest: Path, manifest: Manifest, *, force: bool) -> Path:
        """Put ``file`` at ``dest/file.path`` (resuming a partial one); return that path."""

    def verify(self, path: Path, file: RemoteFile) -> str | None:
        """None if ``path`` is ``file`` as listed; else why not."""


# A progress sink: (state, bytes_done, bytes_total, revision, error code, error message).
Progress = Callable[[str, int, int, str | None, str | None, str | None], None]


def _no_progress(*_: Any) -> None:
    return None


# ---------------------------------------------------------------- verification


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file (what the Hub lists as a non-LFS file's oid)."""
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)  # noqa: S324 - git's object id
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def check_size_and_hashes(path: Path, file: RemoteFile) -> str | None:
    """Size, then the sha256 (LFS) or the git blob sha1 the source lists."""
    size = path.stat().st_size
    if size != file.size:
        return f"size_mismatch: {file.path} has {size} bytes, the source lists {file.size}"
    if file.sha256 is not None and file_digest(path, "sha256") != file.sha256:
        return f"hash_mismatch: {file.path}: sha256 differs from the source's"
    if file.sha256 is None and file.git_sha1 is not None and git_blob_sha1(path) != file.git_sha1:
        return f"hash_mismatch: {file.path}: git blob id differs from the source's"
    return None


def s3_etag_matches(path: Path, etag: str) -> bool | None:
    """Whether a file matches its S3 ETag: True/False when it can tell, None when not (a
    multipart ETag whose part size is none of the usual ones)."""
    etag = etag.strip('"')
    if "-" not in etag:
        return file_digest(path, "md5") == etag
    digest, _, count = etag.partition("-")
    if not count.isdigit() or int(count) < 1:
        return None
    parts, size = int(count), path.stat().st_size
    mib = 1 << 20
    candidates = {-(-size // parts // mib) * mib, 8 * mib, 5 * mib, 16 * mib, 64 * mib,
                  100 * mib, 128 * mib, 512 * mib}
    for part in sorted(c for c in candidates if c > 0 and -(-size // c) == parts):
        md5s = hashlib.md5()  # noqa: S324 - S3's ETag algorithm
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(part), b""):  # noqa: B023 - read now
                md5s.update(hashlib.md5(block).digest())  # noqa: S324
        if md5s.hexdigest() == digest:
            return True
    return None


# ---------------------------------------------------------------- part files


def _part_path(dest: Path, file: RemoteFile, version: str) -> Path:
    """Where a file's bytes accumulate until complete (named after its version: a changed
    file never continues another's bytes)."""
    tag = hashlib.sha256(version.encode()).hexdigest()[:12]
    part = dest / ".parts" / f"{file.path}.{tag}.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    return part


def _finish_part(part: Path, final: Path, file: RemoteFile, source: str) -> Path:
    got = part.stat().st_size if part.exists() else 0
    if got != file.size:
        raise WeightsError("network", f"{source}: {file.path}: got {got} of {file.size} bytes",
                           retryable=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, final)
    return final


def _os_error(source: str, exc: OSError) -> WeightsError:
    if exc.errno == 28:
        return WeightsError("disk_full", f"{source}: no space left on the cache's disk")
    return WeightsError("network", f"{source}: {type(exc).__name__}", retryable=True)


# ---------------------------------------------------------------- Hugging Face


def _select(files: list[RemoteFile]) -> list[RemoteFile]:
    """The files a serving engine reads: no repo metadata, no duplicate pickled or original
    checkpoints when safetensors are there."""
    kept = [f for f in files if f.path not in _SKIP_ALWAYS]
    if any(f.path.endswith(".safetensors") for f in kept):
        kept = [f for f in kept if not _SKIP_WITH_SAFETENSORS.search(f.path)]
    return kept


class HfFetcher:
    """``hf:<repo>[@revision]`` through ``huggingface_hub`` (``endpoint``: ``$HF_ENDPOINT`` or
    the Hub). The token is used in memory only."""

    def __init__(self, repo: str, revision: str | None, token: str | None,
                 endpoint: str | None = None) -> None:
        self.repo = repo
        self.revision = revision or "main"
        self._token = token
        self.endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
        self.source = f"hf:{repo}"

    def __repr__(self) -> str:  # no token in reprs
        return f"HfFetcher({self.repo!r}, {self.revision!r})"

    def _api(self) -> Any:
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self._token or False)

    def manifest(self) -> Manifest:
        from huggingface_hub.hf_api import RepoFile

        with self._errors(f"revision {self.revision!r}"):
            api = self._api()
            commit = api.model_info(self.repo, revision=self.revision).sha
            if not commit:
                raise WeightsError("not_found", f"{self.source}: no commit for revision "
                                                f"{self.revision!r}")
            entries = api.list_repo_tree(self.repo, revision=commit, recursive=True)
            files = [RemoteFile(e.path, int(e.size),
                                sha256=e.lfs.sha256 if e.lfs is not None else None,
                                git_sha1=e.blob_id)
                     for e in entries if isinstance(e, RepoFile)]
        if not files:
            raise WeightsError("not_found", f"{self.source}@{commit}: the repository is empty")
        return Manifest(self.source, commit, tuple(_select(files)))

    def fetch(self, file: RemoteFile, dest: Path, manifest: Manifest, *, force: bool) -> Path:
        """A resumable GET of the Hub's ``resolve`` URL (``huggingface_hub`` 2.x no longer
        resumes across processes): bytes go to a part file named after the file's hash, a
        later attempt (or replica) continues it with ``Range``."""
        from huggingface_hub import hf_hub_url

        part = _part_path(dest, file, file.sha256 or file.git_sha1 or "")
        if force:
            part.unlink(missing_ok=True)
        offset = part.stat().st_size if part.exists() else 0
        if offset > file.size:
            part.unlink()
            offset = 0
        if offset < file.size:
            url = hf_hub_url(self.repo, file.path, revision=manifest.revision,
                             endpoint=self.endpoint)
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            try:
                # httpx drops the Authorization header on a redirect to another host (the
                # Hub's CDN), as huggingface_hub does.
                with httpx.stream("GET", url, headers=headers, follow_redirects=True,
                                  timeout=httpx.Timeout(30.0, read=60.0)) as resp:
                    if resp.status_code >= 400:
                        raise self._http_error(resp, f"file {file.path!r}")
                    mode = "ab" if offset and resp.status_code == 206 else "wb"
                    with part.open(mode) as out:
                        for chunk in resp.iter_bytes():
                            out.write(chunk)
            except httpx.TransportError as exc:
                raise WeightsError("network", f"{self.source}: {file.path}: "
                                   f"{type(exc).__name__}", retryable=True) from None
            except OSError as exc:
                raise _os_error(self.source, exc) from None
        return _finish_part(part, dest / file.path, file, self.source)

    def _http_error(self, resp: httpx.Response, what: str) -> WeightsError:
        status, code = resp.status_code, resp.headers.get("x-error-code", "")
        if status == 401:
            return WeightsError("hf_unauthorized", f"{self.source}: a valid Hugging Face token "
                                "is needed (model.hf_token)")
        if status == 403:
            return WeightsError("hf_gated", f"{self.source}: the token has no access (request "
                                "access on the Hub)")
        if status == 404:
            return WeightsError("not_found", f"{self.source}: {what} not found"
                                + (f" ({code})" if code else ""))
        return WeightsError("network", f"{self.source}: the Hub answered HTTP {status} for "
                            f"{what}", retryable=status >= 500 or status in (408, 429))

    def verify(self, path: Path, file: RemoteFile) -> str | None:
        return check_size_and_hashes(path, file)

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """huggingface_hub's exceptions as WeightsError codes (the Hub's message dropped: it
        names URLs, never a token, but ours is clearer). Online for the call: a download
        is asked for explicitly, whatever ``HF_HUB_OFFLINE`` the node's environment had when
        huggingface_hub was imported (it reads it once, at import)."""
        from huggingface_hub import constants, errors

        offline = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = False
        try:
            yield
        except WeightsError:
            raise
        except errors.GatedRepoError as exc:
            if _status(exc) == 401:
                raise WeightsError("hf_unauthorized", f"{self.source} is gated: a Hugging Face "
                                   "token is needed (model.hf_token)") from None
            raise WeightsError("hf_gated", f"{self.source} is gated and the token given has no "
                               "access to it (request access on the Hub)") from None
        except errors.RevisionNotFoundError:
            raise WeightsError("not_found", f"{self.source}: {what} not found") from None
        except errors.RepositoryNotFoundError as exc:
            if _status(exc) == 401:
                raise WeightsError("hf_unauthorized", f"{self.source}: not found, or private "
                                   "and the token is missing or invalid") from None
            raise WeightsError("not_found", f"{self.source}: repository not found") from None
        except errors.RemoteEntryNotFoundError:
            raise WeightsError("not_found", f"{self.source}: {what} not found") from None
        except errors.HfHubHTTPError as exc:
            status = _status(exc)
            if status == 401:
                raise WeightsError("hf_unauthorized", f"{self.source}: the Hugging Face token "
                                   "is invalid") from None
            if status == 403:
                raise WeightsError("hf_gated", f"{self.source}: access refused") from None
            raise WeightsError("network", f"{self.source}: the Hub answered HTTP {status} for "
                               f"{what}", retryable=True) from None
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None and exc.errno == 28:
                raise WeightsError("disk_full", f"{self.source}: no space left") from None
            raise WeightsError("network", f"{self.source}: {what}: "
                               f"{type(exc).__name__}", retryable=True) from None
        except Exception as exc:  # noqa: BLE001 - the HTTP library's transport errors
            raise WeightsError("network", f"{self.source}: {what}: {type(exc).__name__}",
                               retryable=True) from None
        finally:
            constants.HF_HUB_OFFLINE = offline


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


# ---------------------------------------------------------------- S3 (Scaleway Object Storage)


@dataclass
class S3Access:
    """Where and how to reach Object Storage. Keys are kept out of ``repr``."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)


_S3_CODES = {
    "NoSuchBucket": "not_found", "NoSuchKey": "not_found", "404": "not_found",
    "AccessDenied": "s3_forbidden", "AllAccessDisabled": "s3_forbidden", "403": "s3_forbidden",
    "InvalidAccessKeyId": "s3_unauthorized", "SignatureDoesNotMatch": "s3_unauthorized",
    "ExpiredToken": "s3_unauthorized", "InvalidToken": "s3_unauthorized",
    "PreconditionFailed": "source_changed", "412": "source_changed",
}


class S3Fetcher:
    """``s3://bucket/prefix`` through boto3: every object under the prefix is a model file."""

    def __init__(self, bucket: str, prefix: str, access: S3Access) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.access = access
        self.source = f"s3://{bucket}/{self.prefix}"
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3", endpoint_url=self.access.endpoint_url or os.environ.get(ENV_S3_ENDPOINT),
                region_name=self.access.region or os.environ.get(ENV_S3_REGION),
                aws_access_key_id=self.access.access_key_id,
                aws_secret_access_key=self.access.secret_access_key,
                config=Config(retries={"max_attempts": 3, "mode": "standard"},
                              connect_timeout=10, read_timeout=60))
        return self._client

    def manifest(self) -> Manifest:
        files: list[RemoteFile] = []
        root = self.prefix + "/"
        with self._errors("listing"):
            for page in self.client().get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=root):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(root):]
                    if not rel or rel.endswith("/") or ".." in rel.split("/"):
                        continue
                    files.append(RemoteFile(rel, int(obj["Size"]),
                                            etag=str(obj.get("ETag", "")).strip('"') or None))
        if not files:
            raise WeightsError("not_found", f"{self.source}: no objects under the prefix")
        listing = "\n".join(f"{f.path}\0{f.size}\0{f.etag}" for f in sorted(
            files, key=lambda f: f.path))
        revision = "etags-" + hashlib.sha256(listing.encode()).hexdigest()[:32]
        return Manifest(self.source, revision, tuple(_select(files)))

    def fetch(self, file: RemoteFile, dest: Path, manifest: Manifest, *, force: bool) -> Path:
        part = _part_path(dest, file, file.etag or "")
        if force:
            part.unlink(missing_ok=True)
        offset = part.stat().st_size if part.exists() else 0
        if offset > file.size:
            part.unlink()
            offset = 0
        with self._errors(f"object {file.path!r}"):
            if offset < file.size:
                args: dict[str, Any] = {"Bucket": self.bucket,
                                        "Key": f"{self.prefix}/{file.path}"}
                if file.etag:
                    args["IfMatch"] = f'"{file.etag}"'
                if offset:
                    args["Range"] = f"bytes={offset}-"
                answer = self.client().get_object(**args)
                ranged = answer.get("ResponseMetadata", {}).get("HTTPStatusCode") == 206
                # A server that ignores the range sends the whole object: start over.
                with part.open("ab" if offset and ranged else "wb") as out:
                    for chunk in answer["Body"].iter_chunks(CHUNK):
                        out.write(chunk)
        return _finish_part(part, dest / file.path, file, self.source)

    def verify(self, path: Path, file: RemoteFile) -> str | None:
        size = path.stat().st_size
        if size != file.size:
            return f"size_mismatch: {file.path} has {size} bytes, the source lists {file.size}"
        if file.etag and s3_etag_matches(path, file.etag) is False:
            return f"hash_mismatch: {file.path}: MD5 differs from the object's ETag"
        return None

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from botocore import exceptions as bexc

        try:
            yield
        except WeightsError:
            raise
        except bexc.NoCredentialsError:
            raise WeightsError("s3_unauthorized", f"{self.source}: no S3 credentials "
                               "(model.s3.access_key_id / secret_access_key)") from None
        except bexc.ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            mapped = _S3_CODES.get(code) or _S3_CODES.get(str(status))
            if mapped is not None:
                raise WeightsError(mapped, f"{self.source}: {what}: {code or status}") from None
            raise WeightsError("network", f"{self.source}: {what}: S3 error "
                               f"{code or status}", retryable=True) from None
        except (bexc.BotoCoreError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno == 28:
                raise WeightsError("disk_full", f"{self.source}: no space left") from None
            raise WeightsError("network", f"{self.source}: {what}: {type(exc).__name__}",
                               retryable=True) from None


# ---------------------------------------------------------------- locks


@contextlib.contextmanager
def _flock(path: Path, *, shared: bool = False, blocking: bool = True) -> Iterator[bool]:
    """Hold an flock on ``path`` (yields False if ``blocking`` is off and it is taken). The
    lock file is re-checked after locking: an evicted entry's file may be gone meanwhile."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (
                0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                yield False
                return
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                path.parent.mkdir(parents=True, exist_ok=True)
                continue  # locked a deleted file: lock the current one
            yield True
            return
        finally:
            os.close(fd)


# Leases: a shared lock on each used entry's `.inuse`, held for the process lifetime.
_LEASES: dict[str, IO[bytes]] = {}
_LEASE_LOCK = threading.Lock()


def _take_lease(entry: Path) -> None:
    with _LEASE_LOCK:
        if str(entry) in _LEASES:
            return
        fh = (entry / ".inuse").open("a+b")
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        _LEASES[str(entry)] = fh


def release_leases() -> None:
    """Drop this process's leases (tests; a replica keeps them until it exits)."""
    with _LEASE_LOCK:
        for fh in _LEASES.values():
            fh.close()
        _LEASES.clear()


# ---------------------------------------------------------------- the cache


def default_cache_root() -> Path:
    """``$INVENTIV_WEIGHTS_CACHE``, else ``inventiv-weights`` in Ray's temp root (per node,
    outside any one Ray session, so a restarted cluster keeps its weights)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    from core.ray_private import node_temp_dir

    temp = node_temp_dir()
    root = Path(temp or os.environ.get("RAY_TMPDIR") or
                Path(tempfile.gettempdir()) / "ray")
    return root / "inventiv-weights"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def _dir_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return total


@dataclass
class CacheEntry:
    path: Path

    @property
    def files(self) -> Path:
        return self.path / "files"

    @property
    def marker(self) -> Path:
        return self.path / COMPLETE

    def complete_record(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def size(self) -> int:
        record = self.complete_record()
        if record is not None and isinstance(record.get("bytes"), int):
            return int(record["bytes"])
        return _dir_bytes(self.path)

    def last_used(self) -> float:
        target = self.marker if self.marker.exists() else self.path
        try:
            return target.stat().st_mtime
        except OSError:
            return 0.0


class WeightsCache:
    """The node's cache (see the module docstring). ``max_bytes``: a bound on the complete
    entries (None: the disk is the bound); ``min_free_bytes``: what a download must leave free
    on the disk."""

    def __init__(self, root: Path | str, *, max_bytes: int | None = None,
                 min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
                 attempts: int = DEFAULT_ATTEMPTS, backoff_s: float = 1.0,
                 progress_interval_s: float = 2.0) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.progress_interval_s = progress_interval_s

    @classmethod
    def from_env(cls, **kwargs: Any) -> WeightsCache:
        free = _env_int(ENV_MIN_FREE)
        return cls(default_cache_root(), max_bytes=_env_int(ENV_MAX_BYTES),
                   min_free_bytes=DEFAULT_MIN_FREE_BYTES if free is None else free, **kwargs)

    def entry(self, manifest: Manifest) -> CacheEntry:
        key = hashlib.sha256(f"{manifest.source}@{manifest.revision}".encode()).hexdigest()[:16]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "--", manifest.source)[:60].strip("-.")
        return CacheEntry(self.root / f"{slug}-{key}")

    def entries(self) -> list[CacheEntry]:
        if not self.root.is_dir():
            return []
        return [CacheEntry(p) for p in sorted(self.root.iterdir())
                if p.is_dir() and not p.name.startswith(".")]

    # ------------------------------------------------------------ ensure

    def ensure(self, fetcher: Fetcher, progress: Progress = _no_progress) -> Path:
        """The local model directory of ``fetcher``'s source: reused if complete, else
        downloaded (once per node: concurrent callers wait for the first). Raises
        :class:`WeightsError` (already reported to ``progress`` as ``failed``)."""
        manifest: Manifest | None = None
        try:
            manifest = self._retry(fetcher.manifest)
            return self._ensure(fetcher, manifest, progress)
        except WeightsError as exc:
            total = manifest.total_bytes if manifest is not None else 0
            progress("failed", 0, total, manifest.revision if manifest else None,
                     exc.code, exc.message)
            raise

    def _ensure(self, fetcher: Fetcher, manifest: Manifest, progress: Progress) -> Path:
        entry = self.entry(manifest)
        entry.path.mkdir(parents=True, exist_ok=True)
        total, revision = manifest.total_bytes, manifest.revision
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(entry, total, revision, progress,
                                                             stop), daemon=True,
                                   name="weights-progress")
        progress("downloading", 0, total, revision, None, None)
        watcher.start()
        try:
            with _flock(entry.path / ".lock"):
                entry.path.mkdir(parents=True, exist_ok=True)
                record = entry.complete_record()
                if record is None or record.get("revision") != revision:
                    self._download(fetcher, manifest, entry, progress)
                _take_lease(entry.path)
                os.utime(entry.marker)  # last use, for the LRU rule
        finally:
            stop.set()
            watcher.join(timeout=5)
        progress("ready", total, total, revision, None, None)
        return entry.files

    def _download(self, fetcher: Fetcher, manifest: Manifest, entry: CacheEntry,
                  progress: Progress) -> None:
        entry.files.mkdir(parents=True, exist_ok=True)
        present = _dir_bytes(entry.files)
        self.make_room(max(0, manifest.total_bytes - present), keep=entry.path)
        for file in manifest.files:
            self._fetch_one(fetcher, manifest, entry, file)
        progress("verifying", manifest.total_bytes, manifest.total_bytes, manifest.revision,
                 None, None)
        record = {"source": manifest.source, "revision": manifest.revision,
                  "bytes": manifest.total_bytes, "completed_at": time.time(),
                  "files": [asdict(f) for f in manifest.files]}
        tmp = entry.path / f".{COMPLETE}.tmp"
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, entry.marker)

    def _fetch_one(self, fetcher: Fetcher, manifest: Manifest, entry: CacheEntry,
                   file: RemoteFile) -> None:
        target = entry.files / file.path
        if target.is_file() and fetcher.verify(target, file) is None:
            return  # a crashed run's finished file
        force = target.exists()
        for attempt in range(self.attempts):
            try:
                path = fetcher.fetch(file, entry.files, manifest, force=force)
            except WeightsError as exc:
                if not exc.retryable or attempt + 1 >= self.attempts:
                    raise
                log.warning("weights: %s (attempt %d/%d), retrying", exc, attempt + 1,
                            self.attempts)
                time.sleep(self.backoff_s * (2 ** attempt))
                continue
            problem = fetcher.verify(path, file)
            if problem is None:
                return
            log.warning("weights: %s (attempt %d/%d)", problem, attempt + 1, self.attempts)
            path.unlink(missing_ok=True)
            force = True
            if attempt + 1 >= self.attempts:
                code, _, message = problem.partition(": ")
                raise WeightsError(code, f"{manifest.source}@{manifest.revision}: {message}")
        raise WeightsError("network", f"{manifest.source}: {file.path}: no attempt left")

    def _retry(self, call: Callable[[], Manifest]) -> Manifest:
        for attempt in range(self.attempts):
            try:
                return call()
            except WeightsError as exc:
                if not exc.retryable or attempt + 1 >= self.attempts:
                    raise
                time.sleep(self.backoff_s * (2 ** attempt))
        raise AssertionError("unreachable")

    def _watch(self, entry: CacheEntry, total: int, revision: str, progress: Progress,
               stop: threading.Event) -> None:
        """Reports the bytes on disk (the downloader's or, while waiting, another's)."""
        while not stop.wait(self.progress_interval_s):
            with contextlib.suppress(Exception):
                done = min(total, _dir_bytes(entry.files)) if entry.files.exists() else 0
                progress("downloading", done, total, revision, None, None)

    # ------------------------------------------------------------ eviction

    def make_room(self, needed: int, *, keep: Path | None = None) -> list[Path]:
        """Evict least recently used entries (complete ones first, then partial ones) until
        ``needed`` more bytes fit under ``max_bytes`` and leave ``min_free_bytes`` on the
        disk. Entries being downloaded or in use are skipped. Raises ``disk_full`` when the
        disk cannot take ``needed`` bytes even so; the soft ``max_bytes`` bound only warns."""
        self.root.mkdir(parents=True, exist_ok=True)
        evicted: list[Path] = []
        with _flock(self.root / ".evict.lock"):
            others = [e for e in self.entries() if keep is None or e.path != keep]
            sizes = {e.path: e.size() for e in others}
            used = sum(sizes.values())
            free = shutil.disk_usage(self.root).free - self.min_free_bytes
            order = sorted(others, key=lambda e: (e.complete_record() is None, e.last_used()))

            def fits() -> bool:
                return needed <= free and (self.max_bytes is None
                                           or used + needed <= self.max_bytes)

            for entry in order:
                if fits():
                    break
                if self._evict(entry):
                    evicted.append(entry.path)
                    used -= sizes[entry.path]
                    free += sizes[entry.path]
            if needed > free:
                raise WeightsError("disk_full", f"{needed} bytes needed in {self.root}, "
                                   f"{max(0, free)} available (entries in use are kept)")
            if self.max_bytes is not None and used + needed > self.max_bytes:
                log.warning("weights cache %s: %d bytes over its %d-byte bound (entries in "
                            "use are kept)", self.root, used + needed - self.max_bytes,
                            self.max_bytes)
        return evicted

    def _evict(self, entry: CacheEntry) -> bool:
        with _flock(entry.path / ".lock", blocking=False) as locked:
            if not locked:
                return False
            with _flock(entry.path / ".inuse", blocking=False) as unused:
                if not unused:
                    return False
                trash = self.root / f".trash-{entry.path.name}-{os.getpid()}-{time.time_ns()}"
                os.replace(entry.path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        log.info("weights cache: evicted %s", entry.path.name)
        return True


# ---------------------------------------------------------------- the replica's side


class S3Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id_secret: str | None = None
    secret_access_key_secret: str | None = None


class WeightsPlan(BaseModel):
    """What a replica prepares when it starts (built by :mod:`serve_apps.builder`; secret
    NAMES only, never values: this is part of the Serve config)."""

    model_config = ConfigDict(extra="forbid")

    deployment: str
    source: str
    control_api_url: str | None = None
    service_token_file: str | None = None
    hf_token_secret: str | None = None
    s3: S3Plan | None = None
    env_secrets: dict[str, str] = {}
    attempts: int = DEFAULT_ATTEMPTS

    def secret_names(self) -> set[str]:
        names = set(self.env_secrets.values())
        if self.hf_token_secret:
            names.add(self.hf_token_secret)
        if self.s3 is not None:
            names.update(n for n in (self.s3.access_key_id_secret,
                                     self.s3.secret_access_key_secret) if n)
        return names


def node_id() -> str:
    """The Ray node id (the control API shows progress per node), else the host name."""
    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            return str(ray.get_runtime_context().get_node_id())
    return socket.gethostname()


class ControlApiProgress:
    """Posts progress to ``POST /api/internal/weights/progress`` (scope ingress). Best effort:
    a report that fails is logged, never fails the download; ``downloading`` reports are
    throttled; final ones are retried a few times."""

    def __init__(self, control_api_url: str, service_token_file: str, deployment: str,
                 source: str, *, node: str | None = None, min_interval_s: float = 1.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = control_api_url.rstrip("/") + PROGRESS_PATH
        self.token_file = service_token_file
        self.deployment = deployment
        self.source = source
        self.node = node or node_id()
        self.min_interval_s = min_interval_s
        self._transport = transport
        self._last = 0.0
        self._lock = threading.Lock()
        self.sent: list[dict[str, Any]] = []

    def __call__(self, state: str, done: int, total: int, revision: str | None,
                 code: str | None, message: str | None) -> None:
        final = state in ("ready", "failed")
        with self._lock:
            now = time.monotonic()
            if not final and state == "downloading" and now - self._last < self.min_interval_s:
                return
            self._last = now
            body = WeightProgress.model_validate({
                "deployment": self.deployment, "node_id": self.node, "source": self.source,
                "revision": revision, "state": state, "bytes_done": min(done, total) if total
                else done, "bytes_total": total,
                "error": None if code is None else {"code": code[:64],
                                                    "message": (message or code)[:2000]},
            }).model_dump(mode="json")
            self._post(body, attempts=3 if final else 1)

    def _post(self, body: dict[str, Any], *, attempts: int) -> None:
        try:
            token = Path(self.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            log.warning("weights progress not reported: token file: %s", exc.strerror)
            return
        for attempt in range(attempts):
            try:
                with httpx.Client(timeout=5.0, transport=self._transport) as http:
                    resp = http.post(self.url, json=body,
                                     headers={"Authorization": f"Bearer {token}"})
                if resp.is_success:
                    self.sent.append(body)
                    return
                if resp.status_code < 500:
                    log.warning("weights progress refused: HTTP %d", resp.status_code)
                    return
            except httpx.HTTPError as exc:
                log.warning("weights progress not reported: %s", type(exc).__name__)
            if attempt + 1 < attempts:
                time.sleep(0.5 * (attempt + 1))


def make_fetcher(source: ModelSource, plan: WeightsPlan, values: Mapping[str, str]
                 ) -> Fetcher | None:
    """The fetcher of a downloadable source (None: local or builtin)."""
    if source.kind == "hf":
        assert source.repo is not None
        token = values.get(plan.hf_token_secret) if plan.hf_token_secret else None
        return HfFetcher(source.repo, source.revision, token)
    if source.kind == "s3":
        assert source.bucket is not None and source.prefix is not None
        s3 = plan.s3 or S3Plan()
        return S3Fetcher(source.bucket, source.prefix, S3Access(
            endpoint_url=s3.endpoint_url, region=s3.region,
            access_key_id=values.get(s3.access_key_id_secret or "") or None,
            secret_access_key=values.get(s3.secret_access_key_secret or "") or None))
    return None


def prepare_weights(plan: WeightsPlan, cache: WeightsCache | None = None) -> Path | None:
    """The replica's start: fetch its secrets (env refs go into ``os.environ``, inherited by
    the engine's processes), then the weights of a downloadable source (the local directory;
    None for local/builtin sources). Failures are reported to the control API and raised as
    :class:`WeightsError`."""
    source = parse_source(plan.source)
    progress: Progress = _no_progress
    if plan.control_api_url and plan.service_token_file:
        progress = ControlApiProgress(plan.control_api_url, plan.service_token_file,
                                      plan.deployment, source.canonical())
    values = _secrets(plan, progress)
    from serve_apps.secrets import resolve_env

    os.environ.update(resolve_env({k: {"secret": v} for k, v in plan.env_secrets.items()},
                                  values))
    fetcher = make_fetcher(source, plan, values)
    if fetcher is None:
        return None
    cache = cache or WeightsCache.from_env(attempts=plan.attempts)
    path = cache.ensure(fetcher, progress)
    # The engine reads a local directory now: it must not reach any hub.
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return path


def _secrets(plan: WeightsPlan, progress: Progress) -> dict[str, str]:
    from serve_apps.secrets import SecretsUnavailable, fetch_deployment_secrets

    names = plan.secret_names()
    if not names:
        return {}
    try:
        if not (plan.control_api_url and plan.service_token_file):
            raise SecretsUnavailable("not_configured", "no control API to fetch secrets from")
        values = fetch_deployment_secrets(plan.control_api_url, plan.service_token_file,
                                          plan.deployment)
        missing = sorted(names - set(values))
        if missing:
            raise SecretsUnavailable("missing_secret", f"secret(s) {missing} not stored")
    except SecretsUnavailable as exc:
        error = WeightsError(f"secrets_{exc.code}"[:64], exc.message)
        progress("failed", 0, 0, None, error.code, error.message)
        raise error from None
    return values


__all__ = ["WeightsError", "WeightsCache", "WeightsPlan", "HfFetcher", "S3Fetcher", "S3Access",
           "prepare_weights", "Manifest", "RemoteFile"]
