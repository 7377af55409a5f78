"""The ``local`` cloud: argv/env construction (the same functions cloud-init's unit is rendered
from), persistence across restarts, adoption of orphans and process-group termination -- with
real processes, but a tiny stand-in for ``ray`` (the real one runs in the e2e test)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest

from cluster.bootstrap import NodeBootstrap, render_unit, systemd_quote
from cluster.clouds.local import (
    MARK_INSTANCE,
    MARK_STATE_DIR,
    LocalCloud,
    LocalConfig,
    find_marked,
    load_local_catalog,
    local_launch_request,
    process_alive,
)
from core.clouds import (
    Cloud,
    InstanceStatus,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
)

# Writes its argv and environment, optionally ignores SIGTERM and/or leaves a child in a
# session of its own (as some Ray processes do), then blocks like `ray start --block`.
FAKE_RAY = """#!/bin/sh
for a in "$@"; do printf '%s\\n' "$a"; done > "$FAKE_RAY_OUT.argv"
env > "$FAKE_RAY_OUT.env"
if [ -n "$FAKE_RAY_SETSID" ]; then setsid sleep 300 & fi
if [ -n "$FAKE_RAY_IGNORE_TERM" ]; then trap '' TERM; fi
if [ -n "$FAKE_RAY_EXIT" ]; then exit 3; fi
exec sleep 300
"""


@pytest.fixture
def env_dir(tmp_path: Path) -> Path:
    ray = tmp_path / "fake-ray"
    ray.write_text(FAKE_RAY)
    ray.chmod(0o755)
    token = tmp_path / "ray_token"
    token.write_text("cluster-token-abc\n")
    token.chmod(0o600)
    return tmp_path


def make_cloud(env_dir: Path, **overrides: object) -> LocalCloud:
    extra_env = {"FAKE_RAY_OUT": str(env_dir / "out")}
    extra_env.update(overrides.pop("extra_env", {}))  # type: ignore[arg-type]
    settings: dict[str, object] = {"stop_grace_s": 5.0, **overrides}
    config = LocalConfig(state_dir=env_dir / "state", head_address="127.0.0.1:6379",
                         token_path=env_dir / "ray_token",
                         ray_executable=str(env_dir / "fake-ray"),
                         extra_env=extra_env, **settings)  # type: ignore[arg-type]
    return LocalCloud(config)


def request(launch_id: str = "launch-1", node_type: str = "local-L4",
            instance_type: str = "local-L4", cluster: str = "c1"):  # noqa: ANN201
    return local_launch_request(launch_id=launch_id, cluster_name=cluster, node_type=node_type,
                                instance_type=instance_type)


def wait_file(path: Path, timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            time.sleep(0.05)  # let the writer finish the file
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path} was never written")


@pytest.fixture(autouse=True)
def no_leaks(env_dir: Path):  # noqa: ANN201
    """Whatever a test started is gone afterwards (and killed here if not, so CI stays clean)."""
    yield
    left = find_marked((env_dir / "state").resolve())
    for procs in left.values():
        for pid, *_ in procs:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    assert not left, f"leaked node processes: {left}"


def test_the_local_cloud_satisfies_the_protocol(env_dir: Path) -> None:
    assert isinstance(make_cloud(env_dir), Cloud)


def test_node_argv_and_env_are_the_bootstrap_ones_cloud_init_uses(env_dir: Path) -> None:
    cloud = make_cloud(env_dir)
    node = cloud.node_bootstrap(request())
    argv = node.ray_start_args(node.ray_executable)
    assert argv == [str(env_dir / "fake-ray"), "start", "--address=127.0.0.1:6379", "--block",
                    "--disable-usage-stats", "--num-cpus=2",
                    '--resources={"accelerator_type:L4":1.0,"local_gpu_slot":1.0}']
    assert node.node_env(node.token_path) == {
        "FAKE_RAY_OUT": str(env_dir / "out"), "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(env_dir / "ray_token"),
        "RAY_CLOUD_INSTANCE_ID": "launch-1", "RAY_NODE_TYPE_NAME": "local-L4"}
    # The systemd unit a Scaleway VM runs (host mode) is rendered from the same argv and env.
    unit = render_unit(NodeBootstrap(**{**node.__dict__}))
    exec_line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_line == "ExecStart=" + " ".join([argv[0], *(systemd_quote(a) for a in argv[1:])])
    assert 'Environment="RAY_CLOUD_INSTANCE_ID=launch-1"' in unit
    assert "cluster-token-abc" not in unit  # the token travels by path


def test_instance_type_resources_can_be_overridden_and_gpu_is_a_flag(env_dir: Path) -> None:
    cloud = make_cloud(env_dir, instance_types={"local-L4": {"CPU": 1, "GPU": 1,
                                                             "accelerator_type:L4": 1}})
    node = cloud.node_bootstrap(request())
    assert node.num_cpus == 1 and node.num_gpus == 1
    assert dict(node.resources) == {"accelerator_type:L4": 1.0}
    # The price stays the catalog's.
    offer = next(o for o in cloud.catalog() if o.instance_type == "local-L4")
    assert offer.hourly_eur == Decimal("0.75")


def test_catalog_comes_from_the_seed_with_prices(env_dir: Path) -> None:
    seed = load_local_catalog()
    assert seed["local-H100"].hourly_eur == Decimal("2.73")
    assert seed["local-L4"].resources == {"CPU": 2, "local_gpu_slot": 1,
                                          "accelerator_type:L4": 1}
    offers = {o.instance_type: o for o in make_cloud(env_dir).catalog()}
    assert set(offers) == {"local-L4", "local-L40S", "local-H100"}
    assert offers["local-L40S"].hourly_eur == Decimal("1.40")
    assert all(o.availability == "available" and o.zone == "local-1" for o in offers.values())


def test_create_starts_a_real_process_with_a_minimal_env_and_persists_it(
        env_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What the launcher (the autoscaler monitor) has in its environment must not leak.
    monkeypatch.setenv("RAY_CLOUD_INSTANCE_ID", "the-head")
    monkeypatch.setenv("SOME_SECRET_OF_THE_LAUNCHER", "s3cr3t")
    cloud = make_cloud(env_dir)
    inst = cloud.create(request())
    assert inst.state is InstanceStatus.RUNNING and inst.launch_id == "launch-1"
    assert inst.private_ip == "127.0.0.1" and inst.zone == "local-1"
    assert set(inst.tags) == {"inventiv-cluster=c1", "inventiv-launch=launch-1",
                              "inventiv-node-type=local-L4"}
    argv = wait_file(env_dir / "out.argv").splitlines()
    assert argv[:3] == ["start", "--address=127.0.0.1:6379", "--block"]
    env = dict(line.split("=", 1) for line in wait_file(env_dir / "out.env").splitlines()
               if "=" in line)
    assert env["RAY_CLOUD_INSTANCE_ID"] == "launch-1"
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == str(env_dir / "ray_token")
    assert "RAY_AUTH_TOKEN" not in env and "SOME_SECRET_OF_THE_LAUNCHER" not in env
    assert env[MARK_INSTANCE] == inst.provider_instance_id
    # Its own session and process group, its own log file.
    record = next(r for r in cloud.records())
    assert record.pgid == record.pid and os.getpgid(record.pid) == record.pid
    assert Path(record.log_path).parent == (env_dir / "state" / "nodes").resolve()
    # The table survives a restart of whoever launched it.
    restarted = make_cloud(env_dir)
    assert [i.provider_instance_id for i in restarted.list_instances("c1")] == \
        [inst.provider_instance_id]
    assert restarted.list_instances("another-cluster") == []
    assert restarted.get(inst.provider_instance_id, "local-1").launch_id == "launch-1"
    assert restarted.find_by_launch_id("c1", "launch-1") is not None
    data = json.loads((env_dir / "state" / "local-cloud.json").read_text())
    assert data["instances"][inst.provider_instance_id]["state"] == "running"
    assert restarted.terminate(inst.provider_instance_id, "local-1") is True


def test_create_of_a_live_launch_adopts_it_instead_of_starting_a_second_process(
        env_dir: Path) -> None:
    cloud = make_cloud(env_dir)
    first = cloud.create(request())
    again = make_cloud(env_dir).create(request())
    assert again.provider_instance_id == first.provider_instance_id
    assert len(find_marked(cloud.state_dir)) == 1
    cloud.terminate(first.provider_instance_id, "local-1")


def test_terminate_kills_the_process_group_and_is_idempotent(env_dir: Path) -> None:
    cloud = make_cloud(env_dir, extra_env={"FAKE_RAY_SETSID": "1"})
    inst = cloud.create(request())
    wait_file(env_dir / "out.env")
    deadline = time.monotonic() + 5
    while len(find_marked(cloud.state_dir)[inst.provider_instance_id]) < 2:
        assert time.monotonic() < deadline, "the setsid child never started"
        time.sleep(0.02)
    procs = find_marked(cloud.state_dir)[inst.provider_instance_id]
    sessions = {os.getsid(pid) for pid, *_ in procs}
    assert len(sessions) == 2  # one child escaped the group, like some Ray processes do
    assert cloud.terminate(inst.provider_instance_id, "local-1") is True
    assert find_marked(cloud.state_dir) == {}
    assert all(not process_alive(pid) for pid, *_ in procs)
    assert cloud.list_instances("c1") == []
    with pytest.raises(NotFound):
        cloud.get(inst.provider_instance_id, "local-1")
    assert cloud.terminate(inst.provider_instance_id, "local-1") is True
    assert cloud.terminate("local-unknown", "local-1") is True


def test_terminate_escalates_to_sigkill_after_the_grace_period(env_dir: Path) -> None:
    cloud = make_cloud(env_dir, stop_grace_s=0.3, extra_env={"FAKE_RAY_IGNORE_TERM": "1"})
    inst = cloud.create(request())
    wait_file(env_dir / "out.env")
    assert cloud.terminate(inst.provider_instance_id, "local-1", wait=False) is False
    assert cloud.list_instances("c1")[0].state is InstanceStatus.TERMINATING
    t0 = time.monotonic()
    assert cloud.terminate(inst.provider_instance_id, "local-1") is True
    assert time.monotonic() - t0 < 3
    record = next(r for r in cloud.records())
    assert record.state == "terminated" and record.terminated_at


def test_a_node_that_exits_by_itself_is_no_longer_listed(env_dir: Path) -> None:
    cloud = make_cloud(env_dir, extra_env={"FAKE_RAY_EXIT": "1"})
    inst = cloud.create(request())
    deadline = time.monotonic() + 5
    while cloud.list_instances("c1"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    record = next(r for r in cloud.records() if r.provider_instance_id ==
                  inst.provider_instance_id)
    assert record.state == "terminated" and record.exit_reason == "exited"


def test_an_orphan_process_is_found_by_its_marker_and_can_be_terminated(env_dir: Path) -> None:
    cloud = make_cloud(env_dir)
    # A launcher that died between the spawn and the state write leaves exactly this behind.
    env = {"PATH": os.environ["PATH"], MARK_STATE_DIR: str(cloud.state_dir),
           MARK_INSTANCE: "local-orphan1", "RAY_CLOUD_INSTANCE_ID": "launch-orphan",
           "RAY_NODE_TYPE_NAME": "local-L4", "INVENTIV_LOCAL_INSTANCE_TYPE": "local-L4",
           "INVENTIV_LOCAL_TAGS": "inventiv-cluster=c1,inventiv-launch=launch-orphan,"
                                  "inventiv-node-type=local-L4"}
    proc = subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)
    try:
        listed = cloud.list_instances("c1")
        assert [(i.provider_instance_id, i.launch_id, i.node_type) for i in listed] == \
            [("local-orphan1", "launch-orphan", "local-L4")]
        assert next(r for r in cloud.records()).adopted
        assert cloud.terminate("local-orphan1", "local-1") is True
        assert proc.wait(5) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_max_nodes_is_a_quota(env_dir: Path) -> None:
    cloud = make_cloud(env_dir, max_nodes=1)
    first = cloud.create(request("a"))
    with pytest.raises(QuotaExceeded) as err:
        cloud.create(request("b"))
    assert err.value.capacity
    cloud.terminate(first.provider_instance_id, "local-1")


def test_invalid_requests_are_refused_before_any_process(env_dir: Path) -> None:
    with pytest.raises(InvalidRequest, match="unknown local instance type"):
        make_cloud(env_dir).create(request(instance_type="local-B300"))
    no_head = LocalCloud(LocalConfig(state_dir=env_dir / "state"))
    with pytest.raises(InvalidRequest, match="head_address"):
        no_head.create(request())
    assert find_marked((env_dir / "state").resolve()) == {}


def test_a_corrupt_state_file_is_an_error_not_an_empty_cloud(env_dir: Path) -> None:
    cloud = make_cloud(env_dir)
    (cloud.state_dir / "local-cloud.json").write_text("{not json")
    with pytest.raises(InvalidRequest, match="corrupt"):
        cloud.list_instances("c1")


def test_state_dir_and_token_modes(env_dir: Path) -> None:
    cloud = make_cloud(env_dir)
    assert stat.S_IMODE((env_dir / "ray_token").stat().st_mode) == 0o600
    assert LocalConfig.from_mapping({"state_dir": str(cloud.state_dir), "max_nodes": "2",
                                     "instance_types": {"x": {"CPU": "1"}}}).max_nodes == 2
    with pytest.raises(InvalidRequest, match="state_dir"):
        LocalConfig.from_mapping({})


def test_a_record_written_before_started_at_existed_is_checked_by_pid(env_dir: Path) -> None:
    # Older state files carry a /proc start tick count instead of the psutil creation time.
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        state = env_dir / "state"
        state.mkdir()
        record = {"provider_instance_id": "local-old1", "launch_id": "launch-old",
                  "cluster_name": "c1", "node_type": "local-L4", "instance_type": "local-L4",
                  "zone": "local-1", "tags": [], "state": "running",
                  "created_at": "2026-01-01T00:00:00+00:00",
                  "log_path": str(state / "nodes" / "local-old1.log"), "pid": proc.pid,
                  "pgid": proc.pid, "start_ticks": 123456}
        (state / "local-cloud.json").write_text(json.dumps(
            {"version": 1, "instances": {"local-old1": record}}))
        cloud = make_cloud(env_dir)
        assert [i.provider_instance_id for i in cloud.list_instances("c1")] == ["local-old1"]
        assert next(r for r in cloud.records()).started_at is None
        assert cloud.terminate("local-old1", "local-1") is True
        assert proc.wait(5) is not None
        assert cloud.list_instances("c1") == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_reused_pid_is_not_taken_for_the_node(env_dir: Path) -> None:
    cloud = make_cloud(env_dir)
    inst = cloud.create(request())
    record = next(r for r in cloud.records())
    assert record.started_at is not None and process_alive(record.pid, record.started_at)
    assert not process_alive(record.pid, record.started_at - 60)
    cloud.terminate(inst.provider_instance_id, "local-1")
