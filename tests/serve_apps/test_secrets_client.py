"""serve_apps.secrets, the replica's side of stored secrets, against a real control API (uvicorn
on a socket, real database): fetch by deployment, refusals as ``SecretsUnavailable`` codes
with no value in them, 0600 files, env resolution."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from control_api.settings import Settings
from serve_apps.secrets import (
    SecretsUnavailable,
    fetch_deployment_secrets,
    resolve_env,
    write_secret_file,
)
from tests.client.conftest import ServerThread, free_port
from tests.conftest import ADMIN_PASSWORD

HF_VALUE = "hf_client-side-value-never-in-errors"
ENV_VALUE = "env-client-side-value-never-in-errors"
SPEC = {"version": 1, "deployments": [{
    "name": "gated",
    "model": {"name": "gated-model", "source": "hf:meta-llama/tiny",
              "hf_token": {"secret": "hf-token"}},
    "engine": {"max_model_len": 512},
    "limits": {"max_tokens": 64},
    "env": {"PLAIN": "literal", "API_TOKEN": {"secret": "env-token"}},
}]}


@pytest.fixture
def live(db: sessionmaker[Session], settings: Settings) -> Iterator[ServerThread]:
    server = ServerThread(settings, free_port()).start()
    yield server
    server.stop()


def _admin(url: str) -> dict[str, str]:
    r = httpx.post(f"{url}/api/auth/login",
                   json={"username": "admin", "password": ADMIN_PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _token_file(url: str, admin: dict[str, str], component: str, path: Path) -> str:
    r = httpx.post(f"{url}/api/service-tokens", headers=admin,
                   json={"name": f"t-{component}", "component": component})
    assert r.status_code == 201, r.text
    path.write_text(r.json()["token"] + "\n")
    return str(path)


@pytest.fixture
def stored(live: ServerThread, tmp_path: Path) -> dict[str, Any]:
    admin = _admin(live.url)
    for name, value in (("hf-token", HF_VALUE), ("env-token", ENV_VALUE)):
        r = httpx.put(f"{live.url}/api/secrets/{name}", headers=admin, json={"value": value})
        assert r.status_code == 201, r.text
    r = httpx.post(f"{live.url}/api/deployments", headers=admin, json={"spec": SPEC})
    assert r.status_code in (200, 201), r.text
    return {"url": live.url,
            "ingress": _token_file(live.url, admin, "ingress", tmp_path / "ingress"),
            "node_provider": _token_file(live.url, admin, "node_provider", tmp_path / "np")}


def test_fetch_then_resolve_env_and_write_files(stored: dict[str, Any], tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    values = fetch_deployment_secrets(stored["url"], stored["ingress"], "gated")
    assert values == {"hf-token": HF_VALUE, "env-token": ENV_VALUE}
    env = resolve_env(SPEC["deployments"][0]["env"], values)  # type: ignore[index]
    assert env == {"PLAIN": "literal", "API_TOKEN": ENV_VALUE}
    directory = tmp_path / "run" / "secrets"
    path = write_secret_file(directory, "hf-token", values["hf-token"])
    assert path == directory / "hf-token" and path.read_text() == HF_VALUE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    # Rewritten in place (atomic replace), no temp file left behind.
    write_secret_file(directory, "hf-token", "rotated")
    assert path.read_text() == "rotated" and os.listdir(directory) == ["hf-token"]
    assert HF_VALUE not in caplog.text and ENV_VALUE not in caplog.text


@pytest.mark.parametrize(("which", "deployment", "code"), [
    ("node_provider", "gated", "insufficient_scope"),
    ("bogus", "gated", "invalid_service_token"),
    ("missing-file", "gated", "invalid_service_token"),
    ("ingress", "no-such-deployment", "not_found"),
])
def test_refusals_are_coded_and_hold_no_value(stored: dict[str, Any], tmp_path: Path,
                                              which: str, deployment: str, code: str) -> None:
    token_file = str(stored.get(which))
    if which == "bogus":
        token_file = str(tmp_path / "bogus")
        Path(token_file).write_text("ist-not-a-real-token")
    elif which == "missing-file":
        token_file = str(tmp_path / "absent")
    with pytest.raises(SecretsUnavailable) as err:
        fetch_deployment_secrets(stored["url"], token_file, deployment)
    assert err.value.code == code
    assert deployment in err.value.message or which in ("bogus", "missing-file")
    for text in (str(err.value), repr(err.value)):
        assert HF_VALUE not in text and ENV_VALUE not in text
        assert "ist-not-a-real-token" not in text


def test_unreachable_control_api_is_unavailable(tmp_path: Path) -> None:
    token = tmp_path / "tok"
    token.write_text("ist-some-token-value")
    with pytest.raises(SecretsUnavailable) as err:
        fetch_deployment_secrets(f"http://127.0.0.1:{free_port()}", str(token), "gated",
                                 timeout=2, attempts=2)
    assert err.value.code == "unavailable"
    assert "ist-some-token-value" not in str(err.value)


def test_resolve_env_names_a_missing_secret_and_write_refuses_paths(tmp_path: Path) -> None:
    with pytest.raises(SecretsUnavailable) as err:
        resolve_env({"A": {"secret": "gone"}}, {})
    assert err.value.code == "missing_secret" and "A" in err.value.message
    with pytest.raises(SecretsUnavailable):
        resolve_env({"A": {"nope": "x"}}, {})
    for bad in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(ValueError):
            write_secret_file(tmp_path, bad, "v")
    assert list(tmp_path.iterdir()) == []
