"""The Scaleway adapter with the real SDK over real HTTP against the fake API."""

from __future__ import annotations

import logging
import socket
import time
from decimal import Decimal

import pytest
import requests
import yaml
from scaleway.instance.v1 import VolumeServerTemplate, VolumeVolumeType
from scaleway.instance.v1.custom_api import InstanceUtilsV1API

from cluster.bootstrap import NodeBootstrap, render_cloud_init
from cluster.clouds.scaleway import ScalewayCloud, classify_error, volume_name
from core.clouds import (
    AuthError,
    BootFailed,
    BootTimeout,
    Cloud,
    CloudError,
    InstanceStatus,
    InvalidRequest,
    LaunchRequest,
    NotFound,
    OutOfStock,
    QuotaExceeded,
    Transient,
    Unavailable,
    cluster_tag,
)
from tests.cluster.conftest import ScwEnv

GPU_IMAGE = "ubuntu_noble_gpu_os_13_nvidia"


def req(launch_id: str = "launch-1", cluster: str = "c1", **kw: object) -> LaunchRequest:
    base: dict[str, object] = {
        "launch_id": launch_id, "cluster_name": cluster, "node_type": "gpu-l4",
        "instance_type": "L4-1-24G", "image": GPU_IMAGE, "root_volume_gb": 125,
        "user_data": "#cloud-config\npackage_upgrade: false\n"}
    base.update(kw)
    return LaunchRequest(**base)  # type: ignore[arg-type]


def ops(scw: ScwEnv) -> list[str]:
    return [c["op"] for c in scw.calls()]


def creates(scw: ScwEnv) -> list[dict]:
    return scw.calls("create_server")


# ------------------------------------------------------------------------------ happy path


def test_adapter_satisfies_the_protocol(scw: ScwEnv) -> None:
    assert isinstance(scw.cloud(), Cloud)


def test_create_stopped_then_user_data_then_poweron_then_running(scw: ScwEnv) -> None:
    scw.state.config.boot_seconds = 42.0
    cloud = scw.cloud()
    token = "ray-token-very-secret-123"
    user_data = render_cloud_init(NodeBootstrap(
        head_address="10.0.0.2:6379", cloud_instance_id="launch-1", node_type="gpu-l4",
        ray_token=token, num_gpus=1, resources={"accelerator_type:L4": 1}))

    inst = cloud.create(req(user_data=user_data, private_network_id="pn-workers"))

    assert inst.state is InstanceStatus.RUNNING
    assert inst.launch_id == "launch-1" and inst.cluster_name == "c1"
    assert inst.node_type == "gpu-l4" and inst.instance_type == "L4-1-24G"
    assert inst.zone == "fr-par-2"
    assert inst.public_ip and inst.private_ip and inst.private_ip.startswith("172.16.")
    assert "/" not in inst.private_ip  # IPAM's /nn suffix is stripped
    assert set(inst.tags) == {"inventiv-cluster=c1", "inventiv-launch=launch-1",
                              "inventiv-node-type=gpu-l4"}
    assert len(inst.volume_ids) == 1
    # The order that matters: created stopped, NIC and user data before the first boot.
    sequence = [o for o in ops(scw) if o not in ("list_servers", "availability", "get_server",
                                                  "get_private_nic", "list_ips")]
    assert sequence == ["create_server", "update_volume", "create_private_nic", "set_user_data",
                        "poweron"]
    body = requests.get(f"{scw.url}/instance/v1/zones/fr-par-2/servers/"
                        f"{inst.provider_instance_id}/user_data/cloud-init",
                        headers={"x-auth-token": "t"}, timeout=5)
    assert body.text == user_data
    assert yaml.safe_load(body.text)["write_files"][0]["permissions"] == "0600"
    # Our own waiter polled with the injected clock: 42 s of boot at 5 s per poll.
    assert sum(scw.sleeps) == pytest.approx(45.0)
    server = scw.state.servers[inst.provider_instance_id]
    assert server.volume_ids and scw.state.volumes[server.volume_ids[0]].size == 125 * 10**9
    assert scw.state.volumes[server.volume_ids[0]].name == volume_name("launch-1")


