"""The real thing: Ray 2.60's autoscaler v2 with our node provider on the ``local`` cloud.

A task needing ``{"local_gpu_slot": 1}`` (which the token-authenticated head, started with no
resources, cannot run) makes the autoscaler launch a ``local-L4`` node through
``InventivNodeProvider``; the node joins with ``RAY_CLOUD_INSTANCE_ID=<launch id>``, the task
runs on it, and once idle (``idle_timeout_minutes: 0.2``) the node is terminated and its
processes are gone. The control API (real HTTP, uvicorn in a thread, both database backends)
shows the instance going requested -> provisioning -> booting -> ready -> terminating ->
terminated, with history rows, action logs and a closed billing interval.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cluster.clouds.local import LocalCloud, LocalConfig, find_marked
from control_api.settings import Settings
from core.models import (
    ActionLog,
    BillingInterval,
    Instance,
    InstanceState,
    InstanceStateHistory,
)
from tests.cluster.ray_fixtures import (  # noqa: F401 (fixtures)
    NODE_TYPE,
    LocalRayCluster,
    local_ray_cluster,
    run_driver,
    serve_control_api,
)

T = TypeVar("T")


def wait_for(what: str, fn: Callable[[], T | None], timeout_s: float, poll_s: float = 0.25) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)


def test_task_launches_a_node_that_joins_runs_it_and_is_terminated_when_idle(
        local_ray_cluster: LocalRayCluster, db: sessionmaker[Session],  # noqa: F811
        settings: Settings) -> None:
    cluster = local_ray_cluster
    api = serve_control_api(settings, cluster.control_api_port)
    cloud = LocalCloud(LocalConfig(state_dir=cluster.state_dir))
    try:
        before = {r.provider_instance_id for r in cloud.records()}

        driver = """
            import json, os, time
            import ray

            ray.init(logging_level="WARNING", log_to_driver=False)

            @ray.remote(resources={"local_gpu_slot": 1}, num_cpus=1)
            def where():
                return {"instance_id": os.environ.get("RAY_CLOUD_INSTANCE_ID"),
                        "node_type": os.environ.get("RAY_NODE_TYPE_NAME"),
                        "auth_mode": os.environ.get("RAY_AUTH_MODE"),
                        "ray_node_id": ray.get_runtime_context().get_node_id()}

            submitted = time.time()
            result = ray.get(where.remote(), timeout=90)
            result["submitted"] = submitted
            result["ran"] = time.time()
            result["slots"] = {n["NodeID"]: n["Resources"].get("local_gpu_slot")
                               for n in ray.nodes() if n["Alive"]}
            print(json.dumps(result))
        """
        t_start = time.time()
        result = run_driver(cluster, driver)
        records = [r for r in cloud.records() if r.provider_instance_id not in before
                   and r.node_type == NODE_TYPE]
        assert len(records) == 1, records  # one node for one task, not two
        record = records[0]
        t_submit, t_ran = result["submitted"], result["ran"]
        requested_at = datetime.fromisoformat(record.created_at).timestamp()

        # The node is the one our provider launched, identified by its launch id everywhere.
        launch_id = record.launch_id
        assert result["instance_id"] == launch_id
        assert result["node_type"] == NODE_TYPE
        assert result["auth_mode"] == "token"
        assert result["slots"][result["ray_node_id"]] == 1.0
        assert not record.adopted
        assert t_start <= t_submit <= requested_at <= t_ran

        # Idle: drained and terminated by the autoscaler, and every process of it is gone.
        def gone() -> bool:
            rec = next(r for r in cloud.records()
                       if r.provider_instance_id == record.provider_instance_id)
            return rec.state == "terminated" and \
                record.provider_instance_id not in find_marked(cluster.state_dir)
        wait_for("the idle node to be terminated", gone, timeout_s=60)
        t_terminated = time.time()

        # The control API saw the whole lifecycle (delivered from the provider's spool).
        def instance() -> Instance | None:
            with db() as s:
                inst = s.scalar(select(Instance).where(Instance.launch_id == launch_id))
                return inst if inst is not None and \
                    inst.state == InstanceState.TERMINATED else None
        inst = wait_for("the control API to record the termination", instance, timeout_s=30)
        with db() as s:
            history = list(s.scalars(select(InstanceStateHistory).where(
                InstanceStateHistory.instance_id == inst.id).order_by(InstanceStateHistory.id)))
            logs = list(s.scalars(select(ActionLog).where(ActionLog.instance_id == inst.id)))
            intervals = list(s.scalars(select(BillingInterval).where(
                BillingInterval.instance_id == inst.id)))
        states = [h.to_state.value for h in history]
        assert states == ["requested", "provisioning", "booting", "ready", "terminating",
                          "terminated"], states
        assert inst.provider_code == "local"
        assert inst.instance_type_name == "local-L4"
        assert inst.cluster_name == "e2e"
        assert inst.node_type == NODE_TYPE
        assert inst.provider_instance_id == record.provider_instance_id
        assert inst.ray_node_id == result["ray_node_id"]
        types = [entry.type for entry in logs]
        assert types.count("instance.created") == 1
        assert types.count("instance.transition") == 5
        assert "billing.interval_opened" in types and "billing.interval_closed" in types
        assert len(intervals) == 1 and intervals[0].ended_at is not None
        history_at = {h.to_state.value: h.at for h in history}
        timings = {
            "requested_after_submit_s": round(requested_at - t_submit, 1),
            "task_ran_after_submit_s": round(t_ran - t_submit, 1),
            "terminated_after_task_s": round(t_terminated - t_ran, 1),
            "joined_after_requested_s": round(
                (history_at["ready"] - history_at["requested"]).total_seconds(), 1),
            "terminating_to_terminated_s": round(
                (history_at["terminated"] - history_at["terminating"]).total_seconds(), 1),
            "head_start_s": round(cluster.started_in_s, 1),
        }
        print("e2e timings:", json.dumps(timings))
        assert t_ran - t_submit < 60
    finally:
        api.stop()


def test_cluster_status_cli_shows_the_head_and_its_ray_node(
        local_ray_cluster: LocalRayCluster) -> None:  # noqa: F811
    cluster = local_ray_cluster
    proc = subprocess.run(
        [sys.executable, "-c", "from cli.cluster import app; app()", "status", "-f",
         str(cluster.cluster_file), "--json"], capture_output=True, text=True, timeout=60,
        check=False)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["head"]["head_instance_id"] == cluster.head.head_instance_id
    heads = [i for i in status["instances"] if i["node_type"] == "head"]
    assert [h["launch_id"] for h in heads] == [cluster.head.head_instance_id]
    assert status["ray_error"] is None
    ray_heads = [n for n in status["ray_nodes"] if n["is_head"] and n["state"] == "ALIVE"]
    # The head's raylet reports the id the provider lists it under: v2 can match them.
    assert [n["instance_id"] for n in ray_heads] == [cluster.head.head_instance_id]
    assert ray_heads[0]["node_type"] == "head"
    assert "CPU" not in ray_heads[0]["resources"]  # the head runs no task
