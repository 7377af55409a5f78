"""``InventivNodeProvider`` against the fake Scaleway API over HTTP with the real SDK: identity
(node id = launch id = RAY_CLOUD_INSTANCE_ID), the cache reflecting its own creates and
terminates at once, head listing and refusal, NodeLaunchException on capacity errors, thread
safety, restarts, and lifecycle reporting through a spool that survives a control API that is
down."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler.node_launch_exception import NodeLaunchException
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    TAG_RAY_LAUNCH_REQUEST,
    TAG_RAY_NODE_KIND,
    TAG_RAY_USER_NODE_TYPE,
)

from cluster.cluster_config import (
    COMMAND_KEYS,
    ClusterConfigError,
    load_cluster,
    parse_cluster,
    render_ray_config,
)
from cluster.node_provider import InventivNodeProvider, LifecycleReporter, ProviderSettings
from control_api.client.internal import InternalClient
from tests.cluster.conftest import ZONES, ScwEnv

CLUSTER = "c1"
HEAD_ID = "c1-head-0001"
NODE_CONFIG = {"instance_type": "L4-1-24G", "image": "ubuntu_noble_gpu_os_13_nvidia",
               "root_volume_gb": 125}
RESOURCES = {"CPU": 8, "GPU": 1, "accelerator_type:L4": 1}
REPO = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_tags(request_id: str = "req-1", node_type: str = "gpu-l4") -> dict[str, str]:
    return {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: node_type,
            TAG_RAY_LAUNCH_REQUEST: request_id}


class Harness:
    """A provider on the fake, with a reporter whose control API is down (events spool)."""

    def __init__(self, scw: ScwEnv, tmp_path: Path, **config: Any) -> None:
        self.scw = scw
        self.tmp_path = tmp_path
        token = tmp_path / "ray_token"
        token.write_text("ray-cluster-token-xyz")
        self.spool = tmp_path / "spool"
        self.client = InternalClient(f"http://127.0.0.1:{closed_port()}", "svc-token",
                                     spool_dir=self.spool, max_retries=0, timeout=0.5)
        self.config: dict[str, Any] = {
            "type": "external", "module": "cluster.node_provider.InventivNodeProvider",
            "cloud": "scaleway", "zones": list(ZONES), "head_address": "10.0.0.2:6379",
            "head_instance_id": HEAD_ID, "token_path": str(token), "cache_ttl_s": 3600,
            "membership_poll_s": 0, "private_network_id": "pn-workers",
        }
        self.config.update(config)
        self.alive: dict[str, str] = {}
        self.reporter = LifecycleReporter(self.client, cluster_name=CLUSTER,
                                          provider="scaleway", retry_interval_s=3600)
        self.provider = self.new_provider()

    def new_provider(self, cloud: Any | None = None) -> InventivNodeProvider:
        return InventivNodeProvider(self.config, CLUSTER, cloud=cloud or self.scw.cloud(),
                                    reporter=self.reporter, membership=lambda: dict(self.alive))

    def create(self, count: int = 1, **tags: str) -> list[str]:
        before = set(self.provider.non_terminated_nodes({}))
        self.provider.create_node_with_resources_and_labels(
            dict(NODE_CONFIG), worker_tags(**tags), count, dict(RESOURCES), {})
        return sorted(set(self.provider.non_terminated_nodes({})) - before)

    def events(self, launch_id: str | None = None) -> list[dict[str, Any]]:
        out = []
        for path in sorted((self.spool / "lifecycle").glob("[0-9]*.json")):
            for ev in json.loads(path.read_text())["body"]["events"]:
                if launch_id is None or ev["launch_id"] == launch_id:
                    out.append(ev)
        return out

    def states(self, launch_id: str) -> list[str]:
        return [e["state"] for e in self.events(launch_id)]


@pytest.fixture
def h(scw: ScwEnv, tmp_path: Path) -> Harness:
    return Harness(scw, tmp_path)


def test_created_node_id_is_the_launch_id_carried_by_tags_and_cloud_init(h: Harness) -> None:
    [node_id] = h.create()
    server = next(s for s in h.scw.state.servers.values())
    assert f"inventiv-launch={node_id}" in server.tags
    assert "inventiv-cluster=c1" in server.tags and "inventiv-node-type=gpu-l4" in server.tags
    cloud_init = yaml.safe_load(server.user_data["cloud-init"].decode())
    unit = next(f["content"] for f in cloud_init["write_files"]
                if f["path"].endswith(".service"))
    assert f'Environment="RAY_CLOUD_INSTANCE_ID={node_id}"' in unit
    assert 'Environment="RAY_NODE_TYPE_NAME=gpu-l4"' in unit
    assert '"--address=10.0.0.2:6379"' in unit and '"--num-gpus=1"' in unit
    assert '"--num-cpus=8"' in unit
    token_file = next(f for f in cloud_init["write_files"] if f["path"] ==
                      "/etc/inventiv/ray_token")
    assert token_file["content"] == "ray-cluster-token-xyz"
    assert token_file["permissions"] == "0600"
    assert server.dynamic_ip_required is False  # workers have no public IP
    assert h.provider.is_running(node_id)
    assert h.provider.internal_ip(node_id).startswith("172.16.")
    tags = h.provider.node_tags(node_id)
    assert tags[TAG_RAY_NODE_KIND] == NODE_KIND_WORKER
    assert tags[TAG_RAY_USER_NODE_TYPE] == "gpu-l4"
    assert tags[TAG_RAY_LAUNCH_REQUEST] == "req-1"


def test_head_is_listed_as_head_and_never_terminated(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    assert h.provider.non_terminated_nodes({}) == [HEAD_ID]
    assert h.provider.node_tags(HEAD_ID)[TAG_RAY_NODE_KIND] == NODE_KIND_HEAD
    assert h.provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD}) == [HEAD_ID]
    assert h.provider.is_running(HEAD_ID)
    calls_before = len(h.scw.calls())
    with caplog.at_level(logging.WARNING, logger="cluster.node_provider"):
        h.provider.terminate_nodes([HEAD_ID])
        h.provider.terminate_node(HEAD_ID)
    assert "refusing to terminate the head" in caplog.text
    assert HEAD_ID in h.provider.non_terminated_nodes({})
    assert not h.provider.is_terminated(HEAD_ID)
    assert [c for c in h.scw.calls()[calls_before:] if c["op"] != "list_servers"] == []


def test_a_head_vm_of_the_cluster_is_listed_as_head_too(h: Harness) -> None:
    from core.clouds import LaunchRequest

    cloud = h.scw.cloud()
    cloud.create(LaunchRequest(launch_id="vm-head", cluster_name=CLUSTER, node_type="head",
                               instance_type="POP2-4C-16G", image="ubuntu_noble"))
    provider = h.new_provider(cloud)
    assert provider.node_tags("vm-head")[TAG_RAY_NODE_KIND] == NODE_KIND_HEAD
    provider.terminate_nodes(["vm-head"])
    assert "vm-head" in provider.non_terminated_nodes({})


def test_cache_reflects_own_creates_and_terminates_immediately(h: Harness) -> None:
    # cache_ttl_s is an hour: only the provider's own bookkeeping can make these visible.
    [node_id] = h.create()
    assert set(h.provider.non_terminated_nodes({})) == {HEAD_ID, node_id}
    h.scw.state.config.stop_seconds = 30.0
    h.provider.terminate_nodes([node_id])
    assert h.provider.non_terminated_nodes({}) == [HEAD_ID]
    assert h.provider.is_terminated(node_id) and not h.provider.is_running(node_id)
    # The VM is still stopping at the cloud; later refreshes finish the job.
    assert len(h.scw.servers()) == 1
    assert h.states(node_id)[-1] == "terminating"
    h.scw.clock.advance(31)
    assert h.provider.wait_terminations(timeout_s=10, poll_s=0.01)
    assert h.scw.servers() == [] and h.scw.volumes() == []  # SBS volume deleted too
    assert h.states(node_id) == ["requested", "provisioning", "booting", "terminating",
                                 "terminated"]
    last = h.events(node_id)[-1]
    assert last["cloud_exists"] is False
    # Idempotent: terminating an unknown or finished node is a no-op.
    h.provider.terminate_nodes([node_id, "no-such-node"])
    assert h.provider.non_terminated_nodes({}) == [HEAD_ID]


def test_lifecycle_events_are_spooled_in_order_when_the_control_api_is_down(h: Harness) -> None:
    t0 = time.monotonic()
    [node_id] = h.create()
    assert time.monotonic() - t0 < 5  # nothing waited on the unreachable API
    events = h.events(node_id)
    assert [e["state"] for e in events] == ["requested", "provisioning", "booting"]
    first, booting = events[0], events[-1]
    assert first["event_id"] == f"{node_id}:requested"
    assert first["cluster_name"] == CLUSTER and first["provider"] == "scaleway"
    assert first["instance_type"] == "L4-1-24G" and first["node_type"] == "gpu-l4"
    assert booting["cloud_exists"] is True
    assert booting["provider_instance_id"] in h.scw.state.servers
    assert booting["zone"] == "fr-par-2" and booting["private_ip"].startswith("172.16.")
    # The Ray node joins: `ready` with its Ray node id, once.
    h.alive[node_id] = "ab" * 28
    h.provider.non_terminated_nodes({})  # a refresh is due only after the TTL...
    assert h.states(node_id)[-1] == "booting"
    h.provider._listed_at = float("-inf")  # ...so expire the cache as time would
    h.provider.non_terminated_nodes({})
    h.provider._listed_at = float("-inf")
    h.provider.non_terminated_nodes({})
    assert h.states(node_id) == ["requested", "provisioning", "booting", "ready"]
    assert h.events(node_id)[-1]["ray_node_id"] == "ab" * 28


def test_spooled_events_are_valid_for_the_control_api_schema(h: Harness) -> None:
    from core.wire import LifecycleEventsRequest

    h.create()
    for path in sorted((h.spool / "lifecycle").glob("[0-9]*.json")):
        LifecycleEventsRequest.model_validate(json.loads(path.read_text())["body"])


@pytest.mark.parametrize("fault", ["quota", "quota_legacy", "out_of_stock"])
def test_capacity_errors_raise_node_launch_exception(h: Harness, fault: str) -> None:
    h.scw.arm("create_server", fault, count=-1)
    with pytest.raises(NodeLaunchException) as err:
        h.create()
    expected = "out_of_stock" if fault == "out_of_stock" else "quota_exceeded"
    assert err.value.category == expected
    assert err.value.src_exc_info is not None
    # Both zones were tried (failover), nothing is left, and the failure was reported.
    assert {c["zone"] for c in h.scw.calls("create_server")} == set(ZONES)
    assert h.provider.non_terminated_nodes({}) == [HEAD_ID]
    failed = [e for e in h.events() if e["state"] == "failed"]
    assert len(failed) == 1 and failed[0]["error_code"] == expected
    assert failed[0]["cloud_exists"] is False


def test_shortage_everywhere_is_out_of_stock_without_a_create_call(h: Harness) -> None:
    for zone in ZONES:
        h.scw.admin("availability", {"zone": zone, "instance_type": "L4-1-24G",
                                     "availability": "shortage"})
    with pytest.raises(NodeLaunchException) as err:
        h.create()
    assert err.value.category == "out_of_stock"
    assert h.scw.calls("create_server") == []


def test_concurrent_creates_from_many_threads_are_distinct_and_all_listed(h: Harness) -> None:
    provider = h.provider
    errors: list[BaseException] = []
    listings: list[list[str]] = []

    def launch(i: int) -> None:
        try:
            provider.create_node_with_resources_and_labels(
                dict(NODE_CONFIG), worker_tags(request_id=f"req-{i}"), 1, dict(RESOURCES), {})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def watch() -> None:
        for _ in range(20):
            listings.append(provider.non_terminated_nodes({}))

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(4)]
    threads.append(threading.Thread(target=watch))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    nodes = set(provider.non_terminated_nodes({})) - {HEAD_ID}
    assert len(nodes) == 4
    servers = h.scw.servers()
    launch_tags = [t for s in servers for t in s["tags"] if t.startswith("inventiv-launch=")]
    assert sorted(launch_tags) == sorted(f"inventiv-launch={n}" for n in nodes)
    assert all(HEAD_ID in listing for listing in listings)
    # One batch of three uses the provider's own pool.
    created = h.create(count=3)
    assert len(created) == 3 and len(h.scw.servers()) == 7


def test_a_restarted_provider_lists_existing_nodes_from_their_tags(h: Harness) -> None:
    [node_id] = h.create()
    fresh = h.new_provider()
    assert set(fresh.non_terminated_nodes({})) == {HEAD_ID, node_id}
    tags = fresh.node_tags(node_id)
    assert tags[TAG_RAY_NODE_KIND] == NODE_KIND_WORKER
    assert tags[TAG_RAY_USER_NODE_TYPE] == "gpu-l4"
    assert fresh.is_running(node_id)
    # Another cluster in the same project is never listed.
    other = InventivNodeProvider({**h.config, "head_instance_id": "x-head"}, "other-cluster",
                                 cloud=h.scw.cloud(), reporter=h.reporter,
                                 membership=lambda: {})
    assert other.non_terminated_nodes({}) == ["x-head"]


def test_a_failed_listing_keeps_the_previous_view(h: Harness) -> None:
    [node_id] = h.create()
    h.scw.arm("list_servers", "server_error", count=-1)
    h.provider._listed_at = float("-inf")
    assert set(h.provider.non_terminated_nodes({})) == {HEAD_ID, node_id}
    assert "terminated" not in h.states(node_id)


def test_a_vm_deleted_behind_our_back_is_reported_gone(h: Harness) -> None:
    [node_id] = h.create()
    server_id = next(iter(h.scw.state.servers))
    h.scw.state.servers.pop(server_id)
    h.provider._listed_at = float("-inf")
    assert h.provider.non_terminated_nodes({}) == [HEAD_ID]
    last = h.events(node_id)[-1]
    assert last["state"] == "terminated" and last["cloud_exists"] is False
    assert "disappeared" in last["reason"]


def test_reporting_never_breaks_the_provider_without_a_control_api(h: Harness) -> None:
    provider = InventivNodeProvider(
        {k: v for k, v in h.config.items()}, CLUSTER, cloud=h.scw.cloud(),
        membership=lambda: {})
    assert provider.reporter.client is None  # no control_api_url: nothing is sent
    provider.create_node_with_resources_and_labels(dict(NODE_CONFIG), worker_tags(), 1,
                                                   dict(RESOURCES), {})
    assert [e["state"] for e in provider.reporter.sent] == ["requested", "provisioning",
                                                             "booting"]


def test_provider_config_errors_name_the_key(h: Harness) -> None:
    with pytest.raises(ValueError, match="cloud"):
        ProviderSettings.parse({"head_address": "1.2.3.4:6379", "cloud": "aws"})
    with pytest.raises(ValueError, match="head_address"):
        ProviderSettings.parse({"cloud": "local", "head_address": "no port"})
    with pytest.raises(NodeLaunchException, match="head is not launched"):
        h.provider.create_node_with_resources_and_labels(
            {}, worker_tags(node_type="head"), 1, {}, {})


# ------------------------------------------------------------------------------ cluster files


def test_cluster_yamls_render_a_ray_config_the_v2_autoscaler_accepts() -> None:
    from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

    for name in ("local", "scaleway"):
        cluster = load_cluster(REPO / "configs" / "clusters" / f"{name}.yaml")
        rendered = render_ray_config(cluster, head_address="10.0.0.2:6379",
                                     head_instance_id="h-1", token_path="/etc/t",
                                     state_dir="/var/lib/x")
        for key in COMMAND_KEYS:
            assert rendered[key] == []
        provider = rendered["provider"]
        assert provider["type"] == "external" and provider["disable_node_updaters"] is True
        assert provider["module"] == "cluster.node_provider.InventivNodeProvider"
        ProviderSettings.parse(provider)
        config = AutoscalingConfig(rendered)
        assert config.get_head_node_type() == "head"
        types = rendered["available_node_types"]
        assert types["head"]["resources"] == {}
        if name == "local":
            assert types["local-L4"]["resources"] == {"CPU": 2, "local_gpu_slot": 1,
                                                      "accelerator_type:L4": 1}
            assert provider["instance_types"]["local-L4"] == types["local-L4"]["resources"]
        else:
            assert set(types) == {"head", "gpu-l4", "gpu-l40s", "gpu-h100"}
            assert types["gpu-h100"]["resources"] == {"CPU": 24, "GPU": 1,
                                                      "accelerator_type:H100": 1}
            assert types["gpu-l4"]["node_config"]["root_volume_gb"] == 125


def test_cluster_file_errors_name_the_field() -> None:
    base = {"cluster_name": "c1", "cloud": "local",
            "node_types": {"l4": {"instance_type": "local-L4"}}}
    parse_cluster(base)
    cases = [
        ({**base, "node_types": {"l4": {"instance_type": "local-L4", "max_workers": -1}}},
         "node_types.l4.max_workers"),
        ({**base, "surprise": 1}, "surprise"),
        ({**base, "cloud": "aws"}, "cloud"),
        ({**base, "cluster_name": "Bad Name"}, "cluster_name"),
        ({**base, "node_types": {"head": {"instance_type": "local-L4"}}}, "reserved"),
        ({**base, "cloud": "scaleway"}, "scaleway"),
        ({**base, "head": {"temp_dir": "/tmp/" + "x" * 60}}, "head.temp_dir"),
    ]
    for data, needle in cases:
        with pytest.raises(ClusterConfigError, match=needle.replace(".", r"\.")):
            parse_cluster(data, source="x.yaml")
    with pytest.raises(ClusterConfigError, match="not in the local catalog"):
        render_ray_config(parse_cluster({**base, "node_types": {
            "b": {"instance_type": "local-B300"}}}), head_address="a:1", head_instance_id="h",
            token_path="/t")


# ------------------------------------------------------------------------------ scaleway head


def scaleway_cluster(**head: Any) -> Any:
    return parse_cluster({
        "cluster_name": CLUSTER, "cloud": "scaleway",
        "scaleway": {"zones": list(ZONES), "private_network_id": "pn-1",
                     "private_network_name": "pn"},
        "head": {"instance_type": "POP2-4C-16G", "image": "ubuntu_noble",
                 "security_group_id": "sg-head", **head},
        "control_api": {"url": "https://api.example.com"},
        "node_types": {"gpu-l4": {"instance_type": "L4-1-24G",
                                  "image": "ubuntu_noble_gpu_os_13_nvidia",
                                  "root_volume_gb": 125}},
    })


def test_scaleway_up_creates_the_head_vm_with_its_cloud_init(
        scw: ScwEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from cluster.clouds.scaleway_head import down_scaleway, up_scaleway
    from cluster.fake_scaleway import FAKE_SECRET_KEY

    cluster = scaleway_cluster()
    cloud = scw.cloud()
    with caplog.at_level(logging.DEBUG):
        head = up_scaleway(cluster, cloud=cloud, state_dir=tmp_path / "state")
    [server] = scw.state.servers.values()
    assert server.commercial_type == "POP2-4C-16G" and server.name == "c1-head"
    assert "inventiv-node-type=head" in server.tags
    assert f"inventiv-launch={head.head_instance_id}" in server.tags
    assert server.dynamic_ip_required is True  # the HTTPS front door; Ray ports stay private
    assert server.security_group == "sg-head"
    assert head.gcs_address == "c1-head.pn.internal:6379"
    token = (tmp_path / "state" / "ray_token").read_text()
    user_data = server.user_data["cloud-init"].decode()
    config = yaml.safe_load(user_data)
    files = {f["path"]: f for f in config["write_files"]}
    assert files["/etc/inventiv/ray_token"]["content"] == token
    assert files["/etc/inventiv/ray_token"]["permissions"] == "0600"
    assert files["/etc/inventiv/scw.env"]["permissions"] == "0600"
    assert f"SCW_SECRET_KEY={FAKE_SECRET_KEY}" in files["/etc/inventiv/scw.env"]["content"]
    ray_yaml = yaml.safe_load(files["/etc/inventiv/ray-autoscaler.yaml"]["content"])
    assert ray_yaml["provider"]["head_instance_id"] == head.head_instance_id
    assert ray_yaml["provider"]["head_address"] == "c1-head.pn.internal:6379"
    assert ray_yaml["provider"]["private_network_id"] == "pn-1"
    assert all(ray_yaml[k] == [] for k in COMMAND_KEYS)
    unit = files["/etc/systemd/system/inventiv-ray-head.service"]["content"]
    assert f'Environment="RAY_CLOUD_INSTANCE_ID={head.head_instance_id}"' in unit
    assert 'Environment="RAY_AUTH_MODE=token"' in unit
    assert 'Environment="RAY_enable_autoscaler_v2=1"' in unit
    assert "EnvironmentFile=/etc/inventiv/scw.env" in unit
    assert token not in unit and FAKE_SECRET_KEY not in unit
    exec_config = json.loads(files["/etc/inventiv/head.json"]["content"])
    assert "--autoscaling-config=/etc/inventiv/ray-autoscaler.yaml" in exec_config["argv"]
    assert "--dashboard-host=127.0.0.1" in exec_config["argv"]
    assert exec_config["resolve_host"] == "c1-head.pn.internal"
    assert token not in caplog.text and FAKE_SECRET_KEY not in caplog.text
    # Idempotent: a second `up` finds the head VM instead of creating another.
    again = up_scaleway(cluster, cloud=cloud, state_dir=tmp_path / "state")
    assert again.head_instance_id == head.head_instance_id
    assert len(scw.calls("create_server")) == 1
    assert down_scaleway(cluster, cloud=cloud) == 1
    assert scw.servers() == []


def test_exec_head_binds_ray_to_the_private_address(tmp_path: Path) -> None:
    from cluster.clouds.scaleway_head import exec_head

    path = tmp_path / "head.json"
    path.write_text(json.dumps({"argv": ["/opt/ray", "start", "--head"],
                                "resolve_host": "c1-head.pn.internal"}))
    calls: list[tuple[str, list[str]]] = []
    answers = iter([OSError("not yet"), "172.16.0.9"])

    def resolve(host: str) -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    exec_head(str(path), resolve=resolve, execv=lambda p, a: calls.append((p, a)),
              sleep=lambda _s: None)
    assert calls == [("/opt/ray", ["/opt/ray", "start", "--head",
                                   "--node-ip-address=172.16.0.9"])]


def test_cli_reports_an_invalid_cluster_file_and_an_empty_status(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.cluster import app

    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: c1\ncloud: local\nnode_types: {l4: {instance_type: x, "
                   "max_workers: -2}}\n")
    result = CliRunner().invoke(app, ["up", "-f", str(bad)])
    assert result.exit_code == 1
    assert "invalid_cluster_file" in result.output and "node_types.l4.max_workers" in \
        result.output
    good = tmp_path / "good.yaml"
    good.write_text(f"cluster_name: c1\ncloud: local\nstate_dir: {tmp_path / 's'}\n"
                    "node_types: {l4: {instance_type: local-L4}}\n")
    result = CliRunner().invoke(app, ["status", "-f", str(good), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"cluster_name": "c1", "head": None, "instances": [],
                                         "ray_nodes": [], "ray_error": None}
    result = CliRunner().invoke(app, ["down", "-f", str(good), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["head_stopped"] is False
