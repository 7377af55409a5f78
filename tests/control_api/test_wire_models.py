"""One set of wire models: the clients parse answers with the server's response models
(``control_api.schemas``), and those ignore unknown fields at every level, so a newer server that
adds a field never breaks an older client. Request models keep refusing unknown fields."""

from __future__ import annotations

import enum
import inspect
import types
import typing
import uuid
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel

from control_api.client.api import ControlApiClient
from control_api.client.finops import FinopsClient
from control_api.schemas import catalog, finops, identity

UNKNOWN = "field_of_a_newer_server"


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models an annotation names (inside list[...], X | None, Iterator[...]...)."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):
        yield from _models_in(arg)


def _returned_models() -> dict[str, type[BaseModel]]:
    out: dict[str, type[BaseModel]] = {}
    for client in (ControlApiClient, FinopsClient):
        for name, method in inspect.getmembers(client, inspect.isfunction):
            if name.startswith("_"):
                continue
            for model in _models_in(typing.get_type_hints(method).get("return")):
                out[f"{client.__name__}.{name}"] = model
    return out


RETURNED = _returned_models()
RETURNED_MODELS = sorted(set(RETURNED.values()), key=lambda m: m.__name__)


def _nested(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    yield model
    for field in model.model_fields.values():
        for sub in _models_in(field.annotation):
            yield from _nested(sub)


def _sample(annotation: Any) -> Any:
    """A valid JSON value for ``annotation``; every object carries one unknown field."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _sample(args[0])
    if origin in (typing.Union, types.UnionType):
        return _sample(next(a for a in args if a is not type(None)))
    if origin is Literal:
        return args[0]
    if origin is list:
        return [_sample(args[0])]
    if origin is dict:
        return {"k": _sample(args[1])}
    if inspect.isclass(annotation):
        if issubclass(annotation, BaseModel):
            body = {name: _sample(f.annotation) for name, f in annotation.model_fields.items()}
            return {**body, UNKNOWN: {"nested": [1, "two"]}}
        if issubclass(annotation, enum.Enum):
            return next(iter(annotation)).value
        if issubclass(annotation, bool):
            return True
        if issubclass(annotation, int):
            return 1
        if issubclass(annotation, float):
            return 1.5
        if issubclass(annotation, Decimal):
            return "1.25"
        if issubclass(annotation, datetime):
            return "2026-01-02T03:04:05Z"
        if issubclass(annotation, uuid.UUID):
            return str(uuid.uuid4())
        if issubclass(annotation, str):
            return "text"
    if annotation is Any:
        return {"any": 1}
    raise AssertionError(f"no sample for {annotation!r}")


def test_the_clients_return_the_servers_models() -> None:
    assert len(RETURNED) >= 40, sorted(RETURNED)
    foreign = {where: f"{m.__module__}.{m.__qualname__}" for where, m in RETURNED.items()
               if not m.__module__.startswith("control_api.schemas.")}
    assert not foreign, f"answers parsed with models that are not the server's: {foreign}"


@pytest.mark.parametrize("model", RETURNED_MODELS, ids=lambda m: str(getattr(m, "__name__", m)))
def test_a_response_with_unknown_fields_still_parses(model: type[BaseModel]) -> None:
    for each in _nested(model):
        assert each.model_config.get("extra", "ignore") == "ignore", each
    data = _sample(model)
    parsed = model.model_validate(data)
    assert UNKNOWN not in parsed.model_dump()
    # And what the client reads back is what the server sent (known fields only).
    again = model.model_validate(parsed.model_dump(mode="json"))
    assert again == parsed


def test_secrets_in_answers_stay_out_of_repr() -> None:
    login = identity.LoginResponse.model_validate({**_sample(identity.LoginResponse),
                                                   "access_token": "jwt-secret-token"})
    key = identity.ApiKeyCreated.model_validate({**_sample(identity.ApiKeyCreated),
                                                  "key": "ia-secret-key"})
    token = identity.ServiceTokenCreated.model_validate(
        {**_sample(identity.ServiceTokenCreated), "token": "st-secret-token"})
    assert "jwt-secret-token" not in repr(login)
    assert "ia-secret-key" not in repr(key) and "st-secret-token" not in repr(token)


@pytest.mark.parametrize("model", [
    identity.LoginRequest, identity.UserCreate, identity.UserUpdate, identity.OrgCreate,
    identity.MemberAdd, identity.ApiKeyCreate, identity.ServiceTokenCreate, catalog.PriceIn,
    finops.BudgetCreate, finops.BudgetPatch,
], ids=lambda m: str(getattr(m, "__name__", m)))
def test_request_models_still_refuse_unknown_fields(model: type[BaseModel]) -> None:
    assert model.model_config.get("extra") == "forbid"
