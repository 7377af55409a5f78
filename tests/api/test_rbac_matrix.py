"""The role x endpoint x foreign-org matrix, generated from the app's own routes.

Every ``/api`` route declares its access level with ``openapi_extra=access(LEVEL)``. This test
walks the routes of a live app (so routes added later are covered automatically), fills path
parameters with real objects, derives a minimal valid JSON body from the route's OpenAPI schema,
and calls it as each kind of caller:

- anonymous -> 401 unless ``public``; the service token -> 401 on user routes;
- ``service``: user tokens -> 401, the service token is accepted;
- ``platform_admin``: everyone else -> 403;
- ``org:<role>``: a lower role in the owning org A -> 403; a caller from org B -> 404 on
  objects of A named by the path, 403 when A is named in the query or body;
- sufficient callers never get 401/403 (nor any 5xx).

Path parameters the table below does not know get a random UUID; then 404 is accepted where the
object matters (sufficient callers, and insufficient ones that are refused by lookup first).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import TypeAdapter
from sqlalchemy import select

from control_api.deps import ACCESS_LEVELS
from core.keys import generate_api_key, generate_service_token
from core.models import (
    ApiKey,
    Instance,
    InstanceType,
    OrgInvitation,
    Role,
    ServiceToken,
)
from tests.conftest import SERVICE_TOKEN, Factory, TestUser

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# Routes outside /api that are open by design and carry no access level.
OPEN_PATHS = {"/healthz", "/readyz", "/metrics"}
# Routes this matrix expects to succeed (2xx) for at least one sufficient caller: the identity
# routes whose objects the world below creates for real.
MUST_SUCCEED_PREFIXES = ("/api/auth/", "/api/users", "/api/orgs", "/api/api-keys",
                         "/api/service-tokens")


# ---------------------------------------------------------------- route discovery


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    level: str | None
    route: APIRoute


def api_routes(app: FastAPI) -> list[RouteSpec]:
    """Every (method, full path, access level) of the app's APIRoutes.

    Recent FastAPI keeps included routers as nested entries of ``app.routes``; ``iter_route_
    contexts`` flattens them with their full path and effective ``openapi_extra``. Older
    versions list flat ``APIRoute`` objects directly.
    """
    entries: list[tuple[str, set[str], dict[str, Any] | None, Any]] = []
    try:
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined]
    except ImportError:  # flat routes
        for r in app.routes:
            entries.append((r.path, set(getattr(r, "methods", None) or ()),
                            getattr(r, "openapi_extra", None), r))
    else:
        for ctx in iter_route_contexts(app.routes):
            entries.append((ctx.path, set(ctx.methods or ()),
                            getattr(ctx, "openapi_extra", None), ctx.original_route))
    out = []
    for path, methods, extra, original in entries:
        if not isinstance(original, APIRoute):
            continue
        for m in sorted(methods & set(HTTP_METHODS)):
            out.append(RouteSpec(m, path, (extra or {}).get("x-access"), original))
    return out


def test_every_api_route_declares_an_access_level(client: TestClient) -> None:
    specs = api_routes(client.app)  # type: ignore[arg-type]
    assert any(s.path == "/api/auth/login" for s in specs), "route discovery found nothing"
    missing = [f"{s.method} {s.path}" for s in specs
               if s.path.startswith("/api") and s.level not in ACCESS_LEVELS]
    assert missing == [], f"routes without a valid x-access level: {missing}"
    stray = [f"{s.method} {s.path}" for s in specs
             if not s.path.startswith("/api") and s.path not in OPEN_PATHS]
    assert stray == [], f"routes outside /api must be listed as open on purpose: {stray}"


# ---------------------------------------------------------------- the world


@dataclass
class World:
    org_a: uuid.UUID
    org_b: uuid.UUID
    callers: dict[str, TestUser]
    target_user: TestUser  # member of A, acted upon by /api/users/{id} and member routes
    outsider: TestUser  # in no org: the user added by POST /api/orgs/{id}/members
    api_key_id: uuid.UUID
    api_key_secret: str
    service_token_id: uuid.UUID
    instance_id: uuid.UUID
    instance_type_id: uuid.UUID
    roles_in_a: dict[str, Role | None] = field(default_factory=dict)
    # An invitation into A for the platform caller (the only one who may accept it).
    invitation_id: uuid.UUID | None = None


# Callers from least to most privileged: destructive calls by sufficient callers come last.
CALLERS = ("anonymous", "service", "foreign", "viewer", "member", "admin", "owner", "platform")
ROLE_OF = {"viewer": Role.VIEWER, "member": Role.MEMBER, "admin": Role.ADMIN,
           "owner": Role.OWNER}


def build_world(factory: Factory) -> World:
    app = factory.app
    a, b = factory.org(), factory.org()
    callers = {name: factory.user(a, role) for name, role in ROLE_OF.items()}
    callers["foreign"] = factory.user(b, Role.OWNER)  # even an owner of B has no say in A
    callers["platform"] = factory.user(platform_admin=True)  # the flag alone, no membership
    target = factory.user(a, Role.MEMBER)
    outsider = factory.user()
    key = generate_api_key()
    tok = generate_service_token()
    with app.state.sessionmaker() as s, s.begin():  # type: ignore[attr-defined]
        row = ApiKey(org_id=a, user_id=callers["member"].id, name="matrix key",
                     prefix=key.prefix, key_hash=key.hash)
        st = ServiceToken(name=f"matrix-{uuid.uuid4().hex[:8]}", component="ingress",
                          prefix=tok.prefix, token_hash=tok.hash)
        it = s.scalars(select(InstanceType).order_by(InstanceType.name)).first()
        assert it is not None, "catalog seed missing"
        inst = Instance(launch_id=f"launch-{uuid.uuid4().hex}", cluster_name="matrix",
                        provider_code=it.provider_code, instance_type_name=it.name)
        inv = OrgInvitation(org_id=a, user_id=callers["platform"].id, role=Role.VIEWER)
        s.add_all([row, st, inst, inv])
        s.flush()
        ids = row.id, st.id, inst.id, it.id
        invitation_id = inv.id
    return World(org_a=a, org_b=b, callers=callers, target_user=target, outsider=outsider,
                 api_key_id=ids[0], api_key_secret=key.secret, service_token_id=ids[1],
                 instance_id=ids[2], instance_type_id=ids[3],
                 roles_in_a={**{n: r for n, r in ROLE_OF.items()}, "foreign": None,
                             "platform": None}, invitation_id=invitation_id)


# Path parameters: (path prefix, parameter name) -> object of org A (or global). The longest
# matching prefix wins; then the parameter name alone; else a random UUID.
PathResolver = Callable[[World], Any]
PATH_PARAMS: dict[tuple[str, str], PathResolver] = {
    ("/api/orgs", "id"): lambda w: w.org_a,
    ("/api/orgs", "user_id"): lambda w: w.target_user.id,
    ("/api/users", "id"): lambda w: w.target_user.id,
    ("/api/api-keys", "id"): lambda w: w.api_key_id,
    ("/api/service-tokens", "id"): lambda w: w.service_token_id,
    ("/api/instances", "id"): lambda w: w.instance_id,
    ("/api/catalog/instance-types", "id"): lambda w: w.instance_type_id,
    ("/api/auth/invitations", "id"): lambda w: w.invitation_id,
    ("/api/orgs", "invitation_id"): lambda w: w.invitation_id,
}
PARAMS_BY_NAME: dict[str, PathResolver] = {
    "org_id": lambda w: w.org_a,
    "user_id": lambda w: w.target_user.id,
    "api_key_id": lambda w: w.api_key_id,
    "key_id": lambda w: w.api_key_id,
    "instance_id": lambda w: w.instance_id,
    "type_id": lambda w: w.instance_type_id,
    "instance_type_id": lambda w: w.instance_type_id,
    "service_token_id": lambda w: w.service_token_id,
    "token_id": lambda w: w.service_token_id,
}
# Path parameters that point at an object owned by org A (a foreign caller must get 404).
ORG_A_OBJECTS = {("/api/orgs", "id"), ("/api/orgs", "user_id"), ("/api/orgs", "invitation_id"),
                 ("/api/api-keys", "id"),
                 ("name", "org_id"), ("name", "api_key_id"), ("name", "key_id")}


def resolve_path_param(path: str, name: str, world: World) -> tuple[Any, bool, bool]:
    """(value, is a real object, belongs to org A)."""
    best = None
    for (prefix, pname), fn in PATH_PARAMS.items():
        if pname == name and path.startswith(prefix) and (best is None
                                                          or len(prefix) > len(best[0])):
            best = (prefix, fn)
    if best is not None:
        return best[1](world), True, (best[0], name) in ORG_A_OBJECTS
    if name in PARAMS_BY_NAME:
        return PARAMS_BY_NAME[name](world), True, ("name", name) in ORG_A_OBJECTS
    return uuid.uuid4(), False, False


# ---------------------------------------------------------------- minimal bodies


@dataclass
class Call:
    """What a value generator may depend on: the world and the calling user."""

    world: World
    caller: TestUser | None


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


# Field name -> value; used whenever a schema property of that name is generated.
OVERRIDES: dict[str, Callable[[Call], Any]] = {
    "password": lambda c: "A-strong-passw0rd!",
    "new_password": lambda c: "A-new-strong-passw0rd!",
    "current_password": lambda c: c.caller.password if c.caller else "x",
    "username": lambda c: _unique("u"),
    "email": lambda c: _unique("e") + "@example.com",
    "name": lambda c: _unique("n-"),
    "component": lambda c: "ingress",
    "role": lambda c: "viewer",  # granting owner is a separate, owner-only rule
    "org_id": lambda c: str(c.world.org_a),
    "user_id": lambda c: str(c.world.outsider.id),
    "key_hash": lambda c: _key_hash(c.world),  # the world's real key: verify can succeed
}
# Optional properties filled anyway, so the org (or the user) is named explicitly.
ALWAYS_INCLUDE = {"org_id", "user_id"}


def _key_hash(world: World) -> str:
    import hashlib

    return hashlib.sha256(world.api_key_secret.encode()).hexdigest()


class SchemaExample:
    """Builds a minimal valid instance of a JSON schema (with ``$ref``s into ``defs``)."""

    def __init__(self, defs: dict[str, Any], call: Call) -> None:
        self.defs = defs
        self.call = call

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.defs[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def value(self, schema: dict[str, Any], name: str | None = None, depth: int = 0) -> Any:
        if depth > 12:
            raise RecursionError("schema too deep for the matrix generator")
        schema = self.resolve(schema)
        if name in OVERRIDES:
            return OVERRIDES[name](self.call)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [o for o in schema[key] if self.resolve(o).get("type") != "null"]
                return self.value(options[0], name, depth + 1) if options else None
        if "allOf" in schema:
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                merged.update(copy.deepcopy(self.resolve(part)))
            return self.value(merged, name, depth + 1)
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            props = schema.get("properties", {})
            required = set(schema.get("required", [])) | (ALWAYS_INCLUDE & set(props))
            return {k: self.value(props[k], k, depth + 1) for k in props if k in required}
        if kind == "array":
            n = schema.get("minItems", 0)
            return [self.value(schema.get("items", {}), None, depth + 1) for _ in range(n)]
        if kind == "string":
            fmt = schema.get("format")
            if fmt == "uuid":
                return str(uuid.uuid4())
            if fmt == "date-time":
                return (datetime.now(UTC) + timedelta(days=1)).isoformat()
            if fmt == "date":
                return (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
            return "x" * max(1, schema.get("minLength", 1))
        if kind == "integer":
            if "minimum" in schema:
                return int(schema["minimum"])
            if "exclusiveMinimum" in schema:
                return int(schema["exclusiveMinimum"]) + 1
            return 1
        if kind == "number":
            return schema.get("minimum", 1)
        if kind == "boolean":
            return False
        return None


# ---------------------------------------------------------------- requests


@dataclass
class Prepared:
    url: str
    params: dict[str, str]
    body: Any
    has_body: bool
    org_a_in_path: bool
    org_a_named: bool
    random_ids: bool


def prepare(spec: RouteSpec, openapi: dict[str, Any], world: World,
            caller: TestUser | None) -> Prepared:
    op = openapi.get("paths", {}).get(spec.path, {}).get(spec.method.lower())
    defs: dict[str, Any] = dict(openapi.get("components", {}).get("schemas", {}))
    call = Call(world, caller)
    url = spec.path
    org_a_in_path = random_ids = False
    path_names = [seg[1:-1].split(":")[0] for seg in spec.path.split("/")
                  if seg.startswith("{")]
    for name in path_names:
        value, real, in_a = resolve_path_param(spec.path, name, world)
        random_ids |= not real
        org_a_in_path |= in_a
        url = url.replace("{" + name + "}", str(value)).replace(
            "{" + name + ":path}", str(value))
    gen = SchemaExample(defs, call)
    params: dict[str, str] = {}
    org_level = (spec.level or "").startswith("org:")
    for p in (op or {}).get("parameters", []):
        if p.get("in") != "query":
            continue
        if p["name"] == "org_id" and org_level:
            params["org_id"] = str(world.org_a)
        elif p.get("required"):
            params[p["name"]] = str(gen.value(p.get("schema", {}), p["name"]))
    body: Any = None
    has_body = False
    if op is not None and "requestBody" in op:
        schema = op["requestBody"]["content"].get("application/json", {}).get("schema", {})
        body, has_body = gen.value(schema), True
    elif op is None and getattr(spec.route, "body_field", None) is not None:
        ann = spec.route.body_field.field_info.annotation  # type: ignore[union-attr]
        schema = TypeAdapter(ann).json_schema()
        gen.defs.update(schema.get("$defs", {}))
        body, has_body = gen.value(schema), True
    named = params.get("org_id") == str(world.org_a) or (
        isinstance(body, dict) and body.get("org_id") == str(world.org_a))
    return Prepared(url, params, body, has_body, org_a_in_path, named, random_ids)


OK = "sufficient"


def expectation(level: str, caller: str, world: World, prep: Prepared) -> set[int] | str | None:
    """Allowed status codes, ``OK`` (anything but 401/403/5xx), or None (only no 5xx)."""
    if level == "public":
        return None
    if caller == "anonymous":
        return {401}
    if level == "service":
        return OK if caller == "service" else {401}
    if caller == "service":
        return {401}  # a service token is not a user session
    if level == "user":
        return OK
    if caller == "platform":
        return OK
    if level == "platform_admin":
        return {403}
    if level.startswith("org:"):
        needed = Role(level.split(":", 1)[1])
        role = world.roles_in_a.get(caller)
        refused = {403, 404} if prep.random_ids else {403}
        if caller == "foreign":
            if prep.org_a_in_path:
                return {404}
            if prep.org_a_named:
                return refused
            return None  # no org identifiable in the request: nothing to assert
        assert role is not None
        if not (prep.org_a_in_path or prep.org_a_named):
            # The route works on the caller's own orgs: never 401, role rules unknowable here.
            return None
        return OK if role.rank >= needed.rank else refused
    raise AssertionError(f"unknown level {level}")


def _call(client: TestClient, spec: RouteSpec, prep: Prepared,
          headers: dict[str, str]) -> Any:
    client.cookies.clear()  # never authenticate through a cookie left by an earlier login
    kwargs: dict[str, Any] = {"params": prep.params, "headers": headers}
    if prep.has_body:
        kwargs["json"] = prep.body
    return client.request(spec.method, prep.url, **kwargs)


def test_rbac_matrix(client: TestClient, factory: Factory) -> None:
    app: FastAPI = client.app  # type: ignore[assignment]
    openapi = app.openapi()
    specs = [s for s in api_routes(app) if s.path.startswith("/api")]
    assert len(specs) >= 25, "the identity routes alone are more than this"
    problems: list[str] = []
    checked = 0
    for spec in specs:
        assert spec.level in ACCESS_LEVELS, f"{spec.method} {spec.path} lacks x-access"
        world = build_world(factory)  # fresh objects: earlier calls may have deleted some
        succeeded = False
        for caller_name in CALLERS:
            caller = world.callers.get(caller_name)
            if caller_name == "anonymous":
                headers: dict[str, str] = {}
            elif caller_name == "service":
                headers = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
            else:
                assert caller is not None
                headers = caller.headers
            prep = prepare(spec, openapi, world, caller)
            expected = expectation(spec.level, caller_name, world, prep)  # type: ignore[arg-type]
            r = _call(client, spec, prep, headers)
            checked += 1
            where = (f"{spec.method} {spec.path} [{spec.level}] as {caller_name}: "
                     f"{r.status_code} {r.text[:200]}")
            if r.status_code >= 500:
                problems.append(f"5xx: {where}")
            elif expected == OK:
                if r.status_code in (401, 403):
                    problems.append(f"sufficient caller refused: {where}")
                succeeded |= 200 <= r.status_code < 300
            elif isinstance(expected, set) and r.status_code not in expected:
                problems.append(f"expected {sorted(expected)}: {where}")
        if (spec.path.startswith(MUST_SUCCEED_PREFIXES) and spec.level != "public"
                and not succeeded):
            problems.append(f"no sufficient caller succeeded: {spec.method} {spec.path}")
    assert checked == len(specs) * len(CALLERS)
    assert problems == [], "\n".join(problems)


# ---------------------------------------------------------------- the generator itself


def test_generator_builds_valid_bodies_for_identity_routes(client: TestClient,
                                                           factory: Factory) -> None:
    """Guards the matrix against going vacuous: the derived bodies are what we expect."""
    app: FastAPI = client.app  # type: ignore[assignment]
    world = build_world(factory)
    openapi = app.openapi()
    specs = {(s.method, s.path): s for s in api_routes(app)}
    member = world.callers["member"]
    key = prepare(specs[("POST", "/api/api-keys")], openapi, world, member)
    assert key.org_a_named and set(key.body) == {"name", "org_id"}
    add = prepare(specs[("POST", "/api/orgs/{id}/members")], openapi, world, member)
    assert add.org_a_in_path and add.body == {"role": "viewer",
                                              "user_id": str(world.outsider.id)}
    pw = prepare(specs[("POST", "/api/auth/password")], openapi, world, member)
    assert pw.body["current_password"] == member.password
    revoke = prepare(specs[("POST", "/api/api-keys/{id}/revoke")], openapi, world, member)
    assert revoke.url == f"/api/api-keys/{world.api_key_id}" + "/revoke"
    assert expectation("org:member", "viewer", world, revoke) == {403}
    assert expectation("org:member", "foreign", world, revoke) == {404}
    assert expectation("org:member", "foreign", world, key) == {403}


@pytest.mark.parametrize("level", ACCESS_LEVELS)
def test_expectation_table_covers_every_level(level: str) -> None:
    """Each declared level has a rule for every caller (a new level must extend the matrix)."""
    world = World(org_a=uuid.uuid4(), org_b=uuid.uuid4(), callers={}, target_user=None,  # type: ignore[arg-type]
                  outsider=None, api_key_id=uuid.uuid4(), api_key_secret="",  # type: ignore[arg-type]
                  service_token_id=uuid.uuid4(), instance_id=uuid.uuid4(),
                  instance_type_id=uuid.uuid4(),
                  roles_in_a={**ROLE_OF, "foreign": None, "platform": None})
    prep = Prepared("/x", {}, None, False, org_a_in_path=True, org_a_named=False,
                    random_ids=False)
    for caller in CALLERS:
        expectation(level, caller, world, prep)
