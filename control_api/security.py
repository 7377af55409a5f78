"""Passwords (argon2id) and session JWTs (HS256 pinned).

The API-key and service-token format lives in :mod:`core.keys` (the ingress checks it without
importing argon2 or JWT).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from control_api.errors import ControlPlaneError
from core.db import utcnow

JWT_ALGORITHM = "HS256"


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


# ---------------------------------------------------------------- session JWTs


class TokenError(ControlPlaneError):
    """A session JWT that does not verify (bad signature, expired, wrong claims); the auth
    dependency answers it as 401."""

    code = "invalid_token"


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
