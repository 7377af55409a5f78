"""Stored secrets: write-only values deployment specs reference as ``{secret: NAME}``.

- Values are sealed with AES-256-GCM (``cryptography``), the secret's name as associated data
  (a ciphertext copied to another row does not open). The key is derived (HKDF-SHA256) from a
  server secret that never enters the database: ``INVENTIV_SECRETS_KEY``, or the file named by
  ``INVENTIV_SECRETS_KEY_FILE``, or else one generated once into the data dir (mode 0600). Every
  control API process of one database needs the same one.
- No user route returns a value; only ``POST /api/internal/deployments/{name}/secrets`` (scope
  ``ingress``) does, for the secrets that deployment's stored spec references.
- Action-log entries name secrets, never values; errors never hold a value.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets as _random
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_api.deps import Principal
from control_api.errors import ApiError, Conflict, NotFound, Unprocessable
from control_api.schemas.deployments import keep_stored_secrets
from control_api.services.identity import log_action
from control_api.settings import Settings
from core.db import utcnow
from core.models import Deployment, User
from core.models_secrets import StoredSecret
from core.spec import DeploymentFile, DeploymentSpec

SECRET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_VALUE_BYTES = 16 * 1024
KEY_ENV = "INVENTIV_SECRETS_KEY"
KEY_FILE_ENV = "INVENTIV_SECRETS_KEY_FILE"
_HKDF_INFO = b"inventiv stored secrets v1"
_NONCE_BYTES = 12


class SecretsKeyError(ApiError):
    """The server cannot seal or open secrets (no ``cryptography``, or the key changed)."""

    status_code = 503
    code = "secrets_unavailable"


# ---------------------------------------------------------------- sealing


class SecretBox:
    """AES-256-GCM sealing bound to the secret's name. ``key_id`` fingerprints the key."""

    def __init__(self, material: bytes) -> None:
        if not material:
            raise ValueError("empty secrets key")
        try:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            from cryptography.hazmat.primitives.kdf.hkdf import HKDF
        except ImportError:  # pragma: no cover - a declared dependency
            raise SecretsKeyError("stored secrets need the 'cryptography' package") from None
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=_HKDF_INFO).derive(material)
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"key-id:" + key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"SecretBox(key_id={self.key_id})"

    def seal(self, name: str, value: str) -> bytes:
        nonce = _random.token_bytes(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, value.encode("utf-8"), name.encode())

    def open(self, name: str, ciphertext: bytes, key_id: str) -> str:
        from cryptography.exceptions import InvalidTag

        if key_id != self.key_id:
            raise SecretsKeyError(f"secret {name!r} was sealed with another server key "
                                  f"({key_id}); set {KEY_ENV} to that key or set the secret "
                                  "again")
        try:
            plain = self._aead.decrypt(ciphertext[:_NONCE_BYTES], ciphertext[_NONCE_BYTES:],
                                       name.encode())
        except InvalidTag:
            raise SecretsKeyError(f"secret {name!r} does not open (tampered with or moved "
                                  "from another name); set it again") from None
        return plain.decode("utf-8")


_BOXES: dict[bytes, SecretBox] = {}


def key_material(settings: Settings) -> bytes:
    """The server secret the secrets key derives from (see the module docstring)."""
    value = os.environ.get(KEY_ENV)
    if value:
        return value.strip().encode()
    path_s = os.environ.get(KEY_FILE_ENV)
    if path_s:
        return Path(path_s).read_bytes().strip()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / "secrets_key"
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another worker wrote it first
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(_random.token_urlsafe(48))
    return path.read_bytes().strip()


def box_for(settings: Settings) -> SecretBox:
    """The (cached) sealing box of these settings."""
    material = key_material(settings)
    box = _BOXES.get(material)
    if box is None:
        box = _BOXES[material] = SecretBox(material)
    return box


# ---------------------------------------------------------------- references in specs


@dataclass(frozen=True)
class SecretUse:
    """Where a spec names a secret: ``field`` like ``deployments[0].env.HF_TOKEN``."""

    field: str
    secret: str


