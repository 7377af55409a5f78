"""Passwords (argon2id), session JWTs (HS256 pinned), API keys and service tokens.

API key format: ``ia-<43 base62 chars: 32 random bytes>-<6 base62 chars: CRC32 of the body>``.
The checksum lets the ingress reject a mistyped key without a database lookup; only the key's
SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from control_api.db import utcnow

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_PREFIX = "ia-"
SERVICE_TOKEN_PREFIX = "ist-"  # noqa: S105 - a public prefix, not a secret
JWT_ALGORITHM = "HS256"
_BODY_LEN = 43  # ceil(256 / log2(62))
_CHECK_LEN = 6  # 62**6 > 2**32


# ---------------------------------------------------------------- passwords


class Passwords:
    """argon2id hashing with rehash-on-login when the parameters change."""

    def __init__(self, time_cost: int = 2, memory_cost: int = 19456, parallelism: int = 1) -> None:
        self._ph = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism
        )
        # Verified against when the account does not exist, so timing does not reveal it.
        self._dummy = self._ph.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return self._ph.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._ph.verify(password_hash or self._dummy, password) and bool(password_hash)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return self._ph.check_needs_rehash(password_hash)


# ---------------------------------------------------------------- base62 + checksums


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


# ---------------------------------------------------------------- session JWTs


class TokenError(Exception):
    pass


@dataclass(frozen=True)
class TokenClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    expires_at: datetime


class JwtCodec:
    """HS256 only: the algorithm is pinned, so ``alg: none`` or RS/HS confusion is refused."""

    def __init__(self, secret: str, issuer: str, audience: str) -> None:
        if len(secret) < 32:
            raise ValueError("JWT secret must be at least 32 characters")
        self._secret = secret
        self.issuer = issuer
        self.audience = audience

    def encode(self, user_id: uuid.UUID, session_id: uuid.UUID, ttl: timedelta,
               now: datetime | None = None) -> tuple[str, datetime]:
        now = now or utcnow()
        exp = now + ttl
        payload: dict[str, Any] = {
            "sub": str(user_id), "sid": str(session_id), "iss": self.issuer,
            "aud": self.audience, "iat": int(now.timestamp()), "exp": int(exp.timestamp()),
        }
        return jwt.encode(payload, self._secret, algorithm=JWT_ALGORITHM), exp

    def decode(self, token: str) -> TokenClaims:
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=[JWT_ALGORITHM], audience=self.audience,
                issuer=self.issuer, options={"require": ["exp", "iat", "sub", "sid", "iss", "aud"]},
            )
            return TokenClaims(
                user_id=uuid.UUID(claims["sub"]), session_id=uuid.UUID(claims["sid"]),
                expires_at=datetime.fromtimestamp(claims["exp"]).astimezone(),
            )
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
            raise TokenError(str(exc)) from exc
