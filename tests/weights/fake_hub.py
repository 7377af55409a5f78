"""A local fake of the Hugging Face Hub's download API, a real HTTP server for ``HF_ENDPOINT``.

Interface (stable; H3 uses it for revision resolution and config.json fetches)::

    with FakeHub(repos={"org/tiny": {"files_dir": path,        # the repo's files
                                     "gated": False,          # gated: a token from `tokens`
                                     "tokens": {"hf_good"},   # tokens with access
                                     "branches": {"main": sha}}}) as hub:
        hub.url            # http://127.0.0.1:<port>, give it as HF_ENDPOINT / endpoint=
        hub.commit("org/tiny")            # the commit of `main`
        hub.gets[("org/tiny", "model.safetensors")]   # GETs of a file's content (a Counter)
        hub.drop_after["model.safetensors"] = 4096    # next GET of it: connection dropped
                                                      # after 4096 bytes (one-shot)
        hub.corrupt.add("model.safetensors")          # serve flipped bytes (same size/hash
                                                      # advertised): a checksum mismatch
        hub.stall_after["model.safetensors"] = 4096   # next GET of it: 4096 bytes, then the
                                                      # body hangs until stop() (one-shot): a
                                                      # client killed mid-file
        hub.ranges                     # [(path, Range header or None)] of every content GET

``branches`` defaults to ``{"main": <sha1 of the files' hashes>}``; a revision may be a branch
name or one of the commits. Every repo has one commit per branch, all with the same files.

Endpoints, as huggingface_hub 2.x calls them:

- ``GET /api/models/{org}/{name}`` and ``/api/models/{org}/{name}/revision/{rev}``: model info
  (``id``, ``sha``, ``siblings``, ``gated``, ``private``);
- ``GET /api/models/{org}/{name}/tree/{rev}``: the file list (``path``, ``size``, ``oid`` = the
  git blob sha1, ``lfs: {oid: sha256, size, pointerSize}`` for LFS files);
- ``HEAD``/``GET /{org}/{name}/resolve/{rev}/{path}``: the file, with ``X-Repo-Commit``,
  ``ETag`` (sha256 for LFS files, the blob sha1 otherwise), ``X-Linked-Size``/``X-Linked-Etag``
  for LFS files, ``Accept-Ranges`` and ``Range`` (206).

Errors as the Hub answers them (``X-Error-Code``, which huggingface_hub maps to its
exceptions): a gated repo without a token -> 401 ``GatedRepo``; with a token not in ``tokens``
-> 403 ``GatedRepo``; an unknown repo -> 404 ``RepoNotFound``; an unknown revision -> 404
``RevisionNotFound``; a missing file -> 404 ``EntryNotFound``. A token is always checked if
the repo is gated; any token (or none) reads a public repo.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

# Files stored by Git LFS on the real Hub (their ETag is their sha256).
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".onnx")
CHUNK = 4096


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's content (what the Hub lists as a non-LFS file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's id


class _File:
    def __init__(self, path: str, data: bytes) -> None:
        self.path = path
        self.data = data
        self.lfs = path.endswith(LFS_SUFFIXES)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.blob = git_blob_sha1(data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob

    def tree_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "path": self.path, "size": len(self.data),
                                 "oid": self.blob}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": 134}
        return entry


class _Repo:
    def __init__(self, repo_id: str, conf: dict[str, Any]) -> None:
        root = Path(conf["files_dir"])
        self.id = repo_id
        self.files = {p.relative_to(root).as_posix(): _File(p.relative_to(root).as_posix(),
                                                             p.read_bytes())
                      for p in sorted(root.rglob("*")) if p.is_file()}
        self.gated = bool(conf.get("gated", False))
        self.tokens = set(conf.get("tokens") or ())
        default = hashlib.sha1("".join(f.path + f.sha256 for f in self.files.values())  # noqa: S324
                               .encode()).hexdigest()
        self.branches: dict[str, str] = dict(conf.get("branches") or {"main": default})

    def commit_of(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.branches.values() else None


class _Lookup(NamedTuple):
    """What a request names: the repo, and the revision it asked for with its commit."""

    repo_id: str
    repo: _Repo
    revision: str
    commit: str


def _error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status,
                        headers={"X-Error-Code": code, "X-Error-Message": message})


class FakeHub:
    """The fake Hub in a uvicorn thread on 127.0.0.1 (a free port); a context manager."""

    def __init__(self, repos: dict[str, dict[str, Any]]) -> None:
        self.repos = {repo_id: _Repo(repo_id, conf) for repo_id, conf in repos.items()}
        self.gets: Counter[tuple[str, str]] = Counter()
        self.heads: Counter[tuple[str, str]] = Counter()
        self.drop_after: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.stall_after: dict[str, int] = {}
        self.ranges: list[tuple[str, str | None]] = []
        self._stopping = threading.Event()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, auth token)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> FakeHub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app(), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        daemon=True, name="fake-hub")
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake hub did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()

    def commit(self, repo_id: str, branch: str = "main") -> str:
        return self.repos[repo_id].branches[branch]

    def file_sha256(self, repo_id: str, path: str) -> str:
        return self.repos[repo_id].files[path].sha256

    # ------------------------------------------------------------------ the app

    def _lookup(self, request: Request) -> _Lookup | Response:
        """The repo and commit a request names (the request recorded, the token checked as the
        Hub does), or the Hub's refusal."""
        auth = request.headers.get("authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        with self._lock:
            self.requests.append((request.method, request.url.path, token))
        repo_id = f"{request.path_params['org']}/{request.path_params['name']}"
        repo = self.repos.get(repo_id)
        if repo is None:
            return _error(404, "RepoNotFound", f"Repository {repo_id} not found")
        if repo.gated:
            if token is None:
                return _error(401, "GatedRepo",
                              f"Access to model {repo_id} is restricted. You must have "
                              "access to it and be authenticated to access it.")
            if token not in repo.tokens:
                return _error(403, "GatedRepo",
                              f"Access to model {repo_id} is restricted and you are not "
                              "in the authorized list.")
        revision = request.path_params.get("rev", "main")
        commit = repo.commit_of(revision)
        if commit is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return _Lookup(repo_id, repo, revision, commit)

    def app(self) -> Starlette:
        hub = self

        async def info(request: Request) -> Response:
            found = hub._lookup(request)
            if isinstance(found, Response):
                return found
            repo_id, repo = found.repo_id, found.repo
            return JSONResponse({
                "id": repo_id, "modelId": repo_id, "sha": found.commit, "private": False,
                "gated": "manual" if repo.gated else False, "disabled": False,
                "siblings": [{"rfilename": p} for p in repo.files],
                "tags": [], "downloads": 0, "likes": 0,
            })

        async def tree(request: Request) -> Response:
            found = hub._lookup(request)
            if isinstance(found, Response):
                return found
            prefix = request.path_params.get("path", "").strip("/")
            entries = [f.tree_entry() for p, f in found.repo.files.items()
                       if not prefix or p.startswith(prefix + "/")]
            return JSONResponse(entries)

        async def resolve(request: Request) -> Response:
            found = hub._lookup(request)
            if isinstance(found, Response):
                return found
            repo_id, path = found.repo_id, request.path_params["path"]
            file = found.repo.files.get(path)
            if file is None:
                return _error(404, "EntryNotFound", f"{path} does not exist at {found.revision}")
            headers = {"X-Repo-Commit": found.commit, "ETag": f'"{file.etag}"',
                       "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            if file.lfs:
                headers["X-Linked-Size"] = str(len(file.data))
                headers["X-Linked-Etag"] = f'"{file.sha256}"'
            if request.method == "HEAD":
                with hub._lock:
                    hub.heads[(repo_id, path)] += 1
                headers["Content-Length"] = str(len(file.data))
                return Response(b"", headers=headers)
            with hub._lock:
                hub.gets[(repo_id, path)] += 1
                drop = hub.drop_after.pop(path, None)
                stall = hub.stall_after.pop(path, None)
                hub.ranges.append((path, request.headers.get("range")))
                corrupt = path in hub.corrupt
            data = file.data
            if corrupt:
                data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
            start, status = 0, 200
            rng = request.headers.get("range")
            if rng and rng.startswith("bytes="):
                first, _, last = rng[len("bytes="):].partition("-")
                start = int(first or 0)
                end = int(last) + 1 if last else len(data)
                if start >= len(data):
                    return Response(b"", status_code=416,
                                    headers={"Content-Range": f"bytes */{len(data)}"})
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
                data, status = data[start:end], 206
            headers["Content-Length"] = str(len(data))

            async def body() -> AsyncIterator[bytes]:
                sent = 0
                for i in range(0, len(data), CHUNK):
                    chunk = data[i:i + CHUNK]
                    if drop is not None and sent + len(chunk) > drop:
                        yield chunk[:max(0, drop - sent)]
                        # A dropped connection: the body ends short of Content-Length.
                        raise ConnectionResetError("fake hub: connection dropped mid-file")
                    if stall is not None and sent + len(chunk) > stall:
                        yield chunk[:max(0, stall - sent)]
                        # The client gets no more bytes (it is killed meanwhile).
                        while not hub._stopping.is_set():
                            await asyncio.sleep(0.05)
                        return
                    sent += len(chunk)
                    yield chunk

            return StreamingResponse(body(), status_code=status, headers=headers)

        return Starlette(routes=[
            Route("/api/models/{org}/{name}", info),
            Route("/api/models/{org}/{name}/revision/{rev}", info),
            Route("/api/models/{org}/{name}/tree/{rev}", tree),
            Route("/api/models/{org}/{name}/tree/{rev}/{path:path}", tree),
            Route("/{org}/{name}/resolve/{rev}/{path:path}", resolve, methods=["GET", "HEAD"]),
        ])
