"""A typed HTTP client for the control API's user-facing REST routes (what the CLI uses).

Every failure is a :class:`ControlApiError` carrying the HTTP status and the stable ``error.code``
the API answered (``{"error": {"code", "message"}}``); a server that cannot be reached is a
:class:`ControlApiUnreachable` naming the URL. Answers are parsed with the server's own response
models (:mod:`control_api.schemas`), which ignore unknown fields, so a newer server never breaks
an older client.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx

from control_api.client.errors import ControlApiError, ControlApiUnreachable
from control_api.schemas.action_logs import ActionLogList, ActionLogOut
from control_api.schemas.catalog import (
    InstanceTypeList,
    InstanceTypeOut,
    PriceOut,
    ProviderList,
    ProviderOut,
    ZoneList,
    ZoneOut,
)
from control_api.schemas.identity import (
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyOut,
    InvitationList,
    InvitationOut,
    LoginResponse,
    MemberInvited,
    MemberList,
    MemberOut,
    MembershipOut,
    MeResponse,
    OrgList,
    OrgOut,
    ServiceTokenCreated,
    ServiceTokenList,
    ServiceTokenOut,
    UserList,
    UserOut,
)
from control_api.schemas.instances import InstanceDetail, InstanceList, InstanceOut

DEFAULT_URL = "http://127.0.0.1:8080"

# The names this client gave two of those models before it used the server's.
LoginResult = LoginResponse
ActionLogPage = ActionLogList


def _error_from_response(response: httpx.Response) -> ControlApiError:
    code = f"http_{response.status_code}"
    message = response.reason_phrase or "request failed"
    details = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = str(err.get("code") or code)
        message = str(err.get("message") or message)
        details = err.get("details")
    elif isinstance(body, dict) and isinstance(body.get("detail"), str):
        message = body["detail"]
    return ControlApiError(response.status_code, code, message, details=details,
                           retry_after=response.headers.get("retry-after"))


def _query(params: Mapping[str, Any]) -> dict[str, Any]:
    """Query parameters without the unset ones; datetimes and UUIDs as strings."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, uuid.UUID | Decimal):
            value = str(value)
        out[key] = value
    return out