def _refs_of_doc(doc: Mapping[str, Any], prefix: str) -> list[SecretUse]:
    uses: list[SecretUse] = []

    def ref(value: Any, field: str) -> None:
        if isinstance(value, Mapping) and isinstance(value.get("secret"), str):
            uses.append(SecretUse(field, value["secret"]))

    for key, value in sorted((doc.get("env") or {}).items()):
        ref(value, f"{prefix}env.{key}")
    model = doc.get("model") or {}
    ref(model.get("hf_token"), f"{prefix}model.hf_token")
    s3 = model.get("s3") or {}
    ref(s3.get("access_key_id"), f"{prefix}model.s3.access_key_id")
    ref(s3.get("secret_access_key"), f"{prefix}model.s3.secret_access_key")
    return uses


def secret_uses(spec: DeploymentSpec | Mapping[str, Any], prefix: str = "") -> list[SecretUse]:
    """Every secret reference of one deployment (a spec or its stored JSON)."""
    doc = spec.model_dump(mode="json") if isinstance(spec, DeploymentSpec) else spec
    return _refs_of_doc(doc, prefix)


def missing_secret_refs(db: Session, spec: DeploymentFile) -> list[str]:
    """One message per reference of ``spec`` to a secret that is not stored, naming the field:
    ``deployments[0].model.hf_token: unknown secret 'hf-token'``. Empty: all exist."""
    uses = [u for i, dep in enumerate(spec.deployments)
            for u in secret_uses(dep, f"deployments[{i}].")]
    if not uses:
        return []
    known = set(db.scalars(select(StoredSecret.name).where(
        StoredSecret.name.in_({u.secret for u in uses}))))
    return [f"{u.field}: unknown secret {u.secret!r} (set it with `inventiv secrets set "
            f"{u.secret}`)" for u in uses if u.secret not in known]


def require_secret_refs(db: Session, spec: DeploymentFile) -> None:
    """422 ``unknown_secret`` naming each field whose secret is not stored."""
    missing = missing_secret_refs(db, spec)
    if missing:
        raise Unprocessable("; ".join(missing), code="unknown_secret", details=missing)


def stored_specs(db: Session, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Deployment name -> its stored spec JSON (deleted ones too: a re-apply revives them)."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    rows = db.execute(select(Deployment.name, Deployment.spec)
                      .where(Deployment.name.in_(wanted))).tuples()
    return {name: spec or {} for name, spec in rows}


def spec_to_store(db: Session, spec: DeploymentFile) -> DeploymentFile:
    """The deployment file as it will be stored: ``env`` values written back as ``***`` keep
    the stored value (a literal, or a ``{secret: NAME}`` rebuilt as a reference), then every
    secret reference must name a stored secret (422 ``unknown_secret`` naming the field).
    Call it on the write path before anything is stored or fetched with the spec's secrets."""
    restored = keep_stored_secrets(spec, stored_specs(db, (d.name for d in spec.deployments)))
    require_secret_refs(db, restored)
    return restored


def _live_deployments(db: Session) -> list[Deployment]:
    return list(db.scalars(select(Deployment).where(Deployment.deleted_at.is_(None))
                           .order_by(Deployment.name)))


def secret_users(db: Session) -> dict[str, list[str]]:
    """Secret name -> the stored (not deleted) deployments referencing it, by name."""
    out: dict[str, list[str]] = {}
    for dep in _live_deployments(db):
        for name in sorted({u.secret for u in secret_uses(dep.spec or {})}):
            out.setdefault(name, []).append(dep.name)
    return out


def deployments_using(db: Session, name: str) -> list[str]:
    """Names of the stored (not deleted) deployments whose spec references secret ``name``."""
    return [d.name for d in _live_deployments(db)
            if any(u.secret == name for u in secret_uses(d.spec or {}))]


# ---------------------------------------------------------------- the store


def _check_name(name: str) -> None:
    if not SECRET_NAME.match(name):
        raise Unprocessable("secret names are 1-64 characters of a-z, 0-9, '.', '_', '-', "
                            "starting with a letter or digit", code="invalid_secret_name")


