"""Request and response schemas of auth, users, orgs, memberships, API keys and service tokens.

Request models forbid unknown fields, so a client cannot slip ``role``, ``org_id`` or
``is_platform_admin`` into a body that does not declare them (no mass assignment).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from control_api.schemas.enums import Role

# Usernames never contain "@", so the login field can tell a username from an email.
Username = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
]
# Deliberately loose (no DNS rules): "admin@localhost" is the bootstrap default. Lower-cased.
Email = Annotated[
    str, StringConstraints(strip_whitespace=True, to_lower=True, max_length=254,
                           pattern=r"^[^@\s]{1,64}@[^@\s]{1,189}$")
]
Password = Annotated[str, StringConstraints(min_length=8, max_length=1024)]
OrgName = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
]
DisplayName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                               max_length=200)]
ShortName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Component = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
]
ModelName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
# Limits fit a 32-bit INTEGER column with room to spare.
PositiveLimit = Annotated[int, Field(strict=True, gt=0, le=1_000_000_000)]
# Budgets: exact EUR, at most 6 decimals (NUMERIC(18, 6)), never negative.
BudgetEur = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=6,
                                     allow_inf_nan=False)]


def _reject_unstorable_text(value: Any) -> None:
    # NUL bytes and lone surrogates cannot be stored (Postgres) nor hashed (UTF-8): refuse them
    # as a validation error instead of failing deep inside the database driver.
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("text may not contain NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text must be valid Unicode") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _reject_unstorable_text(k)
            _reject_unstorable_text(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _reject_unstorable_text(v)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        _reject_unstorable_text(data)
        return data


# ---------------------------------------------------------------- auth


class LoginRequest(_Request):
    username: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                               max_length=254)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class UserBrief(BaseModel):
    id: uuid.UUID
    username: str
    email: str
    is_platform_admin: bool


class LoginResponse(BaseModel):
    # repr=False: a secret must not end up in a traceback or a log line by accident.
    access_token: str = Field(repr=False)
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_at: datetime
    user: UserBrief


class MembershipOut(BaseModel):
    org_id: uuid.UUID
    org_name: str
    role: Role


class MeResponse(UserBrief):
    memberships: list[MembershipOut]


class PasswordChange(_Request):
    current_password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    new_password: Password


# ---------------------------------------------------------------- users


class UserCreate(_Request):
    username: Username
    email: Email
    password: Password
    is_platform_admin: bool = False


class UserUpdate(_Request):
    """Self may change ``email``; the other fields are for platform admins only."""

    email: Email | None = None
    is_active: bool | None = None
    password: Password | None = None
    is_platform_admin: bool | None = None


class UserOut(UserBrief):
    is_active: bool
    created_at: datetime


class UserList(BaseModel):
    items: list[UserOut]


# ---------------------------------------------------------------- orgs and members


class OrgCreate(_Request):
    name: OrgName
    display_name: DisplayName | None = None
    # The creator is not added automatically; this user (maybe the creator) becomes owner.
    owner_username: Username | None = None


class OrgUpdate(_Request):
    display_name: DisplayName | None = None


class OrgOut(BaseModel):
    id: uuid.UUID
    name: str
    display_name: str | None
    created_at: datetime


class OrgList(BaseModel):
    items: list[OrgOut]


class MemberAdd(_Request):
    username: Username | None = None
    user_id: uuid.UUID | None = None
    role: Role

    @model_validator(mode="after")
    def _one_user(self) -> MemberAdd:
        if (self.username is None) == (self.user_id is None):
            raise ValueError("give exactly one of username or user_id")
        return self


class MemberUpdate(_Request):
    role: Role


class MemberOut(BaseModel):
    user_id: uuid.UUID
    username: str
    email: str
    role: Role
    created_at: datetime


class MemberList(BaseModel):
    items: list[MemberOut]


class MemberInvited(BaseModel):
    """The answer to an org admin's ``POST /api/orgs/{id}/members``: the same whether or not
    the user exists (no username enumeration). The user joins once they accept."""

    status: str = Field(default="invited", description="Always `invited`.")
    message: str = "if this user exists and is not a member yet, they were invited; they " \
                   "join the organisation once they accept"


class InvitationOut(BaseModel):
    id: uuid.UUID
    org_id: uuid.UUID
    org_name: str
    role: Role
    created_at: datetime


class InvitationList(BaseModel):
    items: list[InvitationOut]


# ---------------------------------------------------------------- API keys


class ApiKeyCreate(_Request):
    name: ShortName
    org_id: uuid.UUID | None = None
    expires_at: AwareDatetime | None = None
    allowed_models: Annotated[list[ModelName], Field(min_length=1, max_length=100)] | None = None
    rpm_limit: PositiveLimit | None = None
    tpm_limit: PositiveLimit | None = None
    monthly_budget_eur: BudgetEur | None = None

    @field_validator("allowed_models")
    @classmethod
    def _dedupe(cls, v: list[str] | None) -> list[str] | None:
        # Keep the caller's order, drop repeats.
        return list(dict.fromkeys(v)) if v is not None else None


class ApiKeyOut(BaseModel):
    id: uuid.UUID
    prefix: str
    name: str
    org_id: uuid.UUID
    user_id: uuid.UUID | None
    created_at: datetime
    expires_at: datetime | None
    allowed_models: list[str] | None
    rpm_limit: int | None
    tpm_limit: int | None
    monthly_budget_eur: Decimal | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret; shown once, only in this response.", repr=False)


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]


# ---------------------------------------------------------------- service tokens


ServiceScope = Literal["node-provider", "ingress", "reconciler"]


class ServiceTokenCreate(_Request):
    name: ShortName
    component: Component
    # Internal routes the token may call; default: the scope its component names.
    scopes: Annotated[list[ServiceScope], Field(min_length=1, max_length=3)] | None = None


class ServiceTokenOut(BaseModel):
    id: uuid.UUID
    prefix: str
    name: str
    component: str
    scopes: list[str] | None = None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class ServiceTokenCreated(ServiceTokenOut):
    token: str = Field(description="The secret; shown once, only in this response.",
                       repr=False)


class ServiceTokenList(BaseModel):
    items: list[ServiceTokenOut]