def test_gpu_root_volume_below_125_gb_is_refused_before_any_call(scw: ScwEnv) -> None:
    cloud = scw.cloud()
    with pytest.raises(InvalidRequest, match="125"):
        cloud.create(req(root_volume_gb=100))
    with pytest.raises(InvalidRequest):
        cloud.create(req(instance_type="POP2-2C-8G", image="my_gpu_image", root_volume_gb=20))
    assert scw.calls() == []
    # A CPU type with a CPU image may be small.
    inst = cloud.create(req(launch_id="cpu", instance_type="POP2-2C-8G", image="ubuntu_noble",
                            root_volume_gb=20))
    assert inst.state is InstanceStatus.RUNNING


def test_no_secret_reaches_the_logs(scw: ScwEnv, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = "tok-" + "s3cr3t" * 5
    user_data = render_cloud_init(NodeBootstrap(
        head_address="10.0.0.2:6379", cloud_instance_id="launch-1", node_type="gpu-l4",
        ray_token=token))
    scw.arm("set_user_data", "server_error")  # an error path logs too
    inst = scw.cloud().create(req(user_data=user_data))
    scw.cloud().terminate(inst.provider_instance_id, inst.zone, launch_id="launch-1")
    assert caplog.records, "expected the adapter to log"
    assert token not in caplog.text
    assert "11111111-2222-4333-8444-555555555555" not in caplog.text  # the API secret key


# ------------------------------------------------------------------------------ error mapping


@pytest.mark.parametrize(("kind", "expected", "status"), [
    ("quota", QuotaExceeded, 403),
    ("quota_legacy", QuotaExceeded, 403),
    ("out_of_stock", OutOfStock, 409),
    ("transient_state", Transient, 409),
    ("locked", Transient, 403),
    ("permissions_denied", AuthError, 403),
    ("denied_authentication", AuthError, 401),
    ("invalid_arguments", InvalidRequest, 400),
    ("precondition_failed", Transient, 412),
    ("not_found", NotFound, 404),
    ("server_error", Unavailable, 500),
    ("html_502", Unavailable, 502),
])
def test_every_error_body_maps_to_our_class(scw: ScwEnv, kind: str,
                                            expected: type[CloudError], status: int) -> None:
    cloud = scw.cloud(max_attempts=1)
    scw.arm("get_server", kind)
    with pytest.raises(expected) as info:
        cloud.get("00000000-0000-4000-8000-00000000abcd", "fr-par-2")
    assert info.value.status == status
    assert info.value.code == expected.code
    assert len(scw.calls("get_server")) == 1


def test_the_sdk_alone_raises_jsondecodeerror_on_html_and_we_map_it(scw: ScwEnv) -> None:
    """The SDK's own request path (no override) chokes on HTML; classify_error maps that too."""
    raw = InstanceUtilsV1API(scw.client())
    scw.arm("list_servers", "html_502")
    with pytest.raises(requests.JSONDecodeError) as info:
        raw.list_servers(zone="fr-par-2")
    mapped = classify_error(info.value, zone="fr-par-2")
    assert isinstance(mapped, Unavailable) and mapped.retryable and mapped.zone == "fr-par-2"


def test_connection_refused_is_unavailable_and_known_unsent(scw: ScwEnv) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cloud = scw.cloud(api_url=f"http://127.0.0.1:{port}", max_attempts=2)
    with pytest.raises(Unavailable) as info:
        cloud.list_instances("c1")
    assert info.value.request_sent is False
    assert cloud.stats["list_servers"] == 2  # a safe call was retried once, then gave up


def test_bad_credentials_are_an_auth_error(scw: ScwEnv) -> None:
    client = scw.client()
    client.secret_key = "not-a-uuid"
    with pytest.raises(AuthError):
        ScalewayCloud(client=client)


# ------------------------------------------------------------------------------ timeouts, retries


def test_http_timeout_fires_on_a_slow_response(scw: ScwEnv) -> None:
    cloud = scw.cloud(read_timeout_s=0.2, max_attempts=1)
    scw.arm("list_servers", "slow", delay_s=1.5)
    started = time.monotonic()
    with pytest.raises(Unavailable, match="timeout"):
        cloud.list_instances("c1")
    assert time.monotonic() - started < 1.2


def test_a_safe_call_is_retried_after_a_timeout_with_backoff(scw: ScwEnv) -> None:
    cloud = scw.cloud(read_timeout_s=0.2, max_attempts=3, backoff_base_s=0.5)
    scw.arm("list_servers", "slow", delay_s=0.8, count=1)
    scw.arm("list_servers", "server_error", count=1)
    assert cloud.list_instances("c1") == []
    assert len(scw.calls("list_servers")) == 3
    assert scw.sleeps == [0.5, 1.0]  # exponential backoff on the injected sleep


def test_retries_are_bounded(scw: ScwEnv) -> None:
    cloud = scw.cloud(max_attempts=4)
    scw.arm("get_server", "server_error", count=-1)
    with pytest.raises(Unavailable):
        cloud.get("00000000-0000-4000-8000-00000000abcd", "fr-par-2")
    assert len(scw.calls("get_server")) == 4


def test_non_retryable_errors_are_not_retried(scw: ScwEnv) -> None:
    cloud = scw.cloud(max_attempts=4)
    scw.arm("get_server", "permissions_denied", count=-1)
    with pytest.raises(AuthError):
        cloud.get("00000000-0000-4000-8000-00000000abcd", "fr-par-2")
    assert len(scw.calls("get_server")) == 1


def test_poweron_5xx_is_retried_and_boot_completes(scw: ScwEnv) -> None:
    scw.arm("poweron", "server_error", count=1)
    inst = scw.cloud().create(req())
    assert inst.state is InstanceStatus.RUNNING
    assert [c["status"] for c in scw.calls("poweron")] == [500, 202]


def test_lost_poweron_answer_is_resent_then_seen_starting(scw: ScwEnv) -> None:
    scw.state.config.boot_seconds = 10
    scw.arm("poweron", "lost_response", count=1)
    inst = scw.cloud().create(req())
    assert inst.state is InstanceStatus.RUNNING
    # First poweron worked (504 hid it); the resend was refused as the server was starting.
    assert [c["status"] for c in scw.calls("poweron")] == [504, 409]


# ---------------------------------------------------------------------- never resend a create


@pytest.mark.parametrize("kind", ["lost_response", "lost_response_drop"])
def test_lost_create_response_is_adopted_with_a_single_post(scw: ScwEnv, kind: str) -> None:
    scw.arm("create_server", kind)
    inst = scw.cloud().create(req())
    assert inst.state is InstanceStatus.RUNNING
    posts = creates(scw)
    assert len(posts) == 1 and posts[0]["fault"] == kind and posts[0]["effect_status"] == 201
    assert len(scw.servers()) == 1
    assert inst.provider_instance_id == scw.servers()[0]["id"]


def test_5xx_on_create_is_not_resent(scw: ScwEnv) -> None:
    cloud = scw.cloud()
    scw.arm("create_server", "server_error")
    with pytest.raises(Unavailable, match="not resent"):
        cloud.create(req())
    assert len(creates(scw)) == 1
    assert scw.servers() == []
    # The next call lists first, finds nothing, and creates: still one VM for the launch.
    inst = cloud.create(req())
    assert len(creates(scw)) == 2 and len(scw.servers()) == 1
    assert inst.launch_id == "launch-1"


def test_slow_create_timing_out_is_never_resent(scw: ScwEnv) -> None:
    cloud = scw.cloud(read_timeout_s=0.2, ambiguous_settle_s=0.0)
    scw.arm("create_server", "slow", delay_s=0.6)
    try:
        first = cloud.create(req())
    except Unavailable:
        first = None  # the listing ran before the slow create landed: outcome unknown
    deadline = time.monotonic() + 5
    while not scw.servers() and time.monotonic() < deadline:
        time.sleep(0.05)  # let the fake finish the create the client gave up on
    again = cloud.create(req())
    assert len(creates(scw)) == 1
    assert len(scw.servers()) == 1
    assert again.provider_instance_id == scw.servers()[0]["id"]
    if first is not None:
        assert first.provider_instance_id == again.provider_instance_id


def test_concurrent_create_of_the_same_launch_is_refused(scw: ScwEnv) -> None:
    scw.state.config.boot_seconds = 10
    seen: list[BaseException] = []

    def sleep_and_race(seconds: float) -> None:
        if not seen:  # while the first create waits for the boot, a second one starts
            try:
                cloud.create(req())
            except CloudError as err:
                seen.append(err)
        scw.sleep(seconds)

    cloud = ScalewayCloud(scw.cloud().config, client=scw.client(), clock=scw.clock,
                          sleep=sleep_and_race)
    inst = cloud.create(req())
    assert isinstance(seen[0], Transient) and "already running" in str(seen[0])
    assert len(creates(scw)) == 1 and inst.state is InstanceStatus.RUNNING
    cloud.terminate(inst.provider_instance_id, inst.zone)
    assert cloud.create(req(launch_id="launch-2")).launch_id == "launch-2"  # guard released


def test_create_adopts_a_vm_of_the_same_launch_in_any_zone(scw: ScwEnv) -> None:
    cloud = scw.cloud()
    first = cloud.create(req(zones=("pl-waw-2",)))
    again = cloud.create(req(zones=("fr-par-2", "pl-waw-2")))
    assert again.provider_instance_id == first.provider_instance_id
    assert len(creates(scw)) == 1


def test_a_crash_between_create_and_poweron_is_resumed(scw: ScwEnv) -> None:
    """A stopped VM of the launch (created, never booted) gets its user data and boots."""
    cloud = scw.cloud()
    scw.arm("set_user_data", "server_error", count=-1)
    with pytest.raises(Unavailable):
        cloud.create(req())
    # That failure discarded the VM: nothing is left behind.
    assert scw.servers() == [] and scw.volumes() == []
    # Now simulate a crash that left a stopped, tagged VM: create it without booting.
    sdk = InstanceUtilsV1API(scw.client())
    sdk.create_server(zone="fr-par-2", commercial_type="L4-1-24G", image=GPU_IMAGE,
                      tags=req().all_tags(), name="leftover",
                      volumes={"0": VolumeServerTemplate(volume_type=VolumeVolumeType.SBS_VOLUME,
                                                          size=125 * 10**9)})
    requests.delete(f"{scw.url}/_fake/faults", timeout=5)
    inst = cloud.create(req())
    assert inst.state is InstanceStatus.RUNNING and len(scw.servers()) == 1
    assert len(creates(scw)) == 2  # the failed attempt's and the SDK's own; none by the resume


# ------------------------------------------------------------------------------ zones, capacity


@pytest.mark.parametrize("kind", ["quota", "quota_legacy", "out_of_stock"])
def test_capacity_error_blocks_the_zone_and_fails_over(scw: ScwEnv, kind: str) -> None:
    cloud = scw.cloud(capacity_block_s=600)
    scw.arm("create_server", kind, zone="fr-par-2")
    inst = cloud.create(req())
    assert inst.zone == "pl-waw-2"
    assert cloud.is_blocked("L4-1-24G", "fr-par-2")
    assert not cloud.is_blocked("L40S-1-48G", "fr-par-2")  # blocked per (type, zone)
    assert [c["zone"] for c in creates(scw)] == ["fr-par-2", "pl-waw-2"]
    # While blocked, the zone is skipped without a call.
    cloud.create(req(launch_id="launch-2"))
    assert [c["zone"] for c in creates(scw)] == ["fr-par-2", "pl-waw-2", "pl-waw-2"]
    # After the block expires, the zone is tried again.
    scw.clock.advance(601)
    assert not cloud.is_blocked("L4-1-24G", "fr-par-2")
    third = cloud.create(req(launch_id="launch-3"))
    assert third.zone == "fr-par-2"


def test_shortage_is_skipped_without_calling_create(scw: ScwEnv) -> None:
    scw.admin("availability", {"zone": "fr-par-2", "instance_type": "L4-1-24G",
                               "availability": "shortage"})
    cloud = scw.cloud()
    inst = cloud.create(req())
    assert inst.zone == "pl-waw-2"
    assert [c["zone"] for c in creates(scw)] == ["pl-waw-2"]
    assert cloud.is_blocked("L4-1-24G", "fr-par-2")


def test_type_not_offered_in_a_zone_is_skipped(scw: ScwEnv) -> None:
    cloud = scw.cloud(zones=("fr-par-1", "fr-par-2"))
    inst = cloud.create(req())
    assert inst.zone == "fr-par-2" and [c["zone"] for c in creates(scw)] == ["fr-par-2"]


def test_all_zones_out_of_capacity_raises_the_capacity_error(scw: ScwEnv) -> None:
    cloud = scw.cloud()
    scw.arm("create_server", "quota", count=-1)
    with pytest.raises(QuotaExceeded) as info:
        cloud.create(req())
    assert info.value.capacity
    assert len(creates(scw)) == 2
    with pytest.raises(QuotaExceeded):
        cloud.create(req(launch_id="launch-2"))
    assert len(creates(scw)) == 2  # both blocked: no create sent
    assert scw.servers() == []


def test_real_quota_counts_fail_over(scw: ScwEnv) -> None:
    scw.admin("quotas", {"instance_type": "H100-1-80G", "limit": 1})
    cloud = scw.cloud()
    cloud.create(req(launch_id="a", instance_type="H100-1-80G"))
    with pytest.raises(QuotaExceeded):
        cloud.create(req(launch_id="b", instance_type="H100-1-80G"))


def test_out_of_stock_at_poweron_discards_the_vm_and_fails_over(scw: ScwEnv) -> None:
    cloud = scw.cloud()
    scw.arm("poweron", "out_of_stock", zone="fr-par-2")
    inst = cloud.create(req())
    assert inst.zone == "pl-waw-2"
    assert [s["zone"] for s in scw.servers()] == ["pl-waw-2"]
    assert len(scw.volumes()) == 1  # the discarded VM's SBS volume was deleted too
    assert cloud.is_blocked("L4-1-24G", "fr-par-2")


# ------------------------------------------------------------------------------ boot failures


def test_boot_stuck_times_out_and_leaves_a_tagged_vm(scw: ScwEnv) -> None:
    cloud = scw.cloud(boot_timeout_s=120, cleanup_timeout_s=30)
    scw.arm("poweron", "boot_stuck")
    with pytest.raises(BootTimeout) as info:
        cloud.create(req())
    assert info.value.provider_instance_id
    # A starting VM cannot be terminated: it stays, tagged, for the reconciler.
    listed = cloud.list_instances("c1")
    assert [i.launch_id for i in listed] == ["launch-1"]
    assert listed[0].state is InstanceStatus.PENDING
    assert 120 <= sum(scw.sleeps) <= 120 + 30 + 5


def test_boot_falling_back_to_stopped_fails_and_cleans_up(scw: ScwEnv) -> None:
    scw.state.config.boot_seconds = 20
    cloud = scw.cloud()
    scw.arm("poweron", "boot_fallback")
    with pytest.raises(BootFailed, match="fell back"):
        cloud.create(req())
    assert scw.servers() == [] and scw.volumes() == []
    assert len(scw.calls("delete_server")) == 1


def test_polling_errors_during_boot_do_not_fail_the_boot(scw: ScwEnv) -> None:
    scw.state.config.boot_seconds = 10
    cloud = scw.cloud(max_attempts=1)
    scw.arm("get_server", "server_error", count=1)
    inst = cloud.create(req())
    assert inst.state is InstanceStatus.RUNNING


# ------------------------------------------------------------------------------ listing


def test_listing_is_isolated_by_cluster_tag(scw: ScwEnv) -> None:
    cloud = scw.cloud()
    a1 = cloud.create(req(launch_id="a1", cluster="alpha"))
    cloud.create(req(launch_id="b1", cluster="beta"))
    a2 = cloud.create(req(launch_id="a2", cluster="alpha", zones=("pl-waw-2",)))
    # Look-alike names and tags that are not ours.
    scw.admin("seed", {"zone": "fr-par-2", "count": 3, "tags": ["inventiv-cluster=alphabet"]})
    scw.admin("seed", {"zone": "fr-par-2", "count": 2, "tags": ["alpha"]})
    listed = cloud.list_instances("alpha")
    assert {i.provider_instance_id for i in listed} == {a1.provider_instance_id,
                                                        a2.provider_instance_id}
    assert {i.zone for i in listed} == {"fr-par-2", "pl-waw-2"}
    assert all(i.cluster_name == "alpha" for i in listed)
    assert [i.launch_id for i in cloud.list_instances("beta")] == ["b1"]
    assert cloud.list_instances("gamma") == []
    for call in scw.calls("list_servers"):
        assert call["query"]["tags"].startswith("inventiv-cluster=")


def test_listing_rechecks_tags_even_if_the_api_filter_misbehaves(scw: ScwEnv) -> None:
    cloud = scw.cloud(zones=("fr-par-2",))
    mine = cloud.create(req(launch_id="a1", cluster="alpha"))
    cloud.create(req(launch_id="b1", cluster="beta"))
    original = scw.state.list_servers

    def ignore_tags(zone: str, **kw: object) -> list:
        kw.pop("tags", None)
        return original(zone, **kw)  # type: ignore[arg-type]

    scw.state.list_servers = ignore_tags  # type: ignore[method-assign]
    try:
        listed = cloud.list_instances("alpha")
    finally:
        del scw.state.list_servers
    assert [i.provider_instance_id for i in listed] == [mine.provider_instance_id]


def test_listing_pages_through_more_than_100_servers(scw: ScwEnv) -> None:
    scw.admin("seed", {"zone": "fr-par-2", "count": 250,
                       "tags": [cluster_tag("big"), "inventiv-launch=seed-{i}"]})
    scw.admin("seed", {"zone": "fr-par-2", "count": 40, "tags": [cluster_tag("other")]})
    cloud = scw.cloud(zones=("fr-par-2",))
    listed = cloud.list_instances("big")
    assert len(listed) == 250
    assert len({i.launch_id for i in listed}) == 250
    pages = [(c["query"]["page"], c["query"]["per_page"]) for c in scw.calls("list_servers")]
    assert pages == [("1", "100"), ("2", "100"), ("3", "100")]


def test_listing_restarts_when_servers_vanish_between_pages(scw: ScwEnv) -> None:
    ids = scw.state.seed_servers("fr-par-2", 150, tags=[cluster_tag("big")])
    cloud = scw.cloud(zones=("fr-par-2",))
    original = cloud._instance.list_servers
    deleted: list[str] = []

    def list_then_delete_one(**kw: object):  # a VM disappears right after page 1
        resp = original(**kw)
        if kw.get("page") == 1 and not deleted:
            with scw.state.lock:
                scw.state.servers.pop(ids[0])
            deleted.append(ids[0])
        return resp

    cloud._instance.list_servers = list_then_delete_one  # type: ignore[method-assign]
    listed = cloud.list_instances("big")
    assert len(listed) == 149 and ids[0] not in {i.provider_instance_id for i in listed}
    assert len(scw.calls("list_servers")) == 4  # page 1, page 2 (shrunk) then pages 1, 2


def test_find_by_launch_id(scw: ScwEnv) -> None:
    cloud = scw.cloud()
    inst = cloud.create(req(zones=("pl-waw-2",)))
    found = cloud.find_by_launch_id("c1", "launch-1")
    assert found is not None and found.provider_instance_id == inst.provider_instance_id
    assert cloud.find_by_launch_id("c2", "launch-1") is None
    assert cloud.find_by_launch_id("c1", "launch-9") is None


def test_get_unknown_server_is_not_found(scw: ScwEnv) -> None:
    with pytest.raises(NotFound):
        scw.cloud().get("00000000-0000-4000-8000-00000000dead", "fr-par-2")


# ------------------------------------------------------------------------------ terminate


def test_terminate_waits_then_deletes_the_detached_sbs_volume(scw: ScwEnv) -> None:
    scw.state.config.stop_seconds = 30
    cloud = scw.cloud()
    inst = cloud.create(req())
    assert len(scw.volumes()) == 1
    assert cloud.terminate(inst.provider_instance_id, inst.zone, launch_id="launch-1") is True
    assert scw.servers() == [] and scw.volumes() == []
    assert len(scw.calls("terminate")) == 1
    assert [c["status"] for c in scw.calls("delete_volume")] == [204]


def test_terminate_is_idempotent(scw: ScwEnv) -> None:
    cloud = scw.cloud()
    inst = cloud.create(req())
    assert cloud.terminate(inst.provider_instance_id, inst.zone, launch_id="launch-1")
    before = len(scw.calls())
    assert cloud.terminate(inst.provider_instance_id, inst.zone, launch_id="launch-1")
    assert cloud.terminate("00000000-0000-4000-8000-00000000dead", "fr-par-2")
    new_ops = [c["op"] for c in scw.calls()[before:]]
    assert set(new_ops) <= {"get_server", "list_volumes"}


def test_terminate_without_waiting_finishes_on_a_later_call(scw: ScwEnv) -> None:
    scw.state.config.stop_seconds = 60
    cloud = scw.cloud()
    inst = cloud.create(req())
    assert cloud.terminate(inst.provider_instance_id, inst.zone, launch_id="launch-1",
                           wait=False) is False
    assert [v["server_id"] for v in scw.volumes()] == [inst.provider_instance_id]
    scw.clock.advance(61)
    # The server is gone; its detached volume is found again by the launch's volume name.
    assert [v["server_id"] for v in scw.volumes()] == [None]
    assert cloud.terminate(inst.provider_instance_id, inst.zone, launch_id="launch-1",
                           wait=False) is True
    assert scw.volumes() == []


def test_terminate_a_stopped_vm_deletes_it_and_its_volumes(scw: ScwEnv) -> None:
    sdk = InstanceUtilsV1API(scw.client())
    server = sdk.create_server(zone="fr-par-2", commercial_type="DEV1-S", image="ubuntu_noble",
                               tags=[cluster_tag("c1")], name="stopped-one",
                               volumes={"0": VolumeServerTemplate(
                                   volume_type=VolumeVolumeType.SBS_VOLUME, size=20 * 10**9)}
                               ).server
    cloud = scw.cloud()
    assert cloud.terminate(server.id, "fr-par-2") is True
    assert len(scw.calls("delete_server")) == 1 and scw.calls("terminate") == []
    assert scw.servers() == [] and scw.volumes() == []


def test_terminate_survives_transient_errors(scw: ScwEnv) -> None:
    cloud = scw.cloud()
    inst = cloud.create(req())
    scw.arm("terminate", "transient_state", count=1)
    scw.arm("delete_volume", "server_error", count=1)
    scw.arm("get_server", "html_502", count=1)
    assert cloud.terminate(inst.provider_instance_id, inst.zone, launch_id="launch-1")
    assert scw.servers() == [] and scw.volumes() == []


def test_terminate_never_touches_another_clusters_vm(scw: ScwEnv) -> None:
    cloud = scw.cloud()
    mine = cloud.create(req(launch_id="m", cluster="mine"))
    theirs = cloud.create(req(launch_id="t", cluster="theirs"))
    for inst in cloud.list_instances("mine"):
        cloud.terminate(inst.provider_instance_id, inst.zone, launch_id=inst.launch_id)
    assert [s["id"] for s in scw.servers()] == [theirs.provider_instance_id]
    assert mine.provider_instance_id not in {s["id"] for s in scw.servers()}
    assert len(scw.volumes()) == 1


def test_terminate_of_a_vm_stuck_starting_times_out_as_transient(scw: ScwEnv) -> None:
    cloud = scw.cloud(boot_timeout_s=10, cleanup_timeout_s=10, terminate_timeout_s=60)
    scw.arm("poweron", "boot_stuck")
    with pytest.raises(BootTimeout) as info:
        cloud.create(req())
    with pytest.raises(Transient, match="still starting"):
        cloud.terminate(info.value.provider_instance_id or "", "fr-par-2")


# ------------------------------------------------------------------------------ catalog


def test_catalog_prices_and_availability(scw: ScwEnv) -> None:
    scw.admin("availability", {"zone": "pl-waw-2", "instance_type": "L4-1-24G",
                               "availability": "scarce"})
    offers = scw.cloud(per_page=3).catalog()  # small pages: the catalog pages too
    by_key = {(o.instance_type, o.zone): o for o in offers}
    l4 = by_key[("L4-1-24G", "fr-par-2")]
    assert l4.hourly_eur == Decimal("0.75") and isinstance(l4.hourly_eur, Decimal)
    assert l4.availability == "available" and l4.gpu_count == 1 and l4.gpu_model == "L4"
    assert l4.gpu_vram_gb == 24 and l4.vcpus == 8 and l4.ram_gb == 48
    assert by_key[("L4-1-24G", "pl-waw-2")].availability == "scarce"
    assert by_key[("H100-1-80G", "pl-waw-2")].hourly_eur == Decimal("2.73")
    assert ("H100-1-80G", "nl-ams-1") not in by_key
    assert len([o for o in offers if o.zone == "fr-par-2"]) == 7
    assert len(scw.calls("list_servers_types")) == 6  # 7 types, pages of 3, per zone
