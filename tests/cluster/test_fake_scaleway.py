"""The fake Scaleway API behaves like Scaleway for the paths we use, faults included."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import requests
from scaleway.block.v1 import BlockV1API
from scaleway.instance.v1 import ServerAction, VolumeServerTemplate, VolumeVolumeType
from scaleway.instance.v1.custom_api import InstanceUtilsV1API
from scaleway_core.api import ScalewayException

from tests.cluster.conftest import ScwEnv

H = {"x-auth-token": "any"}
Z = "fr-par-2"


def sdk(scw: ScwEnv) -> InstanceUtilsV1API:
    return InstanceUtilsV1API(scw.client())


def make(scw: ScwEnv, name: str = "s", tags: list[str] | None = None,
         ctype: str = "DEV1-S", zone: str = Z) -> str:
    return sdk(scw).create_server(
        zone=zone, commercial_type=ctype, name=name, image="ubuntu_noble", tags=tags or [],
        volumes={"0": VolumeServerTemplate(volume_type=VolumeVolumeType.SBS_VOLUME,
                                           size=20 * 10**9)}).server.id


def test_auth_token_is_required(scw: ScwEnv) -> None:
    resp = requests.get(f"{scw.url}/instance/v1/zones/{Z}/servers", timeout=5)
    assert resp.status_code == 401 and resp.json()["type"] == "denied_authentication"


def test_pagination_with_total_count_and_the_sdk_list_all_terminates(scw: ScwEnv) -> None:
    scw.state.seed_servers(Z, 120, tags=["t"])
    page = requests.get(f"{scw.url}/instance/v1/zones/{Z}/servers",
                        params={"per_page": 100, "page": 2}, headers=H, timeout=5)
    assert page.headers["X-Total-Count"] == "120" and len(page.json()["servers"]) == 20
    beyond = requests.get(f"{scw.url}/instance/v1/zones/{Z}/servers",
                          params={"per_page": 100, "page": 3}, headers=H, timeout=5)
    assert beyond.json()["servers"] == []
    too_big = requests.get(f"{scw.url}/instance/v1/zones/{Z}/servers",
                           params={"per_page": 101}, headers=H, timeout=5)
    assert too_big.status_code == 400 and too_big.json()["type"] == "invalid_arguments"
    # The SDK's own pager stops on an empty page: it must terminate against the fake.
    assert len(sdk(scw).list_servers_all(zone=Z, per_page=50)) == 120


def test_tag_filter_matches_all_tags(scw: ScwEnv) -> None:
    a = make(scw, "a", ["x=1", "y=2"])
    make(scw, "b", ["x=1"])
    make(scw, "c", ["y=2", "z"])
    servers = sdk(scw).list_servers(zone=Z, tags=["x=1", "y=2"]).servers
    assert [s.id for s in servers] == [a]
    assert len(sdk(scw).list_servers(zone=Z, tags=["x=1"]).servers) == 2
    assert len(sdk(scw).list_servers(zone=Z).servers) == 3
    assert sdk(scw).list_servers(zone="pl-waw-2").servers == []


def test_default_order_is_newest_first(scw: ScwEnv) -> None:
    first = make(scw, "first")
    scw.clock.advance(1)
    second = make(scw, "second")
    assert [s.id for s in sdk(scw).list_servers(zone=Z).servers] == [second, first]


def test_unknown_server_is_an_instance_api_error_body(scw: ScwEnv) -> None:
    with pytest.raises(ScalewayException) as info:
        sdk(scw).get_server(zone=Z, server_id="00000000-0000-4000-8000-000000000001")
    assert info.value.status_code == 404
    assert info.value.response.json()["type"] == "unknown_resource"


def test_time_driven_boot_and_terminate(scw: ScwEnv) -> None:
    scw.state.config.boot_seconds = 30
    scw.state.config.stop_seconds = 10
    api = sdk(scw)
    sid = make(scw)
    server = api.get_server(zone=Z, server_id=sid).server
    assert server.state == "stopped" and server.public_ip is None
    api.server_action(zone=Z, server_id=sid, action=ServerAction.POWERON)
    assert api.get_server(zone=Z, server_id=sid).server.state == "starting"
    with pytest.raises(ScalewayException) as info:  # acting during a transition
        api.server_action(zone=Z, server_id=sid, action=ServerAction.TERMINATE)
    assert info.value.response.json()["type"] == "transient_state"
    scw.clock.advance(30)
    server = api.get_server(zone=Z, server_id=sid).server
    assert server.state == "running" and server.public_ip is not None
    assert server.private_ip is None  # routed-IP mode, as on Scaleway
    vol_id = server.volumes["0"].id
    with pytest.raises(ScalewayException) as info:
        api.delete_server(zone=Z, server_id=sid)  # running: must be stopped first
    assert info.value.response.json()["precondition"] == "resource_still_in_use"
    api.server_action(zone=Z, server_id=sid, action=ServerAction.TERMINATE)
    assert api.get_server(zone=Z, server_id=sid).server.state == "stopping"
    scw.clock.advance(10)
    with pytest.raises(ScalewayException):
        api.get_server(zone=Z, server_id=sid)
    # Terminate only detached the SBS volume: still there (and billed) until deleted.
    block = BlockV1API(scw.client())
    volume = block.get_volume(zone=Z, volume_id=vol_id)
    assert volume.status == "available" and volume.references == []
    block.delete_volume(zone=Z, volume_id=vol_id)
    with pytest.raises(ScalewayException) as info:
        block.get_volume(zone=Z, volume_id=vol_id)
    assert info.value.response.json()["type"] == "not_found"


def test_in_use_volume_cannot_be_deleted(scw: ScwEnv) -> None:
    sid = make(scw)
    vol_id = sdk(scw).get_server(zone=Z, server_id=sid).server.volumes["0"].id
    with pytest.raises(ScalewayException) as info:
        BlockV1API(scw.client()).delete_volume(zone=Z, volume_id=vol_id)
    assert info.value.status_code == 412


def test_terminate_refused_on_a_stopped_server(scw: ScwEnv) -> None:
    sid = make(scw)
    with pytest.raises(ScalewayException) as info:
        sdk(scw).server_action(zone=Z, server_id=sid, action=ServerAction.TERMINATE)
    assert info.value.status_code == 400


def test_user_data_roundtrip(scw: ScwEnv) -> None:
    sid = make(scw)
    api = sdk(scw)
    api.set_server_user_data(server_id=sid, key="cloud-init", content=b"#cloud-config\n{}\n",
                             zone=Z)
    assert api.get_server_user_data(server_id=sid, key="cloud-init", zone=Z).content == \
        b"#cloud-config\n{}\n"
    assert api.list_server_user_data(server_id=sid, zone=Z).user_data == ["cloud-init"]


def test_gpu_image_needs_125_gb(scw: ScwEnv) -> None:
    with pytest.raises(ScalewayException) as info:
        sdk(scw).create_server(zone=Z, commercial_type="L4-1-24G", name="g",
                               image="ubuntu_noble_gpu_os_13_nvidia", volumes={
                                   "0": VolumeServerTemplate(volume_type=VolumeVolumeType.
                                                             SBS_VOLUME, size=20 * 10**9)})
    assert info.value.response.json()["type"] == "invalid_arguments"


def test_products_and_availability(scw: ScwEnv) -> None:
    api = sdk(scw)
    types = api.list_servers_types(zone=Z).servers
    assert types["L4-1-24G"].hourly_price == 0.75 and types["L4-1-24G"].gpu == 1
    assert "H100-1-80G" not in api.list_servers_types(zone="nl-ams-1").servers
    scw.admin("availability", {"zone": Z, "instance_type": "L4-1-24G",
                               "availability": "shortage"})
    avail = api.get_server_types_availability(zone=Z).servers
    assert avail["L4-1-24G"].availability == "shortage"
    assert avail["DEV1-S"].availability == "available"
    with pytest.raises(ScalewayException) as info:
        make(scw, ctype="L4-1-24G")
    assert info.value.response.json()["type"] == "out_of_stock"


# ------------------------------------------------------------------------------ faults


def test_faults_fire_count_times_and_respect_zone(scw: ScwEnv) -> None:
    scw.arm("list_servers", "server_error", count=2, zone="pl-waw-2", status=503)
    url = f"{scw.url}/instance/v1/zones/%s/servers"
    assert requests.get(url % Z, headers=H, timeout=5).status_code == 200
    statuses = [requests.get(url % "pl-waw-2", headers=H, timeout=5).status_code
                for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert [c["fault"] for c in scw.calls("list_servers")] == [None, "server_error",
                                                               "server_error", None]


def test_html_502_is_not_json(scw: ScwEnv) -> None:
    scw.arm("*", "html_502")
    resp = requests.get(f"{scw.url}/instance/v1/zones/{Z}/servers", headers=H, timeout=5)
    assert resp.status_code == 502 and resp.headers["content-type"].startswith("text/html")
    with pytest.raises(requests.JSONDecodeError):
        resp.json()


def test_quota_shapes(scw: ScwEnv) -> None:
    scw.arm("create_server", "quota")
    scw.arm("create_server", "quota_legacy")
    bodies = []
    for _ in range(2):
        with pytest.raises(ScalewayException) as info:
            make(scw, ctype="L4-1-24G")
        bodies.append(info.value.response.json())
    assert bodies[0]["type"] == "quotas_exceeded" and bodies[0]["details"]
    assert bodies[1]["message"] == "Quota exceeded for this resource."
    assert info.value.status_code == 403
    assert scw.servers() == []


def test_lost_response_creates_then_answers_504(scw: ScwEnv) -> None:
    scw.arm("create_server", "lost_response")
    with pytest.raises(requests.JSONDecodeError):
        make(scw, "lost")
    assert len(scw.servers()) == 1
    call = scw.calls("create_server")[0]
    assert call["status"] == 504 and call["effect_status"] == 201


def test_lost_response_drop_closes_the_connection_mid_body(scw: ScwEnv) -> None:
    scw.arm("create_server", "lost_response_drop")
    with pytest.raises(requests.RequestException) as info:
        requests.post(f"{scw.url}/instance/v1/zones/{Z}/servers", headers=H, timeout=5, json={
            "commercial_type": "DEV1-S", "name": "x", "image": "ubuntu_noble",
            "project": "00000000-0000-4000-8000-000000000000"})
    assert isinstance(info.value, requests.ConnectionError | requests.exceptions.
                      ChunkedEncodingError)
    assert len(scw.servers()) == 1


def test_slow_fault_delays_then_answers(scw: ScwEnv) -> None:
    scw.arm("list_servers", "slow", delay_s=0.3)
    started = time.monotonic()
    resp = requests.get(f"{scw.url}/instance/v1/zones/{Z}/servers", headers=H, timeout=5)
    assert resp.status_code == 200 and time.monotonic() - started >= 0.3


def test_boot_faults(scw: ScwEnv) -> None:
    scw.state.config.boot_seconds = 5
    api = sdk(scw)
    stuck, back = make(scw, "stuck"), make(scw, "back")
    scw.arm("poweron", "boot_stuck")
    api.server_action(zone=Z, server_id=stuck, action=ServerAction.POWERON)
    scw.arm("poweron", "boot_fallback")
    api.server_action(zone=Z, server_id=back, action=ServerAction.POWERON)
    scw.clock.advance(3600)
    assert api.get_server(zone=Z, server_id=stuck).server.state == "starting"
    assert api.get_server(zone=Z, server_id=back).server.state == "stopped"


def test_admin_rejects_bad_faults_with_400(scw: ScwEnv) -> None:
    for body in ({"op": "create_server", "kind": "meteor"}, {"op": "nope", "kind": "slow"},
                 {"op": "get_server", "kind": "boot_stuck"}, {"kind": "slow", "extra": 1},
                 {"op": "get_server"}, {"op": "get_server", "kind": "slow", "count": "x"}):
        resp = requests.post(f"{scw.url}/_fake/faults", json=body, timeout=5)
        assert resp.status_code == 400, body
    assert requests.post(f"{scw.url}/_fake/seed", json={}, timeout=5).status_code == 400
    resp = requests.post(f"{scw.url}/_fake/faults", data=b"[1", timeout=5)
    assert resp.status_code == 400


def test_clock_endpoint(scw: ScwEnv) -> None:
    now = requests.get(f"{scw.url}/_fake/clock", timeout=5).json()["now"]
    after = requests.post(f"{scw.url}/_fake/clock", json={"advance": 12.5}, timeout=5).json()
    assert after["now"] == pytest.approx(now + 12.5)


def test_module_entry_point_serves(tmp_path: object) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cluster.fake_scaleway", "--port", str(port),
                             "--boot-seconds", "0"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                resp = requests.get(f"http://127.0.0.1:{port}/instance/v1/zones/{Z}/products/"
                                    "servers", headers=H, timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        assert resp.status_code == 200 and "L4-1-24G" in resp.json()["servers"]
    finally:
        proc.terminate()
        proc.wait(10)
