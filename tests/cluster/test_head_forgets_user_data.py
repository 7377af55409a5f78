"""The head VM deletes its own user data (which carried the SCW secret) once booted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from cluster.clouds.scaleway_head import up_scaleway
from cluster.fake_scaleway import FAKE_SECRET_KEY
from tests.cluster.conftest import ScwEnv
from tests.cluster.test_node_provider import REPO, scaleway_cluster


def test_head_cloud_init_ends_by_deleting_its_user_data(scw: ScwEnv, tmp_path: Path) -> None:
    cluster = scaleway_cluster()
    head = up_scaleway(cluster, cloud=scw.cloud(), state_dir=tmp_path / "state")
    [server] = scw.state.servers.values()
    config = yaml.safe_load(server.user_data["cloud-init"].decode())
    assert config["runcmd"][-1] == [cluster.head.python_executable, "-m", "cluster.head",
                                    "forget-user-data", "/etc/inventiv/head.json"]
    files = {f["path"]: f["content"] for f in config["write_files"]}
    exec_config = json.loads(files["/etc/inventiv/head.json"])
    assert exec_config["launch_id"] == head.head_instance_id
    assert exec_config["scw_env_file"] == "/etc/inventiv/scw.env"
    assert FAKE_SECRET_KEY not in files["/etc/inventiv/head.json"]
    # Run the command as the VM would, with the files cloud-init wrote (paths moved under tmp).
    env_file = tmp_path / "scw.env"
    env_file.write_text(files["/etc/inventiv/scw.env"])
    exec_config["scw_env_file"] = str(env_file)
    head_json = tmp_path / "head.json"
    head_json.write_text(json.dumps(exec_config))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "cluster.head", "forget-user-data",
                           str(head_json)], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "cloud-init" not in server.user_data
    assert FAKE_SECRET_KEY not in done.stdout + done.stderr
    assert [c["status"] for c in scw.calls("delete_user_data")] == [204]
    # Idempotent: a rerun (e.g. a reboot re-running it) succeeds with nothing left to delete.
    again = subprocess.run([sys.executable, "-m", "cluster.head", "forget-user-data",
                            str(head_json)], env=env, capture_output=True, text=True,
                           timeout=60, check=False)
    assert again.returncode == 0, again.stderr


def test_forget_user_data_fails_clearly_when_the_vm_is_not_found(
        scw: ScwEnv, tmp_path: Path) -> None:
    from cluster.clouds.scaleway_head import forget_own_user_data

    path = tmp_path / "head.json"
    path.write_text(json.dumps({"cluster_name": "c1", "launch_id": "nope",
                                "zones": ["fr-par-2"], "scw_env_file": "/nonexistent"}))
    said: list[str] = []
    try:
        forget_own_user_data(str(path), cloud=scw.cloud(), attempts=2, sleep=lambda _s: None,
                             say=said.append)
    except SystemExit as exc:
        assert "could not delete the head's user data" in str(exc)
    else:
        raise AssertionError("expected SystemExit")
    assert len(said) == 2
