"""Where the node provider finds the cluster's Ray token: its config, else Ray's own places."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cluster.node_provider import resolve_ray_token
from core.clouds import InvalidRequest
from tests.cluster.conftest import ScwEnv
from tests.cluster.test_node_provider import Harness


def test_config_token_path_wins_over_ray_env(tmp_path: Path) -> None:
    (tmp_path / "t").write_text(" from-config \n")
    env = {"RAY_AUTH_TOKEN": "from-env"}
    assert resolve_ray_token(str(tmp_path / "t"), environ=env, home=tmp_path) == "from-config"


def test_ray_auth_token_env_then_path_then_home(tmp_path: Path) -> None:
    (tmp_path / "p").write_text("from-path\n")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert resolve_ray_token(None, environ={"RAY_AUTH_TOKEN": "inline",
                                            "RAY_AUTH_TOKEN_PATH": str(tmp_path / "p")},
                             home=tmp_path) == "inline"
    assert resolve_ray_token(None, environ={"RAY_AUTH_TOKEN_PATH": str(tmp_path / "p")},
                             home=tmp_path) == "from-path"
    assert resolve_ray_token(None, environ={}, home=tmp_path) == "from-home"


def test_missing_token_names_the_place_not_a_secret(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"RAY_AUTH_TOKEN_PATH .*missing.*FileNotFound"):
        resolve_ray_token(None, environ={"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")},
                          home=tmp_path)
    with pytest.raises(InvalidRequest, match=r"~/.ray/auth_token"):
        resolve_ray_token(None, environ={}, home=tmp_path)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InvalidRequest, match="empty"):
        resolve_ray_token(str(tmp_path / "empty"), environ={}, home=tmp_path)


def test_provider_without_token_path_launches_with_rays_token(
        scw: ScwEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray_file = tmp_path / "ray_auth"
    ray_file.write_text("token-from-ray-env")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(ray_file))
    h = Harness(scw, tmp_path)
    del h.config["token_path"]
    h.provider = h.new_provider()
    [node_id] = h.create()
    server = next(iter(scw.state.servers.values()))
    cloud_init = yaml.safe_load(server.user_data["cloud-init"].decode())
    token = next(f for f in cloud_init["write_files"] if f["path"] == "/etc/inventiv/ray_token")
    assert token["content"] == "token-from-ray-env"
    assert h.provider.is_running(node_id)
