"""The head's control plane as its cloud-init renders it: the control API on the cluster file's
database (password from the environment, never in the file), Caddy on 443 only (own certificate
in the box, ACME with TLS-ALPN in production), the secrets in 0600 files only."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.clouds.scaleway_head import (
    API_UNIT,
    FRONT_DOOR_UNIT,
    HEAD_UNIT,
    SCW_CADDYFILE,
    SCW_DATABASE_URL_PATH,
    SCW_TLS_KEY,
    HeadControlPlane,
    HeadError,
    database_url_with_password,
    head_control_plane,
    render_caddyfile,
    render_head_cloud_init,
)
from cluster.cluster_config import ClusterConfigError, load_cluster, parse_cluster
from cluster.fake_scaleway.cloudinit import parse_unit, parse_user_data

REPO = Path(__file__).resolve().parents[2]
BOX = REPO / "configs" / "clusters" / "box.yaml"
PROD = REPO / "configs" / "clusters" / "scaleway.yaml"


def box_data() -> dict[str, Any]:
    return dict(yaml.safe_load(BOX.read_text()))


def rendered(plane: HeadControlPlane) -> dict[str, Any]:
    cluster = load_cluster(BOX)
    text = render_head_cloud_init(cluster, head_instance_id="h-1", ray_token="tok",
                                  scw_env={"SCW_SECRET_KEY": "scw"}, control_plane=plane)
    parse_user_data(text)  # what the booting fake accepts
    return dict(yaml.safe_load(text))


def test_password_in_the_database_url_is_refused_naming_the_field() -> None:
    data = box_data()
    data["control_api"]["database_url"] = "postgresql://inventiv:hunter2@db.internal/inventiv"
    with pytest.raises(ClusterConfigError, match="control_api.database_url.*must not contain a"
                                                 " password") as err:
        parse_cluster(data)
    assert "hunter2" not in str(err.value)


def test_a_half_certificate_pair_is_refused() -> None:
    data = box_data()
    del data["front_door"]["tls_key_file"]
    with pytest.raises(ClusterConfigError, match="front_door.*tls_cert_file and tls_key_file"):
        parse_cluster(data)


def test_database_password_comes_from_the_named_variable() -> None:
    cluster = load_cluster(BOX)
    with pytest.raises(HeadError, match="export INVENTIV_DATABASE_PASSWORD"):
        database_url_with_password(cluster, {})
    url = database_url_with_password(cluster, {"INVENTIV_DATABASE_PASSWORD": "p@ss/w:rd"})
    assert url == "postgresql://inventiv:p%40ss%2Fw%3Ard@box-db.box.internal:5432/inventiv"


def test_head_control_plane_reads_the_certificate_and_keeps_the_admin_password(
        tmp_path: Path) -> None:
    data = box_data()
    (tmp_path / "c.pem").write_text("CERT")
    (tmp_path / "k.pem").write_text("KEY")
    data["front_door"].update(tls_cert_file=str(tmp_path / "c.pem"),
                              tls_key_file=str(tmp_path / "k.pem"))
    cluster = parse_cluster(data)
    plane = head_control_plane(cluster, tmp_path, {"INVENTIV_DATABASE_PASSWORD": "pw"})
    assert (plane.tls_cert_pem, plane.tls_key_pem) == ("CERT", "KEY")
    assert plane.admin_password == (tmp_path / "admin_password").read_text().strip()
    assert oct((tmp_path / "admin_password").stat().st_mode & 0o777) == "0o600"
    # Generated once: a second `up` hands the head the same password.
    assert head_control_plane(cluster, tmp_path, {"INVENTIV_DATABASE_PASSWORD": "pw"}) \
        .admin_password == plane.admin_password
    assert "pw" not in repr(plane) and "KEY" not in repr(plane)
    (tmp_path / "k.pem").unlink()
    with pytest.raises(HeadError, match="cannot read the certificate or key"):
        head_control_plane(cluster, tmp_path, {"INVENTIV_DATABASE_PASSWORD": "pw"})


def test_the_control_plane_units_start_after_the_head_and_before_forgetting_user_data() -> None:
    config = rendered(HeadControlPlane(database_url="postgresql://u:db-pw-4711@h/db",
                                       admin_password="admin-pw-0815", tls_cert_pem="C",
                                       tls_key_pem="K"))
    files = {f["path"]: f for f in config["write_files"]}
    for path in (SCW_DATABASE_URL_PATH, "/etc/inventiv/admin_password", SCW_TLS_KEY):
        assert files[path]["permissions"] == "0600", path
    assert files[SCW_DATABASE_URL_PATH]["content"] == "postgresql://u:db-pw-4711@h/db"
    starts = [c[-1] for c in config["runcmd"] if c[:3] == ["systemctl", "enable", "--now"]]
    assert starts == [HEAD_UNIT, API_UNIT, FRONT_DOOR_UNIT]
    assert config["runcmd"][-1][-2:] == ["forget-user-data", "/etc/inventiv/head.json"]
    api = parse_unit(API_UNIT, files[f"/etc/systemd/system/{API_UNIT}"]["content"])
    # Bound to the head's private name; secrets by file, never by value in the unit.
    assert api.exec_start[-4:] == ["--host", "box-head.box.internal", "--port", "8080"]
    assert api.environment["INVENTIV_DATABASE_URL_FILE"] == SCW_DATABASE_URL_PATH
    assert api.environment["INVENTIV_TRUSTED_PROXIES"] == "127.0.0.1"
    unit_text = json.dumps([f["content"] for p, f in files.items() if p.endswith(".service")])
    assert "db-pw-4711" not in unit_text and "admin-pw-0815" not in unit_text
    door = parse_unit(FRONT_DOOR_UNIT, files[f"/etc/systemd/system/{FRONT_DOOR_UNIT}"]["content"])
    assert door.exec_start == ["/usr/bin/caddy", "run", "--config", SCW_CADDYFILE, "--adapter",
                               "caddyfile"]


def test_without_database_or_front_door_no_control_plane_is_rendered() -> None:
    data = box_data()
    del data["control_api"], data["front_door"]
    cluster = parse_cluster(data)
    config = yaml.safe_load(render_head_cloud_init(cluster, head_instance_id="h", ray_token="t",
                                                   scw_env={}))
    paths = {f["path"] for f in config["write_files"]}
    assert f"/etc/systemd/system/{API_UNIT}" not in paths and SCW_CADDYFILE not in paths


def _adapt(caddyfile: str, tmp_path: Path) -> dict[str, Any]:
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("caddy is not installed (Debian: apt-get install caddy)")
    path = tmp_path / "Caddyfile"
    path.write_text(caddyfile)
    done = subprocess.run([caddy, "adapt", "--config", str(path), "--adapter", "caddyfile"],  # noqa: S603
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.mark.parametrize("source", [BOX, PROD])
def test_caddy_listens_on_443_only_without_admin(source: Path, tmp_path: Path) -> None:
    cluster = load_cluster(source)
    own = source == BOX
    adapted = _adapt(render_caddyfile(cluster, upstream_host="10.0.0.2", own_certificate=own),
                     tmp_path)
    assert adapted["admin"] == {"disabled": True}
    servers = adapted["apps"]["http"]["servers"]
    assert [s["listen"] for s in servers.values()] == [[":443"]]
    [server] = servers.values()
    routes = json.dumps(server["routes"])
    assert '"dial": "10.0.0.2:8000"' in routes and '"dial": "10.0.0.2:8080"' in routes
    assert '"/v1/*"' in routes
    tls = adapted["apps"]["tls"]
    if own:
        assert server["automatic_https"] == {"disable": True}
        assert tls["certificates"]["load_files"][0]["key"] == SCW_TLS_KEY
    else:
        [policy] = tls["automation"]["policies"]
        assert policy["subjects"] == ["inventiv.example.com"]
        # No HTTP-01 (it needs :80, closed by the head's group): TLS-ALPN on 443.
        assert policy["issuers"][0]["challenges"]["http"] == {"disabled": True}
