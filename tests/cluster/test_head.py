"""The head's shared pieces and dispatch (cluster/head.py): one ``Head`` per cloud, one GCS probe,
one error root; the local head's process supervision runs for real in test_ray_autoscaler_e2e.py,
the Scaleway head's cloud-init in test_node_provider.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cluster.clouds.local_head import LocalHead
from cluster.clouds.scaleway_head import ScalewayHead
from cluster.cluster_config import ClusterConfigError, ClusterFile, parse_cluster
from cluster.errors import ClusterError
from cluster.head import HeadError, head_for, ray_nodes
from core.ray_private import GcsProbe, RayNode
from tests.cluster.conftest import ZONES, ScwEnv


def local_cluster(tmp_path: Path, instance_type: str = "local-L4") -> ClusterFile:
    return parse_cluster({"cluster_name": "c1", "cloud": "local",
                          "state_dir": str(tmp_path / "state"),
                          "node_types": {"l4": {"instance_type": instance_type}}})


def scaleway_cluster(tmp_path: Path) -> ClusterFile:
    return parse_cluster({
        "cluster_name": "c1", "cloud": "scaleway", "state_dir": str(tmp_path / "state"),
        "scaleway": {"zones": list(ZONES), "private_network_id": "pn-1",
                     "private_network_name": "pn"},
        "head": {"instance_type": "POP2-4C-16G", "image": "ubuntu_noble",
                 "security_group_id": "sg-head"},
        "node_types": {"gpu-l4": {"instance_type": "L4-1-24G", "image": "ubuntu_noble_gpu"}},
    })


def test_each_cloud_gets_its_own_head(tmp_path: Path) -> None:
    assert isinstance(head_for(local_cluster(tmp_path)), LocalHead)
    assert isinstance(head_for(scaleway_cluster(tmp_path)), ScalewayHead)


def test_the_package_has_one_error_root_and_keeps_the_builtin_bases() -> None:
    assert issubclass(HeadError, ClusterError) and issubclass(HeadError, RuntimeError)
    assert issubclass(ClusterConfigError, ClusterError)
    assert issubclass(ClusterConfigError, ValueError)


def test_the_scaleway_head_goes_up_lists_and_comes_down(scw: ScwEnv, tmp_path: Path) -> None:
    cluster = scaleway_cluster(tmp_path)
    head = ScalewayHead(cluster, cloud=scw.cloud())
    info = head.up()
    assert info.cloud == "scaleway" and info.gcs_address == "c1-head.pn.internal:6379"
    report = head.status()
    assert report.head == info  # read back from the state dir's head.json
    assert [i.node_type for i in report.instances] == ["head"]
    assert report.ray_nodes == [] and report.ray_error is None
    assert head.down().as_dict() == {"vms_terminated": 1}
    assert scw.servers() == []


def test_local_down_reports_what_the_cli_prints(tmp_path: Path) -> None:
    report = head_for(local_cluster(tmp_path)).down()
    assert report.as_dict() == {"head_stopped": False, "nodes_stopped": 0,
                                "stray_groups_killed": 0}


def test_ray_nodes_asks_the_one_gcs_probe_with_our_token(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    asked: list[str] = []

    def nodes(self: GcsProbe) -> list[RayNode]:
        asked.append(self.gcs_address)
        return [RayNode(ray_node_id="ab" * 14, instance_id="c1-head-1", node_type="head",
                        address="127.0.0.1", state="ALIVE", is_head=True,
                        resources={"CPU": 0.0})]

    monkeypatch.setattr(GcsProbe, "nodes", nodes)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "leaked")
    # ray_nodes sets these in the process: recorded here so that they are restored afterwards.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/nonexistent")
    token = tmp_path / "ray_token"
    assert ray_nodes("127.0.0.1:6379", str(token)) == [{
        "ray_node_id": "ab" * 14, "instance_id": "c1-head-1", "node_type": "head",
        "address": "127.0.0.1", "state": "ALIVE", "is_head": True, "resources": {"CPU": 0.0}}]
    assert asked == ["127.0.0.1:6379"]
    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(token)
    assert "RAY_AUTH_TOKEN" not in os.environ


def test_cli_maps_a_cluster_error_of_up_to_one_line(tmp_path: Path) -> None:
    """A node type whose instance type the catalog does not know (and no resources given)."""
    from cli.cluster import app

    path = tmp_path / "c.yaml"
    path.write_text(f"cluster_name: c1\ncloud: local\nstate_dir: {tmp_path / 's'}\n"
                    "head: {port: 0, dashboard_port: 0, ray_client_server_port: 0}\n"
                    "node_types: {b: {instance_type: local-B300}}\n")
    result = CliRunner().invoke(app, ["up", "-f", str(path)])
    assert result.exit_code == 1
    assert "cluster_up_failed" in result.output
    assert "'local-B300' is not in the local catalog" in result.output


def test_the_head_vm_entry_point_still_answers(tmp_path: Path) -> None:
    """``python -m cluster.head exec-head <config>`` is what the head VM's unit runs."""
    done = subprocess.run([sys.executable, "-m", "cluster.head"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "usage: python -m cluster.head exec-head|forget-user-data <config.json>" in done.stderr
