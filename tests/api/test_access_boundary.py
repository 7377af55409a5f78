"""Issue 13: the tenant boundary. One test per finding (each fails on the code before it), and the
property "a key verifies iff its owner is an active member of its org with a key-holding role".
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from control_api.app import create_app
from control_api.services.internal import KEY_HOLDING_ROLES, verify_key
from control_api.settings import Settings
from core.db import utcnow
from core.keys import generate_api_key, generate_service_token, sha256_hex
from core.models import (
    ApiKey,
    Deployment,
    Instance,
    InstanceState,
    Membership,
    Org,
    OrgInvitation,
    Role,
    ServiceToken,
    UsageRecord,
    User,
)
from tests.conftest import ADMIN_PASSWORD, Factory

VERIFY = "/api/internal/keys/verify"


def _key(client: TestClient, user_headers: dict[str, str], org: uuid.UUID) -> str:
    r = client.post("/api/api-keys", json={"name": "k", "org_id": str(org)}, headers=user_headers)
    assert r.status_code == 201, r.text
    return r.json()["key"]  # type: ignore[no-any-return]


def _verify(client: TestClient, service_headers: dict[str, str], key: str) -> Any:
    return client.post(VERIFY, json={"key_hash": sha256_hex(key)}, headers=service_headers)


# ---------------------------------------------------------------- findings 1 + 2


def test_key_dies_when_owner_leaves_or_is_demoted_and_org_admin_revokes_it(
        client: TestClient, factory: Factory, admin_headers: dict[str, str],
        service_headers: dict[str, str]) -> None:
    org = factory.org()
    owner = factory.user(org, Role.OWNER)
    member = factory.user(org, Role.MEMBER)
    key = _key(client, member.headers, org)
    assert _verify(client, service_headers, key).status_code == 200
    # Demoted to viewer: a viewer may not hold keys.
    assert client.patch(f"/api/orgs/{org}/members/{member.id}", json={"role": "viewer"},
                        headers=owner.headers).status_code == 200
    r = _verify(client, service_headers, key)
    assert r.status_code == 404 and r.json()["error"]["code"] == "disabled_api_key"
    # Removed: still refused; the org's admins still list and revoke the key.
    assert client.delete(f"/api/orgs/{org}/members/{member.id}",
                         headers=owner.headers).status_code == 204
    assert _verify(client, service_headers, key).status_code == 404
    listed = client.get(f"/api/api-keys?org_id={org}", headers=owner.headers).json()["items"]
    assert [k["user_id"] for k in listed] == [str(member.id)]
    rev = client.post(f"/api/api-keys/{listed[0]['id']}/revoke", headers=owner.headers)
    assert rev.status_code == 200 and rev.json()["revoked_at"] is not None


def test_deleting_the_owner_kills_the_key(client: TestClient, factory: Factory,
                                          admin_headers: dict[str, str],
                                          service_headers: dict[str, str],
                                          db: sessionmaker[Session]) -> None:
    org = factory.org()
    member = factory.user(org, Role.MEMBER)
    key = _key(client, member.headers, org)
    assert client.delete(f"/api/users/{member.id}", headers=admin_headers).status_code == 204
    r = _verify(client, service_headers, key)
    assert r.status_code == 404 and r.json()["error"]["code"] in ("revoked_api_key",
                                                                  "disabled_api_key")
    with db() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.key_hash == sha256_hex(key)))
        assert row is not None and row.revoked_at is not None and row.user_id is None


# A step of the property test: (operation, role for add/set).
OPS = st.lists(st.tuples(st.sampled_from(["remove", "add", "set_role", "disable", "enable",
                                          "delete"]),
                         st.sampled_from(list(Role))), max_size=8)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_property_key_verifies_iff_active_member_with_key_holding_role(
        db: sessionmaker[Session], ops: list[tuple[str, Role]]) -> None:
    from control_api.errors import NotFound

    with db() as s, s.begin():
        org = Org(name=f"p-{uuid.uuid4().hex[:10]}")
        user = User(username=f"p{uuid.uuid4().hex[:10]}", email=f"{uuid.uuid4().hex}@x.io",
                    password_hash="x")
        s.add_all([org, user])
        s.flush()
        s.add(Membership(user_id=user.id, org_id=org.id, role=Role.MEMBER))
        secret = generate_api_key()
        s.add(ApiKey(org_id=org.id, user_id=user.id, name="k", prefix=secret.prefix,
                     key_hash=secret.hash))
        org_id, user_id = org.id, user.id
    role: Role | None = Role.MEMBER
    active, deleted = True, False
    for op, r in ops:
        with db() as s, s.begin():
            m = s.scalar(select(Membership).where(Membership.user_id == user_id,
                                                  Membership.org_id == org_id))
            u = s.get(User, user_id)
            if deleted:
                break
            assert u is not None
            if op == "remove" and m is not None:
                s.delete(m)
                role = None
            elif op == "add" and m is None:
                s.add(Membership(user_id=user_id, org_id=org_id, role=r))
                role = r
            elif op == "set_role" and m is not None:
                m.role, role = r, r
            elif op in ("disable", "enable"):
                u.is_active = active = op == "enable"
            elif op == "delete":
                s.delete(u)
                deleted = True
        expected = not deleted and active and role in KEY_HOLDING_ROLES
        with db() as s, s.begin():
            try:
                verify_key(s, secret.hash)
                ok = True
            except NotFound:
                ok = False
        assert ok == expected, (ops, op)
    with db() as s, s.begin():
        s.execute(Org.__table__.delete().where(Org.id == org_id))
        s.execute(User.__table__.delete().where(User.id == user_id))


# ---------------------------------------------------------------- finding 3


def _deployment(s: Session, name: str, allowed: list[str] | None) -> uuid.UUID:
    dep = Deployment(name=name, version=1, status="pending",
                     spec={"name": name, "allowed_orgs": allowed, "env": {}})
    s.add(dep)
    s.flush()
    return dep.id


def _instance(s: Session, launch: str, deployment_id: uuid.UUID | None) -> uuid.UUID:
    now = utcnow()
    inst = Instance(launch_id=launch, cluster_name="c", provider_code="local",
                    instance_type_name="t", deployment_id=deployment_id, public_ip="1.2.3.4",
                    private_ip="10.0.0.9", provider_instance_id="srv-" + launch,
                    state=InstanceState.READY, state_entered_at=now, created_at=now,
                    updated_at=now)
    s.add(inst)
    s.flush()
    return inst.id


def test_instances_are_scoped_to_the_callers_orgs(client: TestClient, factory: Factory,
                                                  admin_headers: dict[str, str],
                                                  db: sessionmaker[Session]) -> None:
    a, b = factory.org("org-a"), factory.org("org-b")
    ua, lonely = factory.user(a, Role.VIEWER), factory.user()
    with db() as s, s.begin():
        for code in ("local",):
            assert s.scalar(select(func.count()).select_from(Instance)) == 0, code
        ia = _instance(s, "la", _deployment(s, "dep-a", ["org-a"]))
        ib = _instance(s, "lb", _deployment(s, "dep-b", [str(b)]))
        ishared = _instance(s, "ls", _deployment(s, "dep-shared", None))
        inone = _instance(s, "ln", None)
    seen = client.get("/api/instances", headers=ua.headers)
    assert seen.status_code == 200
    items = seen.json()["items"]
    assert [i["id"] for i in items] == [str(ia)]
    assert items[0]["public_ip"] is None and items[0]["private_ip"] is None
    assert "1.2.3.4" not in seen.text and "srv-" not in seen.text
    for other in (ib, ishared, inone):
        assert client.get(f"/api/instances/{other}", headers=ua.headers).status_code == 404
    assert client.get(f"/api/instances/{ia}", headers=ua.headers).status_code == 200
    assert client.get("/api/instances", headers=lonely.headers).json()["items"] == []
    everything = client.get("/api/instances", headers=admin_headers).json()["items"]
    assert {i["id"] for i in everything} == {str(x) for x in (ia, ib, ishared, inone)}
    assert "1.2.3.4" in str(everything)


# ---------------------------------------------------------------- finding 4


def test_deployment_env_values_are_never_returned(client: TestClient, factory: Factory,
                                                 admin_headers: dict[str, str],
                                                 db: sessionmaker[Session]) -> None:
    import yaml

    from tests.api.routes.test_deployments import ONE

    spec = yaml.safe_load(ONE)["deployments"][0]
    spec["name"] = "chat"
    spec["env"] = {"HF_TOKEN": "hf_supersecret"}
    r = client.post("/api/deployments", json={"spec": {"deployments": [spec]}},
                    headers=admin_headers)
    assert r.status_code == 200, r.text
    assert "hf_supersecret" not in r.text and r.json()["items"][0]["spec"]["env"] == {
        "HF_TOKEN": "***"}
    org = factory.org()
    member, lonely = factory.user(org, Role.MEMBER), factory.user()
    shown = client.get("/api/deployments/chat", headers=member.headers)
    assert shown.status_code == 200 and "hf_supersecret" not in shown.text
    assert shown.json()["spec"]["env"] == {"HF_TOKEN": "***"}
    # A user in no org sees no deployment at all, "every org" included.
    assert client.get("/api/deployments", headers=lonely.headers).json()["items"] == []
    assert client.get("/api/deployments/chat", headers=lonely.headers).status_code == 404
    # Writing the mask back keeps the stored value.
    spec["env"] = {"HF_TOKEN": "***"}
    spec["limits"] = {"max_tokens": 100}  # a real change, so the spec is written again
    again = client.post("/api/deployments", json={"spec": {"deployments": [spec]}},
                        headers=admin_headers)
    assert again.status_code == 200, again.text
    with db() as s:
        stored = s.scalar(select(Deployment.spec).where(Deployment.name == "chat"))
        assert stored is not None and stored["env"] == {"HF_TOKEN": "hf_supersecret"}
    spec["name"], spec["model"] = "other", {**spec["model"], "name": "other-model"}
    bad = client.post("/api/deployments", json={"spec": {"deployments": [spec]}},
                      headers=admin_headers)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_deployment"


# ---------------------------------------------------------------- finding 7


def test_key_verification_names_the_org(client: TestClient, factory: Factory,
                                        service_headers: dict[str, str]) -> None:
    org = factory.org("named-org")
    member = factory.user(org, Role.MEMBER)
    r = _verify(client, service_headers, _key(client, member.headers, org))
    assert r.status_code == 200 and r.json()["org_name"] == "named-org"


# ---------------------------------------------------------------- finding 9


def _app_client(settings: Settings, peer: str) -> TestClient:
    return TestClient(create_app(settings), client=(peer, 40000))


def test_forwarded_for_is_ignored_unless_from_a_trusted_proxy(
        settings: Settings, db: sessionmaker[Session]) -> None:
    from control_api.throttle import forwarded_client

    proxies = Settings(trusted_proxies="10.0.0.0/8").proxy_networks()  # type: ignore[arg-type]
    assert forwarded_client("127.0.0.1", "6.6.6.6", ()) == "127.0.0.1"
    assert forwarded_client("127.0.0.1", "6.6.6.6", proxies) == "127.0.0.1"
    assert forwarded_client("10.0.0.2", "6.6.6.6, 10.0.0.3", proxies) == "6.6.6.6"
    assert forwarded_client("10.0.0.2", "1.1.1.1, 6.6.6.6", proxies) == "6.6.6.6"
    assert Settings().uvicorn_proxy_options() == {"proxy_headers": False,
                                                  "forwarded_allow_ips": ""}
    # Rotating X-Forwarded-For from a local client does not escape the per-address limit.
    settings = settings.model_copy(update={"login_max_failures_per_ip": 3})
    with _app_client(settings, "127.0.0.1") as c:
        codes = [c.post("/api/auth/login", json={"username": f"nobody{i}", "password": "x"},
                        headers={"X-Forwarded-For": f"9.9.9.{i}"}).status_code
                 for i in range(5)]
    assert codes == [401, 401, 401, 429, 429]


def test_lockout_is_per_account_and_address_with_backoff(settings: Settings,
                                                         db: sessionmaker[Session]) -> None:
    now = [utcnow()]
    app = create_app(settings)
    app.state.clock = lambda: now[0]
    bad = {"username": "admin", "password": "wrong-password"}
    good = {"username": "admin", "password": ADMIN_PASSWORD}
    with TestClient(app, client=("192.0.2.1", 1)) as attacker:
        for _ in range(settings.login_max_failures_per_account):
            assert attacker.post("/api/auth/login", json=bad).status_code == 401
        waits = []
        for _ in range(3):
            r = attacker.post("/api/auth/login", json=good)
            assert r.status_code == 429  # throttled even with the right password
            waits.append(int(r.headers["Retry-After"]))
            now[0] += timedelta(seconds=waits[-1])
            assert attacker.post("/api/auth/login", json=bad).status_code == 401
        assert waits[0] < waits[1] < waits[2]  # exponential
    with TestClient(app, client=("198.51.100.7", 1)) as owner:
        assert owner.post("/api/auth/login", json=good).status_code == 200


# ---------------------------------------------------------------- finding 10


def test_cookie_requests_need_same_origin_and_json_or_csrf_token(client: TestClient) -> None:
    r = client.post("/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    token = r.json()["access_token"]
    csrf = r.cookies.get("inventiv_csrf")
    assert csrf
    client.cookies.set("inventiv_session", token)
    evil = client.post("/api/auth/logout", headers={"Origin": "https://evil.example",
                                                    "Content-Type": "text/plain"})
    assert evil.status_code == 403 and evil.json()["error"]["code"] == "csrf_failed"
    form = client.post("/api/auth/logout", headers={"Origin": "http://testserver",
                                                    "Content-Type":
                                                        "application/x-www-form-urlencoded"})
    assert form.status_code == 403 and form.json()["error"]["code"] == "csrf_failed"
    assert client.get("/api/auth/me").status_code == 200  # reads are not affected
    # Bearer requests are unaffected, whatever Origin says.
    bearer = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}",
                                                 "Origin": "https://evil.example"})
    assert bearer.status_code == 200
    ok = client.post("/api/auth/logout", headers={"Origin": "http://testserver",
                                                  "X-CSRF-Token": csrf})
    assert ok.status_code == 204


# ---------------------------------------------------------------- finding 11


def _service_token(db: sessionmaker[Session], scopes: list[str]) -> dict[str, str]:
    tok = generate_service_token()
    with db() as s, s.begin():
        s.add(ServiceToken(name=f"t-{uuid.uuid4().hex[:8]}", component="x", prefix=tok.prefix,
                           token_hash=tok.hash, scopes=scopes))
    return {"Authorization": f"Bearer {tok.secret}"}


def _usage(request_id: str, key_id: uuid.UUID, org_id: uuid.UUID) -> dict[str, Any]:
    return {"request_id": request_id, "api_key_id": str(key_id), "org_id": str(org_id),
            "model": "m", "prompt_tokens": 1_000_000_000, "completion_tokens": 0,
            "status": "completed", "at": utcnow().isoformat()}


def test_service_scopes_and_usage_attribution(client: TestClient, factory: Factory,
                                              admin_headers: dict[str, str],
                                              db: sessionmaker[Session]) -> None:
    node = _service_token(db, ["node-provider"])
    ingress = _service_token(db, ["ingress"])
    legacy = _service_token(db, [])
    for headers in (node, legacy):
        r = client.post(VERIFY, json={"key_hash": "0" * 64}, headers=headers)
        assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
        assert client.post("/api/internal/usage", json={"records": []},
                           headers=headers).status_code == 403
    assert client.post("/api/internal/lifecycle-events", json={"events": []},
                       headers=ingress).status_code == 403
    assert client.post("/api/internal/lifecycle-events", json={"events": []},
                       headers=node).status_code == 200
    a, b = factory.org(), factory.org()
    ua = factory.user(a, Role.MEMBER)
    key = _key(client, ua.headers, a)
    with db() as s:
        key_id = s.scalar(select(ApiKey.id).where(ApiKey.key_hash == sha256_hex(key)))
    assert key_id is not None
    r = client.post("/api/internal/usage", json={"records": [
        _usage("forged", key_id, b), _usage("fine", key_id, a)]}, headers=ingress)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["inserted"] == 1 and body["rejected"] == [
        {"request_id": "forged", "code": "key_org_mismatch"}]
    with db() as s:
        assert list(s.scalars(select(UsageRecord.request_id))) == ["fine"]
    # Created through the API, a token's scope follows its component unless given.
    made = client.post("/api/service-tokens", json={"name": "np", "component": "node_provider"},
                       headers=admin_headers)
    assert made.status_code == 201 and made.json()["scopes"] == ["node-provider"]
    unknown = client.post("/api/service-tokens", json={"name": "zz", "component": "zz"},
                          headers=admin_headers)
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "scopes_required"


# ---------------------------------------------------------------- finding 12


def test_issued_keys_carry_the_servers_hmac_checksum(client: TestClient, factory: Factory,
                                                     settings: Settings) -> None:
    from core.keys import api_key_well_formed

    org = factory.org()
    key = _key(client, factory.user(org, Role.MEMBER).headers, org)
    secret = settings.resolved_key_checksum_secret()
    assert api_key_well_formed(key, secret)
    assert not api_key_well_formed(key, b"another secret")
    assert not api_key_well_formed(generate_api_key().secret, secret)  # minted without it


# ---------------------------------------------------------------- finding 13


def test_membership_is_an_invitation_the_user_accepts(client: TestClient, factory: Factory,
                                                      db: sessionmaker[Session]) -> None:
    org = factory.org()
    admin = factory.user(org, Role.ADMIN)
    invitee = factory.user()
    known = client.post(f"/api/orgs/{org}/members",
                        json={"username": invitee.username, "role": "member"},
                        headers=admin.headers)
    unknown = client.post(f"/api/orgs/{org}/members",
                          json={"username": "no-such-user-xyz", "role": "member"},
                          headers=admin.headers)
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()
    assert invitee.username not in known.text and "@" not in known.text
    members = client.get(f"/api/orgs/{org}/members", headers=admin.headers).json()["items"]
    assert [m["username"] for m in members] == [admin.username]  # not a member yet
    invitations = client.get("/api/auth/invitations", headers=invitee.headers).json()["items"]
    assert len(invitations) == 1 and invitations[0]["org_id"] == str(org)
    # Nobody else can accept it.
    assert client.post(f"/api/auth/invitations/{invitations[0]['id']}/accept",
                       headers=admin.headers).status_code == 404
    ok = client.post(f"/api/auth/invitations/{invitations[0]['id']}/accept",
                     headers=invitee.headers)
    assert ok.status_code == 200 and ok.json()["role"] == "member"
    members = client.get(f"/api/orgs/{org}/members", headers=admin.headers).json()["items"]
    assert {m["username"] for m in members} == {admin.username, invitee.username}
    # The unknown username's invitation stays pending like any other: the admins' list does
    # not tell which usernames exist (it binds to whoever holds that username later).
    pending = client.get(f"/api/orgs/{org}/invitations", headers=admin.headers).json()["items"]
    assert [p["username"] for p in pending] == ["no-such-user-xyz"]
    with db() as s:
        assert s.scalar(select(func.count()).select_from(OrgInvitation)) == 1


def test_pending_invitations_do_not_tell_which_usernames_exist(
        client: TestClient, factory: Factory) -> None:
    """An existing user, a disabled one, a member and a username nobody holds: each invite
    leaves one pending row of the same shape; a user created later under an invited username
    sees and accepts that invitation."""
    org = factory.org()
    admin = factory.user(org, Role.ADMIN)
    member = factory.user(org, Role.MEMBER)
    existing = factory.user()
    later = f"later-{uuid.uuid4().hex[:6]}"
    names = [existing.username, member.username, later]
    for name in names:
        r = client.post(f"/api/orgs/{org}/members", json={"username": name, "role": "member"},
                        headers=admin.headers)
        assert r.status_code == 202, r.text
    pending = client.get(f"/api/orgs/{org}/invitations", headers=admin.headers).json()["items"]
    assert sorted(p["username"] for p in pending) == sorted(names)
    assert len({frozenset(p) for p in pending}) == 1  # the same fields for every row
    # The member is not offered an invitation into an org they are in.
    assert client.get("/api/auth/invitations", headers=member.headers).json()["items"] == []
    newcomer = factory.user(username=later)
    mine = client.get("/api/auth/invitations", headers=newcomer.headers).json()["items"]
    assert [i["org_id"] for i in mine] == [str(org)]
    ok = client.post(f"/api/auth/invitations/{mine[0]['id']}/accept", headers=newcomer.headers)
    assert ok.status_code == 200 and ok.json()["role"] == "member"


# ---------------------------------------------------------------- data-level isolation


def test_no_cross_org_object_in_any_list_or_aggregate(client: TestClient, factory: Factory,
                                                      db: sessionmaker[Session]) -> None:
    """Two orgs, each with a member, a key, a dedicated deployment and its VM: every GET
    route without path parameters (lists, aggregates, exports) answered to A's owner names
    nothing of B, and B's objects' detail routes answer 404."""
    tag = uuid.uuid4().hex[:6]
    a, b = factory.org(f"iso-a-{tag}"), factory.org(f"iso-b-{tag}")
    owner_a = factory.user(a, Role.OWNER)
    owner_b = factory.user(b, Role.OWNER)
    key_b = _key(client, owner_b.headers, b)
    _key(client, owner_a.headers, a)
    with db() as s, s.begin():
        key_b_id = s.scalar(select(ApiKey.id).where(ApiKey.key_hash == sha256_hex(key_b)))
        b_name = s.get(Org, b).name  # type: ignore[union-attr]
        dep_b = _deployment(s, f"dep-{b_name}", [b_name])
        inst_b = _instance(s, f"l-{b_name}", dep_b)
        _instance(s, f"l-a-{tag}", _deployment(s, f"dep-a-{tag}", [str(a)]))
    secrets_of_b = [str(b), b_name, str(key_b_id), str(owner_b.id), owner_b.username,
                    str(dep_b), str(inst_b)]
    app: Any = client.app
    checked = 0
    for route in app.routes:
        path = getattr(route, "path", "")
        if ("GET" not in getattr(route, "methods", set()) or not path.startswith("/api")
                or "{" in path):
            continue
        r = client.get(path, headers=owner_a.headers)
        assert r.status_code < 500, (path, r.text)
        for s_ in secrets_of_b:
            assert s_ not in r.text, (path, s_)
        checked += 1
    assert checked >= 8
    for detail in (f"/api/orgs/{b}", f"/api/orgs/{b}/members", f"/api/api-keys/{key_b_id}",
                   f"/api/users/{owner_b.id}", f"/api/instances/{inst_b}",
                   f"/api/deployments/dep-{b_name}"):
        assert client.get(detail, headers=owner_a.headers).status_code == 404, detail
