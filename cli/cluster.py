"""`inventiv cluster up|down|status -f <cluster.yaml>`: the Ray head and its autoscaled nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.output import JsonOpt, fail, info, print_json, print_table
from cluster.cluster_config import ClusterConfigError, ClusterFile, load_cluster
from cluster.errors import ClusterError
from cluster.head import HeadInfo, head_for
from core.clouds import CloudError

app = typer.Typer(help="Ray clusters: start the head (local process or Scaleway VM), stop "
                       "everything, show nodes.", no_args_is_help=True)

FileOpt = Annotated[Path, typer.Option("-f", "--file", help="Cluster file, e.g. "
                                       "configs/clusters/local.yaml.", exists=False)]
StateDirOpt = Annotated[Path | None, typer.Option(
    "--state-dir", help="Override the cluster's state directory (token, YAML, node table).")]


def _load(path: Path) -> ClusterFile:
    try:
        return load_cluster(path)
    except ClusterConfigError as exc:
        raise fail("invalid_cluster_file", str(exc)) from None


@app.command("up")
def up(
    file: FileOpt,
    state_dir: StateDirOpt = None,
    update_interval: Annotated[int | None, typer.Option(
        "--update-interval", min=1, help="AUTOSCALER_UPDATE_INTERVAL_S for the monitor.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Start the cluster's Ray head with the autoscaler (v2) and our node provider."""
    cluster = _load(file)
    say = (lambda _m: None) if json_out else info
    try:
        head = head_for(cluster).up(state_dir=state_dir, update_interval_s=update_interval,
                                    on_progress=say)
    except (ClusterError, CloudError, OSError) as exc:
        raise fail("cluster_up_failed", str(exc)) from None
    if json_out:
        print_json(_head_json(head))
        return
    info(f"cluster {head.cluster_name}: Ray at {head.gcs_address}")
    if head.dashboard_url:
        info(f"dashboard: {head.dashboard_url}")
    info(f"drivers: RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={head.token_path} "
         f"RAY_ADDRESS={head.gcs_address}")


@app.command("down")
def down(file: FileOpt, state_dir: StateDirOpt = None, json_out: JsonOpt = False) -> None:
    """Stop the head and every node the cluster started (nothing is left running)."""
    cluster = _load(file)
    say = (lambda _m: None) if json_out else info
    try:
        result = head_for(cluster).down(state_dir=state_dir, on_progress=say).as_dict()
    except (ClusterError, CloudError, OSError) as exc:
        raise fail("cluster_down_failed", str(exc)) from None
    if json_out:
        print_json(result)
    else:
        info(f"cluster {cluster.cluster_name} is down ({result})")


@app.command("status")
def status(file: FileOpt, state_dir: StateDirOpt = None, json_out: JsonOpt = False) -> None:
    """The cluster's instances (cloud listing) and its Ray nodes."""
    cluster = _load(file)
    try:
        report = head_for(cluster).status(state_dir=state_dir)
    except (ClusterError, CloudError, OSError) as exc:
        raise fail("cluster_status_failed", str(exc)) from None
    instances, ray_nodes, ray_error, head = report.instances, report.ray_nodes, \
        report.ray_error, report.head
    rows = [{"provider_instance_id": i.provider_instance_id, "launch_id": i.launch_id,
             "node_type": i.node_type, "instance_type": i.instance_type, "zone": i.zone,
             "state": i.state.value, "private_ip": i.private_ip, "public_ip": i.public_ip,
             "created_at": i.created_at} for i in instances]
    if json_out:
        print_json({"cluster_name": cluster.cluster_name,
                    "head": _head_json(head) if head else None, "instances": rows,
                    "ray_nodes": ray_nodes, "ray_error": ray_error})
        return
    if head is not None:
        info(f"head {head.head_instance_id} at {head.gcs_address}"
             + (f", dashboard {head.dashboard_url}" if head.dashboard_url else ""))
    print_table(f"Instances of {cluster.cluster_name}",
                ["id", "launch id", "node type", "type", "zone", "state", "private ip",
                 "created"],
                [(r["provider_instance_id"], r["launch_id"], r["node_type"], r["instance_type"],
                  r["zone"], r["state"], r["private_ip"], r["created_at"]) for r in rows],
                empty="no instance")
    if ray_nodes:
        print_table("Ray nodes", ["ray node id", "instance id", "node type", "state", "head",
                                  "resources"],
                    [(n["ray_node_id"][:16], n["instance_id"], n["node_type"], n["state"],
                      n["is_head"], n["resources"]) for n in ray_nodes])
    elif ray_error:
        info(f"Ray unreachable: {ray_error}")


def _head_json(head: HeadInfo) -> dict[str, object]:
    return {"cluster_name": head.cluster_name, "cloud": head.cloud,
            "head_instance_id": head.head_instance_id, "gcs_address": head.gcs_address,
            "dashboard_url": head.dashboard_url, "token_path": head.token_path,
            "ray_config_path": head.ray_config_path, "state_dir": head.state_dir,
            "provider_instance_id": head.provider_instance_id, "pid": head.pid,
            "ports": head.ports}
