"""API keys and service tokens: their format, generation and the hash that is stored.

API key format: ``ia-<43 base62 chars: 32 random bytes>-<6 base62 chars: CRC32 of the body>``.
The checksum lets the ingress reject a mistyped key without a database lookup; only the key's
SHA-256 is stored. Standard library only, so every ingress replica can import it cheaply.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib
from dataclasses import dataclass

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_PREFIX = "ia-"
SERVICE_TOKEN_PREFIX = "ist-"  # noqa: S105 - a public prefix, not a secret
_BODY_LEN = 43  # ceil(256 / log2(62))
_CHECK_LEN = 6  # 62**6 > 2**32


def b62encode(data: bytes, length: int) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 62)
        out.append(BASE62[r])
    return "".join(reversed(out)).rjust(length, "0")


def _checksum(body: str) -> str:
    return b62encode(zlib.crc32(body.encode()).to_bytes(4, "big"), _CHECK_LEN)


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewSecret:
    secret: str
    prefix: str
    hash: str


def generate_api_key() -> NewSecret:
    body = b62encode(secrets.token_bytes(32), _BODY_LEN)
    key = f"{KEY_PREFIX}{body}-{_checksum(body)}"
    return NewSecret(secret=key, prefix=key[: len(KEY_PREFIX) + 8], hash=sha256_hex(key))


def api_key_well_formed(key: str) -> bool:
    """Format and checksum check, without any lookup."""
    if not key.startswith(KEY_PREFIX) or len(key) != len(KEY_PREFIX) + _BODY_LEN + 1 + _CHECK_LEN:
        return False
    body, _, check = key[len(KEY_PREFIX) :].partition("-")
    if len(body) != _BODY_LEN or any(c not in BASE62 for c in body + check):
        return False
    return hmac.compare_digest(_checksum(body), check)


def generate_service_token() -> NewSecret:
    token = SERVICE_TOKEN_PREFIX + secrets.token_urlsafe(32)
    return NewSecret(secret=token, prefix=token[: len(SERVICE_TOKEN_PREFIX) + 6],
                     hash=sha256_hex(token))