def _body(**fields: Any) -> dict[str, Any]:
    """A JSON body with the unset (``None``) fields left out, so server defaults apply."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, uuid.UUID | Decimal):
            value = str(value)
        out[key] = value
    return out


def is_uuid(value: str) -> bool:
    """Whether ``value`` parses as a UUID (so it is an id rather than a name)."""
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- the client


class ControlApiClient:
    """Synchronous client of the control API, authenticated by a bearer token."""

    def __init__(self, base_url: str = DEFAULT_URL, token: str | None = None,
                 timeout: float = 10, *, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport,
                                  headers={"Accept": "application/json",
                                           "User-Agent": "inventiv-cli"})

    def __enter__(self) -> ControlApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- transport

    def request(self, method: str, path: str, *, json: Any = None,
                params: Mapping[str, Any] | None = None) -> Any:
        """Send one request; the decoded JSON body (``None`` for 204) or a ControlApiError."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            response = self._http.request(method, path, json=json,
                                          params=_query(params or {}), headers=headers)
        except httpx.TransportError as exc:
            raise ControlApiUnreachable(self.base_url, _reason(exc)) from None
        if response.status_code >= 400:
            raise _error_from_response(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ControlApiError(response.status_code, "invalid_response",
                                  f"{method} {path}: the server did not answer JSON") from None

    def _get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def _post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    # -- auth

    def login(self, username: str, password: str) -> LoginResponse:
        """Log in; the client keeps the returned bearer token for its next calls."""
        result = LoginResponse.model_validate(
            self._post("/api/auth/login", {"username": username, "password": password}))
        self.token = result.access_token
        return result

    def logout(self) -> None:
        """Revoke the current session."""
        self._post("/api/auth/logout")

    def me(self) -> MeResponse:
        return MeResponse.model_validate(self._get("/api/auth/me"))

    def change_password(self, current_password: str, new_password: str) -> None:
        self._post("/api/auth/password", {"current_password": current_password,
                                          "new_password": new_password})

    # -- users

    def list_users(self) -> list[UserOut]:
        return UserList.model_validate(self._get("/api/users")).items

    def create_user(self, username: str, email: str, password: str,
                    is_platform_admin: bool = False) -> UserOut:
        return UserOut.model_validate(self._post("/api/users", {
            "username": username, "email": email, "password": password,
            "is_platform_admin": is_platform_admin}))

    def get_user(self, user_id: uuid.UUID | str) -> UserOut:
        return UserOut.model_validate(self._get(f"/api/users/{user_id}"))

    def update_user(self, user_id: uuid.UUID | str, *, email: str | None = None,
                    is_active: bool | None = None, password: str | None = None,
                    is_platform_admin: bool | None = None) -> UserOut:
        body = _body(email=email, is_active=is_active, password=password,
                     is_platform_admin=is_platform_admin)
        return UserOut.model_validate(self.request("PATCH", f"/api/users/{user_id}", json=body))

    def delete_user(self, user_id: uuid.UUID | str) -> None:
        self.request("DELETE", f"/api/users/{user_id}")

    def find_user(self, ref: str) -> UserOut:
        """A user by id, or by username/email among the users the caller may list."""
        if is_uuid(ref):
            return self.get_user(ref)
        for user in self.list_users():
            if ref in (user.username, user.email):
                return user
        raise ControlApiError(404, "not_found", f"user {ref!r} not found")

    # -- orgs and members

    def list_orgs(self) -> list[OrgOut]:
        return OrgList.model_validate(self._get("/api/orgs")).items

    def create_org(self, name: str, display_name: str | None = None,
                   owner_username: str | None = None) -> OrgOut:
        return OrgOut.model_validate(self._post("/api/orgs", _body(
            name=name, display_name=display_name, owner_username=owner_username)))

    def get_org(self, org_id: uuid.UUID | str) -> OrgOut:
        return OrgOut.model_validate(self._get(f"/api/orgs/{org_id}"))

    def update_org(self, org_id: uuid.UUID | str, *, display_name: str | None = None) -> OrgOut:
        return OrgOut.model_validate(self.request("PATCH", f"/api/orgs/{org_id}",
                                                  json=_body(display_name=display_name)))

    def delete_org(self, org_id: uuid.UUID | str) -> None:
        self.request("DELETE", f"/api/orgs/{org_id}")

    def find_org(self, ref: str) -> OrgOut:
        """An org by id or by name among the caller's orgs (all of them for a platform admin)."""
        if is_uuid(ref):
            return self.get_org(ref)
        for org in self.list_orgs():
            if org.name == ref:
                return org
        raise ControlApiError(404, "not_found", f"organisation {ref!r} not found")

    def list_members(self, org_id: uuid.UUID | str) -> list[MemberOut]:
        return MemberList.model_validate(self._get(f"/api/orgs/{org_id}/members")).items

    def add_member(self, org_id: uuid.UUID | str, role: str, *, username: str | None = None,
                   user_id: uuid.UUID | str | None = None) -> MemberOut | MemberInvited:
        """A platform admin adds directly (``MemberOut``); an org admin invites
        (``MemberInvited``: the user joins once they accept)."""
        data = self._post(f"/api/orgs/{org_id}/members", _body(
            username=username, user_id=user_id, role=role))
        if isinstance(data, dict) and data.get("status") == "invited":
            return MemberInvited.model_validate(data)
        return MemberOut.model_validate(data)

    def list_invitations(self) -> list[InvitationOut]:
        """The caller's pending invitations."""
        return InvitationList.model_validate(self._get("/api/auth/invitations")).items

    def accept_invitation(self, invitation_id: uuid.UUID | str) -> MembershipOut:
        return MembershipOut.model_validate(
            self._post(f"/api/auth/invitations/{invitation_id}/accept"))

    def decline_invitation(self, invitation_id: uuid.UUID | str) -> None:
        self._post(f"/api/auth/invitations/{invitation_id}/decline")

    def set_member_role(self, org_id: uuid.UUID | str, user_id: uuid.UUID | str,
                        role: str) -> MemberOut:
        return MemberOut.model_validate(self.request(
            "PATCH", f"/api/orgs/{org_id}/members/{user_id}", json={"role": role}))

    def remove_member(self, org_id: uuid.UUID | str, user_id: uuid.UUID | str) -> None:
        self.request("DELETE", f"/api/orgs/{org_id}/members/{user_id}")

    def find_member(self, org_id: uuid.UUID | str, ref: str) -> MemberOut:
        """A member of the org by user id or username."""
        for member in self.list_members(org_id):
            if ref in (str(member.user_id), member.username):
                return member
        raise ControlApiError(404, "not_found", f"{ref!r} is not a member of this organisation")

    # -- API keys

    def list_api_keys(self, org_id: uuid.UUID | str | None = None) -> list[ApiKeyOut]:
        return ApiKeyList.model_validate(self._get("/api/api-keys", org_id=org_id)).items

    def create_api_key(self, name: str, *, org_id: uuid.UUID | str | None = None,
                       expires_at: datetime | None = None,
                       allowed_models: list[str] | None = None, rpm_limit: int | None = None,
                       tpm_limit: int | None = None,
                       monthly_budget_eur: Decimal | None = None) -> ApiKeyCreated:
        """Create a key; the secret (``key``) is in this answer only."""
        return ApiKeyCreated.model_validate(self._post("/api/api-keys", _body(
            name=name, org_id=org_id, expires_at=expires_at, allowed_models=allowed_models,
            rpm_limit=rpm_limit, tpm_limit=tpm_limit, monthly_budget_eur=monthly_budget_eur)))

    def get_api_key(self, key_id: uuid.UUID | str) -> ApiKeyOut:
        return ApiKeyOut.model_validate(self._get(f"/api/api-keys/{key_id}"))

    def revoke_api_key(self, key_id: uuid.UUID | str) -> ApiKeyOut:
        return ApiKeyOut.model_validate(self._post(f"/api/api-keys/{key_id}/revoke"))

    # -- service tokens

    def list_service_tokens(self) -> list[ServiceTokenOut]:
        return ServiceTokenList.model_validate(self._get("/api/service-tokens")).items

    def create_service_token(self, name: str, component: str,
                             scopes: list[str] | None = None) -> ServiceTokenCreated:
        """Create a token; ``scopes`` default to the one ``component`` names."""
        return ServiceTokenCreated.model_validate(self._post("/api/service-tokens", _body(
            name=name, component=component, scopes=scopes)))

    def revoke_service_token(self, token_id: uuid.UUID | str) -> ServiceTokenOut:
        return ServiceTokenOut.model_validate(
            self._post(f"/api/service-tokens/{token_id}/revoke"))

    # -- catalog

    def list_providers(self) -> list[ProviderOut]:
        return ProviderList.model_validate(self._get("/api/catalog/providers")).items

    def list_zones(self) -> list[ZoneOut]:
        return ZoneList.model_validate(self._get("/api/catalog/zones")).items

    def list_instance_types(self, *, provider: str | None = None, zone: str | None = None,
                            gpu_model: str | None = None) -> list[InstanceTypeOut]:
        data = self._get("/api/catalog/instance-types", provider=provider, zone=zone,
                         gpu_model=gpu_model)
        return InstanceTypeList.model_validate(data).items

    def set_instance_type_price(self, instance_type_id: uuid.UUID | str, hourly_eur: Decimal,
                                effective_from: datetime) -> PriceOut:
        return PriceOut.model_validate(self._post(
            f"/api/catalog/instance-types/{instance_type_id}/prices",
            _body(hourly_eur=hourly_eur, effective_from=effective_from)))

    # -- instances

    def list_instances(self, *, state: str | None = None, provider: str | None = None,
                       cluster: str | None = None, zone: str | None = None,
                       deployment_id: uuid.UUID | str | None = None, limit: int | None = None,
                       cursor: str | None = None) -> InstanceList:
        return InstanceList.model_validate(self._get(
            "/api/instances", state=state, provider=provider, cluster=cluster, zone=zone,
            deployment_id=deployment_id, limit=limit, cursor=cursor))

    def iter_instances(self, **filters: Any) -> Iterator[InstanceOut]:
        """Every instance matching the filters, following ``next_cursor``."""
        cursor = None
        while True:
            page = self.list_instances(cursor=cursor, **filters)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def get_instance(self, instance_id: uuid.UUID | str) -> InstanceDetail:
        return InstanceDetail.model_validate(self._get(f"/api/instances/{instance_id}"))

    def terminate_instance(self, instance_id: uuid.UUID | str,
                           reason: str | None = None) -> InstanceDetail:
        return InstanceDetail.model_validate(
            self._post(f"/api/instances/{instance_id}/terminate", _body(reason=reason)))

    # -- action logs

    def list_action_logs(self, *, type: str | None = None, status: str | None = None,
                         component: str | None = None,
                         instance_id: uuid.UUID | str | None = None,
                         user_id: uuid.UUID | str | None = None,
                         org_id: uuid.UUID | str | None = None, since: datetime | None = None,
                         until: datetime | None = None, limit: int | None = None,
                         cursor: str | None = None) -> ActionLogList:
        return ActionLogList.model_validate(self._get(
            "/api/action-logs", type=type, status=status, component=component,
            instance_id=instance_id, user_id=user_id, org_id=org_id, since=since, until=until,
            limit=limit, cursor=cursor))

    def iter_action_logs(self, **filters: Any) -> Iterator[ActionLogOut]:
        """Every action log matching the filters, following ``next_cursor``."""
        cursor = None
        while True:
            page = self.list_action_logs(cursor=cursor, **filters)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor


def _reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused" if "refused" in str(exc).lower() else "connection failed"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return type(exc).__name__
