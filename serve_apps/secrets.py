"""The replica's side of stored secrets: fetch the values its deployment references, write them
as 0600 files, resolve ``{secret: NAME}`` env entries.

The values come from ``POST /api/internal/deployments/{name}/secrets`` (service-token scope
``ingress``: the LLM replicas use the ingress's token file), which answers exactly the secrets the
stored spec of that deployment references. Nothing here logs a value or puts one in an error
message or a ``repr``; the Serve config never holds them (the replica fetches them when it
starts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import httpx

log = logging.getLogger(__name__)

SECRETS_PATH = "/api/internal/deployments/{name}/secrets"
# Same shape as core.spec.SecretName: also what makes a name safe as a file name.
_SECRET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_ATTEMPTS = 3


class SecretsUnavailable(Exception):
    """The replica could not get its secrets. ``code`` is stable: ``invalid_service_token``
    (401), ``insufficient_scope`` (403), ``not_found`` (404: unknown deployment),
    ``unavailable`` (network error, timeout, 5xx), ``bad_answer`` (not the expected JSON), or
    the control API's own ``error.code`` for any other refusal. ``message`` never holds a
    value or the token."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


_STATUS_CODES = {401: "invalid_service_token", 403: "insufficient_scope", 404: "not_found"}


def fetch_deployment_secrets(control_api_url: str, service_token_file: str,
                             deployment: str, *, timeout: float = DEFAULT_TIMEOUT_S,
                             attempts: int = DEFAULT_ATTEMPTS,
                             transport: httpx.BaseTransport | None = None) -> dict[str, str]:
    """All secret values the stored spec of ``deployment`` references (env refs,
    ``model.hf_token``, ``model.s3`` keys), keyed by secret name. Raises
    :class:`SecretsUnavailable` on 401/403/404/network errors, with a clear message and no
    value in it. Network errors and 5xx are retried ``attempts`` times in all (the call is a
    read)."""
    try:
        token = Path(service_token_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretsUnavailable(
            "invalid_service_token",
            f"cannot read the service token file {service_token_file}: "
            f"{exc.strerror or type(exc).__name__}") from None
    if not token:
        raise SecretsUnavailable("invalid_service_token",
                                 f"the service token file {service_token_file} is empty")
    base = control_api_url.rstrip("/")
    url = base + SECRETS_PATH.format(name=quote(deployment, safe=""))
    where = f"{base} (deployment {deployment!r})"
    reason = "no attempt"
    with httpx.Client(timeout=timeout, transport=transport,
                      headers={"Authorization": f"Bearer {token}"}) as http:
        for _ in range(max(1, attempts)):
            try:
                resp = http.post(url)
            except httpx.TransportError as exc:
                reason = type(exc).__name__
                continue
            if resp.status_code >= 500:
                reason = f"HTTP {resp.status_code}"
                continue
            if not resp.is_success:
                raise _refusal(resp, where)
            return _values(resp, where)
    raise SecretsUnavailable("unavailable",
                             f"the control API at {where} did not answer: {reason}")


def _refusal(resp: httpx.Response, where: str) -> SecretsUnavailable:
    code = _STATUS_CODES.get(resp.status_code, f"http_{resp.status_code}")
    message = resp.reason_phrase or "request refused"
    try:
        err = resp.json().get("error")
        if isinstance(err, dict):
            if resp.status_code not in _STATUS_CODES:
                code = str(err.get("code") or code)
            message = str(err.get("message") or message)
    except (ValueError, AttributeError):
        pass
    return SecretsUnavailable(code, f"{where}: HTTP {resp.status_code}: {message}")


def _values(resp: httpx.Response, where: str) -> dict[str, str]:
    try:
        values = resp.json().get("values")
    except (ValueError, AttributeError):
        values = None
    if not isinstance(values, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
        raise SecretsUnavailable("bad_answer", f"{where}: the answer has no 'values' object "
                                               "of strings")
    return dict(values)


def write_secret_file(directory: str | Path, name: str, value: str) -> Path:
    """Atomically writes ``value`` to ``directory/name`` with mode 0600 (``directory`` created
    0700, and tightened to 0700 if it exists). Returns the path. ``name`` must be a secret name
    (no path separators)."""
    if not _SECRET_NAME.match(name):
        raise ValueError(f"not a secret name: {name!r}")
    root = Path(directory)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    path = root / name
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(value)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def resolve_env(env: Mapping[str, str | Mapping[str, str]],
                values: Mapping[str, str]) -> dict[str, str]:
    """``env`` of the spec (as dumped: ``SecretRef`` -> ``{"secret": name}``) with refs replaced
    by ``values``. Raises :class:`SecretsUnavailable` (``missing_secret``) naming the variable
    and the secret when a referenced value is absent."""
    out: dict[str, str] = {}
    for key, item in env.items():
        if isinstance(item, str):
            out[key] = item
            continue
        name = item.get("secret") if isinstance(item, Mapping) else None
        if not isinstance(name, str):
            raise SecretsUnavailable("bad_env", f"env {key}: neither a string nor "
                                                "{secret: NAME}")
        if name not in values:
            raise SecretsUnavailable("missing_secret",
                                     f"env {key}: secret {name!r} was not fetched")
        out[key] = values[name]
    return out
