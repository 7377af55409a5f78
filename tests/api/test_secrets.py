"""Stored secrets: write-only values (never in any answer, log line or Serve config), sealed at
rest, referenced by deployment specs, handed only to the replicas of a deployment that
references them (service scope ``ingress``)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from control_api.serve_client import ServeTarget
from control_api.services import secrets as secrets_service
from core.models_secrets import StoredSecret
from core.spec import DeploymentFile
from serve_apps.serve_config import render_serve_config
from tests.conftest import Factory

HF_VALUE = "hf_SeCrEtVaLuE-0123456789-never-echoed"
S3_ID = "SCWACCESSKEYID-never-echoed"
S3_KEY = "s3-secret-access-key-never-echoed"
ENV_VALUE = "env-secret-value-never-echoed"
VALUES = (HF_VALUE, S3_ID, S3_KEY, ENV_VALUE)


def _dep(name: str, source: str, **model: Any) -> dict[str, Any]:
    return {"name": name,
            "model": {"name": f"{name}-model", "source": source, **model},
            "engine": {"max_model_len": 512},
            "limits": {"max_tokens": 64}}


def spec_doc() -> dict[str, Any]:
    """A gated Hugging Face model (token + an env secret) and an Object Storage one (keys)."""
    gated = {**_dep("gated-chat", "hf:meta-llama/tiny", hf_token={"secret": "hf-token"}),
             "env": {"PLAIN": "plain-literal", "API_TOKEN": {"secret": "env-token"}}}
    bucket = _dep("bucket-chat", "s3://models/tiny",
                  s3={"access_key_id": {"secret": "s3-id"},
                      "secret_access_key": {"secret": "s3-key"}})
    return {"version": 1, "deployments": [gated, bucket]}


def put(client: TestClient, headers: dict[str, str], name: str, value: str,
        description: str | None = None) -> Any:
    body: dict[str, Any] = {"value": value}
    if description is not None:
        body["description"] = description
    return client.put(f"/api/secrets/{name}", json=body, headers=headers)


def store_all(client: TestClient, headers: dict[str, str]) -> None:
    for name, value in (("hf-token", HF_VALUE), ("s3-id", S3_ID), ("s3-key", S3_KEY),
                        ("env-token", ENV_VALUE)):
        r = put(client, headers, name, value)
        assert r.status_code == 201, r.text


def assert_no_value(text: str) -> None:
    for value in VALUES:
        assert value not in text


def service_token(client: TestClient, headers: dict[str, str], component: str) -> dict[str, str]:
    r = client.post("/api/service-tokens", json={"name": f"tok-{component}",
                                                 "component": component}, headers=headers)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def test_set_list_show_replace_delete_never_return_the_value(
        client: TestClient, admin_headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    r = put(client, admin_headers, "hf-token", HF_VALUE, "gated Llama")
    assert r.status_code == 201, r.text
    first = r.json()
    assert (first["name"], first["description"], first["created_by"], first["updated_by"],
            first["used_by"]) == ("hf-token", "gated Llama", "admin", "admin", [])
    assert_no_value(r.text)
    # Replace: 200, the description kept when omitted, updated_at moves.
    r = put(client, admin_headers, "hf-token", HF_VALUE + "-v2")
    assert r.status_code == 200, r.text
    assert r.json()["description"] == "gated Llama"
    assert r.json()["updated_at"] >= first["updated_at"]
    listed = client.get("/api/secrets", headers=admin_headers)
    assert [s["name"] for s in listed.json()["items"]] == ["hf-token"]
    shown = client.get("/api/secrets/hf-token", headers=admin_headers)
    assert shown.status_code == 200 and "value" not in shown.json()
    logs = client.get("/api/action-logs", headers=admin_headers, params={"limit": 500})
    assert logs.status_code == 200
    types = [e["type"] for e in logs.json()["items"]]
    assert types.count("secret.set") == 2
    for text in (listed.text, shown.text, logs.text, caplog.text):
        assert_no_value(text)
    r = client.delete("/api/secrets/hf-token", headers=admin_headers)
    assert r.status_code == 204
    r = client.get("/api/secrets/hf-token", headers=admin_headers)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "secret_not_found")
    assert client.delete("/api/secrets/hf-token", headers=admin_headers).status_code == 404


def test_values_are_sealed_at_rest_and_bound_to_their_name(
        client: TestClient, admin_headers: dict[str, str], factory: Factory) -> None:
    store_all(client, admin_headers)
    with factory._session() as s, s.begin():
        rows = {r.name: r for r in s.scalars(select(StoredSecret))}
        for row in rows.values():
            for value in VALUES:
                assert value.encode() not in row.ciphertext
        # The same value under two names seals differently (random nonce).
        assert rows["hf-token"].ciphertext != rows["s3-id"].ciphertext
        # Move one ciphertext to another name: it must not open as that secret.
        s.execute(update(StoredSecret).where(StoredSecret.name == "s3-id")
                  .values(ciphertext=rows["hf-token"].ciphertext))
    r = client.post("/api/deployments", json={"spec": spec_doc()}, headers=admin_headers)
    assert r.status_code in (200, 201), r.text
    tok = {"Authorization": "Bearer ist-test-bootstrap-service-token"}
    r = client.post("/api/internal/deployments/bucket-chat/secrets", headers=tok)
    assert (r.status_code, r.json()["error"]["code"]) == (503, "secrets_unavailable")
    assert "s3-id" in r.json()["error"]["message"]
    assert_no_value(r.text)


def test_only_platform_admins_manage_secrets(client: TestClient, admin_headers: dict[str, str],
                                             factory: Factory) -> None:
    assert put(client, admin_headers, "hf-token", HF_VALUE).status_code == 201
    org = factory.org()
    owner = factory.user(org, "owner")
    client.cookies.clear()  # the admin's login cookie: the anonymous calls carry none
    for method, path, body in (("PUT", "/api/secrets/x", {"value": "v"}),
                               ("GET", "/api/secrets", None),
                               ("GET", "/api/secrets/hf-token", None),
                               ("DELETE", "/api/secrets/hf-token", None)):
        r = client.request(method, path, json=body, headers=owner.headers)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"]["code"]
        r = client.request(method, path, json=body)
        assert r.status_code == 401, (method, path, r.text)
    assert [s["name"] for s in client.get("/api/secrets", headers=admin_headers)
            .json()["items"]] == ["hf-token"]


@pytest.mark.parametrize(("name", "body", "code"), [
    ("Bad_Name", {"value": HF_VALUE}, "invalid_secret_name"),
    ("-leading", {"value": HF_VALUE}, "invalid_secret_name"),
    ("x" * 65, {"value": HF_VALUE}, "invalid_secret_name"),
    ("ok", {"value": ""}, "validation_error"),
    ("ok", {"value": HF_VALUE * 1000}, "validation_error"),
    ("ok", {"value": HF_VALUE + "\x00"}, "invalid_secret_value"),
    ("ok", {"value": HF_VALUE, "extra": HF_VALUE}, "validation_error"),
    ("ok", {"value": 12}, "validation_error"),
])
def test_bad_input_is_a_structured_error_that_never_echoes_the_value(
        client: TestClient, admin_headers: dict[str, str], name: str, body: dict[str, Any],
        code: str) -> None:
    r = client.put(f"/api/secrets/{name}", json=body, headers=admin_headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code
    assert_no_value(r.text)
    assert client.get("/api/secrets", headers=admin_headers).json()["items"] == []


def test_deployment_references_reach_only_its_replicas(
        client: TestClient, admin_headers: dict[str, str], factory: Factory,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store_all(client, admin_headers)
    assert put(client, admin_headers, "unused", "unused-value-never-fetched").status_code == 201
    r = client.post("/api/deployments", json={"spec": spec_doc()}, headers=admin_headers)
    assert r.status_code in (200, 201), r.text
    assert_no_value(r.text)
    # Every answer about the deployment: no value (literal env values read ***).
    shown = client.get("/api/deployments/gated-chat", headers=admin_headers)
    listed = client.get("/api/deployments", headers=admin_headers)
    for resp in (shown, listed):
        assert resp.status_code == 200
        assert_no_value(resp.text)
        assert "plain-literal" not in resp.text
    env = shown.json()["spec"]["env"]
    assert set(env) == {"PLAIN", "API_TOKEN"} and env["PLAIN"] == "***"
    # The secrets name the deployment using them.
    assert client.get("/api/secrets/hf-token", headers=admin_headers).json()["used_by"] \
        == ["gated-chat"]
    # The replicas (ingress scope) get exactly the referenced values.
    ingress = service_token(client, admin_headers, "ingress")
    r = client.post("/api/internal/deployments/gated-chat/secrets", headers=ingress)
    assert r.status_code == 200, r.text
    assert r.json() == {"values": {"hf-token": HF_VALUE, "env-token": ENV_VALUE}}
    r = client.post("/api/internal/deployments/bucket-chat/secrets", headers=ingress)
    assert r.json() == {"values": {"s3-id": S3_ID, "s3-key": S3_KEY}}
    # Other scopes, no token, unknown deployments: refused, structured.
    node_provider = service_token(client, admin_headers, "node_provider")
    r = client.post("/api/internal/deployments/gated-chat/secrets", headers=node_provider)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "insufficient_scope")
    r = client.post("/api/internal/deployments/gated-chat/secrets", headers=admin_headers)
    assert r.status_code == 401
    r = client.post("/api/internal/deployments/nope/secrets", headers=ingress)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "deployment_not_found")
    # The fetch is logged with names only.
    logs = client.get("/api/action-logs", headers=admin_headers,
                      params={"limit": 500, "type": "secret.fetch"})
    assert logs.status_code == 200, logs.text
    fetches = [e for e in logs.json()["items"] if e["type"] == "secret.fetch"]
    assert sorted(e["metadata"]["secrets"][0] for e in fetches) == ["env-token", "s3-id"]
    assert_no_value(logs.text)
    assert_no_value(caplog.text)
    # A referenced secret cannot be deleted (409 naming the deployment); once the deployment
    # is deleted it can.
    r = client.delete("/api/secrets/hf-token", headers=admin_headers)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "secret_in_use")
    assert r.json()["error"]["details"] == {"deployments": ["gated-chat"]}
    assert client.delete("/api/deployments/gated-chat", headers=admin_headers).status_code \
        in (200, 204)
    assert client.delete("/api/secrets/hf-token", headers=admin_headers).status_code == 204
    r = client.post("/api/internal/deployments/gated-chat/secrets", headers=ingress)
    assert r.status_code == 404


def test_the_serve_config_holds_references_not_values(
        client: TestClient, admin_headers: dict[str, str], factory: Factory) -> None:
    store_all(client, admin_headers)
    r = client.post("/api/deployments", json={"spec": spec_doc()}, headers=admin_headers)
    assert r.status_code in (200, 201), r.text
    from core.models import Deployment

    with factory._session() as s:
        specs = [d.spec for d in s.scalars(select(Deployment))]
    config = render_serve_config(ServeTarget(), specs, details=None, caps={},
                                 replica_start_s={})
    text = json.dumps(config)
    assert_no_value(text)
    assert '"secret": "hf-token"' in text


def test_missing_secret_refs_names_each_field(client: TestClient,
                                              admin_headers: dict[str, str],
                                              factory: Factory) -> None:
    assert put(client, admin_headers, "s3-id", S3_ID).status_code == 201
    spec = DeploymentFile.model_validate(spec_doc())
    with factory._session() as s:
        missing = secrets_service.missing_secret_refs(s, spec)
        assert [m.split(":")[0] for m in missing] == [
            "deployments[0].env.API_TOKEN", "deployments[0].model.hf_token",
            "deployments[1].model.s3.secret_access_key"]
        assert "'hf-token'" in missing[1]
        with pytest.raises(secrets_service.ApiError) as err:
            secrets_service.require_secret_refs(s, spec)
        assert (err.value.status_code, err.value.code) == (422, "unknown_secret")
        plain = DeploymentFile.model_validate(
            {"version": 1, "deployments": [_dep("plain", "builtin:tiny-llama")]})
        assert secrets_service.missing_secret_refs(s, plain) == []