def check_value(value: str) -> None:
    """Refuse an empty or oversized value (the message never holds it)."""
    if not value:
        raise Unprocessable("value: the secret's value is empty", code="invalid_secret_value")
    if len(value.encode("utf-8")) > MAX_VALUE_BYTES:
        raise Unprocessable(f"value: longer than {MAX_VALUE_BYTES} bytes",
                            code="invalid_secret_value")
    if "\x00" in value:
        raise Unprocessable("value: holds a NUL character", code="invalid_secret_value")


def get_secret(db: Session, name: str) -> StoredSecret:
    row = db.scalar(select(StoredSecret).where(StoredSecret.name == name))
    if row is None:
        raise NotFound(f"secret {name!r} not found", code="secret_not_found")
    return row


def list_secrets(db: Session) -> list[StoredSecret]:
    return list(db.scalars(select(StoredSecret).order_by(StoredSecret.name)))


def usernames(db: Session, rows: Iterable[StoredSecret]) -> dict[uuid.UUID, str]:
    """Usernames of the creators/updaters of ``rows``."""
    ids = {i for r in rows for i in (r.created_by, r.updated_by) if i is not None}
    if not ids:
        return {}
    found = db.execute(select(User.id, User.username).where(User.id.in_(ids))).tuples()
    return {uid: username for uid, username in found}


def set_secret(db: Session, box: SecretBox, actor: Principal, *, name: str, value: str,
               description: str | None = None) -> tuple[StoredSecret, bool]:
    """Create or replace a secret; ``(row, created)``. ``description`` None keeps the old
    one on a replace."""
    _check_name(name)
    check_value(value)
    now = utcnow()
    row = db.scalar(select(StoredSecret).where(StoredSecret.name == name).with_for_update())
    created = row is None
    if row is None:
        row = StoredSecret(name=name, description=description, ciphertext=box.seal(name, value),
                           key_id=box.key_id, created_at=now, updated_at=now,
                           created_by=actor.user_id, updated_by=actor.user_id)
        db.add(row)
    else:
        row.ciphertext, row.key_id = box.seal(name, value), box.key_id
        row.updated_at, row.updated_by = now, actor.user_id
        if description is not None:
            row.description = description
    db.flush()
    log_action(db, "secret.set", user_id=actor.user_id,
               details={"secret": name, "created": created})
    return row, created


def delete_secret(db: Session, actor: Principal, name: str) -> None:
    """Delete a secret; 409 ``secret_in_use`` naming the stored deployments that reference
    it (delete or change them first)."""
    row = get_secret(db, name)
    users = deployments_using(db, name)
    if users:
        raise Conflict(f"secret {name!r} is referenced by deployment(s) {', '.join(users)}",
                       code="secret_in_use", details={"deployments": users})
    db.delete(row)
    db.flush()
    log_action(db, "secret.delete", user_id=actor.user_id, details={"secret": name})


def deployment_secret_values(db: Session, box: SecretBox, deployment: str, *,
                             caller: str) -> dict[str, str]:
    """The values of exactly the secrets the stored spec of ``deployment`` references (404
    for an unknown or deleted deployment; 409 ``missing_secret`` if one was deleted since).
    Logged as ``secret.fetch`` with the names only."""
    dep = db.scalar(select(Deployment).where(Deployment.name == deployment,
                                             Deployment.deleted_at.is_(None)))
    if dep is None:
        raise NotFound(f"deployment {deployment!r} not found", code="deployment_not_found")
    names = sorted({u.secret for u in secret_uses(dep.spec or {})})
    rows = {r.name: r for r in db.scalars(select(StoredSecret).where(
        StoredSecret.name.in_(names)))} if names else {}
    missing = [n for n in names if n not in rows]
    if missing:
        log_action(db, "secret.fetch", status="failure", error_code="missing_secret",
                   details={"deployment": deployment, "secrets": names, "caller": caller,
                            "missing": missing})
        raise Conflict(f"deployment {deployment!r} references missing secret(s) "
                       f"{', '.join(missing)}", code="missing_secret",
                       details={"missing": missing})
    values = {n: box.open(n, rows[n].ciphertext, rows[n].key_id) for n in names}
    log_action(db, "secret.fetch", details={"deployment": deployment, "secrets": names,
                                            "caller": caller})
    return values
