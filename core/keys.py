"""API keys and service tokens: their format, generation and the hash that is stored.

API key format: ``ia-<43 base62 chars: 32 random bytes>-<6 base62 chars: checksum>``. The
checksum is an HMAC-SHA256 of the body keyed by a server secret (the control API's key-checksum
secret, shared with the ingress), truncated to 6 base62 characters (~35 bits): a forged or
mistyped key is refused without a database lookup, and nobody without the secret can mint
well-formed keys. Only the key's SHA-256 is stored. Standard library only, so every ingress
replica can import it cheaply.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_PREFIX = "ia-"
SERVICE_TOKEN_PREFIX = "ist-"  # noqa: S105 - a public prefix, not a secret
_BODY_LEN = 43  # ceil(256 / log2(62))
_CHECK_LEN = 6  # 62**6 > 2**35
# What a service token may call: each internal route accepts only some of these.
SCOPE_NODE_PROVIDER = "node-provider"
SCOPE_INGRESS = "ingress"
SCOPE_RECONCILER = "reconciler"
SERVICE_SCOPES = (SCOPE_NODE_PROVIDER, SCOPE_INGRESS, SCOPE_RECONCILER)


def b62encode(data: bytes, length: int) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 62)
        out.append(BASE62[r])
    return "".join(reversed(out)).rjust(length, "0")


def _checksum(body: str, secret: bytes) -> str:
    mac = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    return b62encode(mac[:8], 12)[-_CHECK_LEN:]


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewSecret:
    secret: str
    prefix: str
    hash: str


def generate_api_key(checksum_secret: bytes = b"") -> NewSecret:
    """A new key whose checksum is keyed by ``checksum_secret`` (the control API's; the empty
    default is for tests that never check the checksum)."""
    body = b62encode(secrets.token_bytes(32), _BODY_LEN)
    key = f"{KEY_PREFIX}{body}-{_checksum(body, checksum_secret)}"
    return NewSecret(secret=key, prefix=key[: len(KEY_PREFIX) + 8], hash=sha256_hex(key))


def api_key_well_formed(key: str, checksum_secret: bytes | None = None) -> bool:
    """Format check, and the checksum when ``checksum_secret`` is given, without any lookup."""
    if not key.startswith(KEY_PREFIX) or len(key) != len(KEY_PREFIX) + _BODY_LEN + 1 + _CHECK_LEN:
        return False
    body, _, check = key[len(KEY_PREFIX) :].partition("-")
    if len(body) != _BODY_LEN or any(c not in BASE62 for c in body + check):
        return False
    if checksum_secret is None:
        return True
    return hmac.compare_digest(_checksum(body, checksum_secret), check)


def read_secret_file(path: str | None) -> bytes | None:
    """A secret kept in a file (stripped), or None when no file is named."""
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read().strip()


def generate_service_token() -> NewSecret:
    token = SERVICE_TOKEN_PREFIX + secrets.token_urlsafe(32)
    return NewSecret(secret=token, prefix=token[: len(SERVICE_TOKEN_PREFIX) + 6],
                     hash=sha256_hex(token))
