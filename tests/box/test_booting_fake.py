"""The booting fake: servers created through the real adapter boot their cloud-init in their own
network and mount namespaces, on per-network bridges, behind their security group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from scaleway.instance.v1 import InstanceV1API

from cluster.bootstrap import dump_cloud_config, systemd_quote
from cluster.clouds.scaleway import ScalewayCloud
from cluster.fake_scaleway.booting import BootingFake, serve_booting
from cluster.fake_scaleway.box import (
    DEFAULT_ROOT,
    Box,
    BoxUnavailable,
    FirewallSpec,
    RuleSpec,
    list_box_netns,
    require_box_tools,
    sweep,
)
from cluster.fake_scaleway.cloudinit import BootError, parse_unit, parse_user_data
from core.clouds import CloudInstance, LaunchRequest
from tests.box.conftest import adapter

PY = "/usr/bin/python3"
PN = "pn-box-test"
PROBE_PORTS = (22, 80, 443, 6379, 8000, 8080, 8265, 8443, 10001)


def unit(name: str, exec_start: list[str], *, env: dict[str, str] | None = None,
         pre: list[list[str]] | None = None, restart: str = "always") -> dict[str, Any]:
    lines = ["[Unit]", f"Description={name}", "", "[Service]", "Type=simple",
             f"Restart={restart}", "RestartSec=0.1"]
    lines += [f"Environment={systemd_quote(f'{k}={v}', exec_line=False)}"
              for k, v in (env or {}).items()]
    for cmd in pre or []:
        lines.append("ExecStartPre=" + " ".join([cmd[0], *(systemd_quote(a) for a in cmd[1:])]))
    lines.append("ExecStart=" + " ".join([exec_start[0],
                                          *(systemd_quote(a) for a in exec_start[1:])]))
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return {"path": f"/etc/systemd/system/{name}", "content": "\n".join(lines),
            "owner": "root:root", "permissions": "0644"}


def web_vm(token: str, ports: tuple[int, ...] = (8080,)) -> str:
    """Files + HTTP servers on ``ports`` serving /etc/inventiv (the token is what they show)."""
    files = [{"path": "/etc/inventiv/ray_token", "content": token, "owner": "root:root",
              "permissions": "0600"}]
    runcmd: list[list[str]] = [["systemctl", "daemon-reload"]]
    for port in ports:
        name = f"web{port}.service"
        files.append(unit(name, [PY, "-m", "http.server", str(port), "--directory",
                                 "/etc/inventiv"],
                          env={"MARK": f"port {port} 100%"},
                          pre=[["/bin/sh", "-c", "mkdir -p /var/lib/web && "
                                "echo \"$MARK\" > /var/lib/web/pre-$PPID"]]))
        runcmd.append(["systemctl", "enable", "--now", name])
    return dump_cloud_config({"package_update": False, "package_upgrade": False,
                              "write_files": files, "runcmd": runcmd})


def launch(cloud: ScalewayCloud, name: str, user_data: str, *, public: bool = False,
           sg: str | None = None) -> CloudInstance:
    return cloud.create(LaunchRequest(
        launch_id=f"{name}-{os.urandom(3).hex()}", cluster_name="box", node_type="cpu",
        instance_type="DEV1-S", image="ubuntu_noble", zones=("fr-par-2",), user_data=user_data,
        name=name, public_ip=public, private_network_id=PN, security_group_id=sg))


def in_ns(box: Box, ns: str, code: str) -> str:
    done = box.exec_in(ns, [PY, "-c", code])
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def fetch(box: Box, ns: str, url: str) -> str:
    return in_ns(box, ns, f"import urllib.request;print(urllib.request.urlopen({url!r}, "
                          "timeout=5).read().decode())")


def open_ports(box: Box, ns: str, ip: str) -> list[int]:
    """TCP ports of ``PROBE_PORTS`` that accept a connection from ``ns`` (probed in parallel;
    a filtered port is one that does not answer within the probe's timeout)."""
    code = ("import socket,json\nfrom concurrent.futures import ThreadPoolExecutor\n"
            "def probe(p):\n"
            " s=socket.socket();s.settimeout(0.3)\n"
            f" try: return p if s.connect_ex(({ip!r},p))==0 else None\n"
            " finally: s.close()\n"
            f"with ThreadPoolExecutor(16) as ex: out=[p for p in ex.map(probe,{list(PROBE_PORTS)})"
            " if p]\n"
            "print(json.dumps(out))")
    return list(json.loads(in_ns(box, ns, code)))


def serving(box: Box, vm: Any, ports: tuple[int, ...] = (8080,)) -> None:
    """Wait until the VM's units are up and its HTTP servers listen (seen from inside it)."""
    box.wait_booted(vm.server_id, units=[f"web{p}.service" for p in ports])
    code = ("import socket,time\nt=time.monotonic()+20\n"
            f"for p in {list(ports)}:\n"
            " while socket.socket().connect_ex(('127.0.0.1',p)):\n"
            "  assert time.monotonic()<t, p; time.sleep(0.02)\n")
    in_ns(box, vm.netns, code)


def boot_status(fake: BootingFake) -> dict[str, Any]:
    resp = requests.get(f"{fake.url}/_fake/boot", timeout=5)
    assert resp.status_code == 200
    return dict(resp.json())


def security_group(fake: BootingFake, cloud: ScalewayCloud, port: int) -> str:
    api = InstanceV1API(cloud.client)
    sg = api.create_security_group(description="head", stateful=True, name="box-head",
                                   project=cloud.client.default_project_id,
                                   inbound_default_policy="drop",  # type: ignore[arg-type]
                                   outbound_default_policy="accept")  # type: ignore[arg-type]
    api.create_security_group_rule(security_group_id=sg.security_group.id,
                                   protocol="TCP", direction="inbound",  # type: ignore[arg-type]
                                   action="accept", ip_range="0.0.0.0/0",  # type: ignore[arg-type]
                                   dest_port_from=port, editable=True, position=1)
    return str(sg.security_group.id)


# ------------------------------------------------------------------------------ pure parts


def test_cloud_init_modules_we_do_not_emit_are_boot_errors() -> None:
    assert parse_user_data(web_vm("t")).write_files[0].path == "/etc/inventiv/ray_token"
    with pytest.raises(BootError, match="unsupported cloud-init module.*bootcmd"):
        parse_user_data("#cloud-config\nbootcmd: [[echo]]\n")
    with pytest.raises(BootError, match="package_upgrade"):
        parse_user_data("#cloud-config\npackage_upgrade: true\n")
    with pytest.raises(BootError, match="not #cloud-config"):
        parse_user_data("#!/bin/sh\necho hi\n")
    with pytest.raises(BootError, match="unsupported \\[Service\\] key Foo"):
        parse_unit("x.service", "[Service]\nExecStart=/bin/true\nFoo=1\n")
    with pytest.raises(BootError, match="only User=root"):
        parse_unit("x.service", "[Service]\nExecStart=/bin/true\nUser=nobody\n")


def test_units_are_read_with_systemd_quoting() -> None:
    content = unit("u.service", ["/bin/echo", 'a "b"', "50%", "$HOME"],
                   env={"K": 'v "q" 10%'})["content"]
    parsed = parse_unit("u.service", content)
    assert parsed.exec_start == ["/bin/echo", 'a "b"', "50%", "$HOME"]
    assert parsed.environment == {"K": 'v "q" 10%'}
    assert parsed.restart == "always" and parsed.restart_sec == pytest.approx(0.1)


def test_nft_ruleset_is_default_drop_with_the_groups_rules() -> None:
    rules = Box.nft_ruleset(FirewallSpec("drop", True, [RuleSpec(dest_port_from=443)]))
    assert 'iifname "pub0" ip saddr 0.0.0.0/0 tcp dport 443 accept' in rules
    assert rules.rstrip().splitlines()[-3].strip() == 'iifname "pub0" drop'
    assert 'iifname != "pub0" accept' in rules  # private NICs are never filtered


def test_without_root_the_box_refuses_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(BoxUnavailable, match="needs root"):
        require_box_tools()
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-m", "cluster.fake_scaleway", "--boot"],
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=Path(__file__).resolve().parents[2]) \
        if os.geteuid() == 0 else None
    if done is not None:
        assert done.returncode != 0 and "needs root" in done.stderr


# ------------------------------------------------------------------------------ booting


def test_two_vms_have_their_own_etc_and_reach_each_other_privately(box: BootingFake) -> None:
    cloud = adapter(box)
    host_token = Path("/etc/inventiv/ray_token")
    host_had = host_token.read_bytes() if host_token.exists() else None
    a = launch(cloud, "vm-a", web_vm("token-of-a"))
    b = launch(cloud, "vm-b", web_vm("token-of-b"))
    vm_a, vm_b = box.box.vm(a.provider_instance_id), box.box.vm(b.provider_instance_id)
    assert vm_a is not None and vm_b is not None
    for vm in (vm_a, vm_b):
        assert box.box.wait_booted(vm.server_id)["phase"] == "booted", vm.status()
        serving(box.box, vm)
    ip_a, ip_b = vm_a.private_ips[0], vm_b.private_ips[0]
    assert a.private_ip == ip_a and b.private_ip == ip_b  # what IPAM returned
    # Each VM reads its own /etc; the host's is untouched.
    assert fetch(box.box, vm_a.netns, f"http://{ip_a}:8080/ray_token") == "token-of-a"
    assert fetch(box.box, vm_a.netns, f"http://{ip_b}:8080/ray_token") == "token-of-b"
    assert fetch(box.box, vm_b.netns, f"http://{ip_a}:8080/ray_token") == "token-of-a"
    assert (host_token.read_bytes() if host_token.exists() else None) == host_had
    assert vm_a.view("/etc/inventiv/ray_token").read_text() == "token-of-a"
    assert oct(vm_a.view("/etc/inventiv/ray_token").stat().st_mode & 0o777) == "0o600"
    # ExecStartPre ran with the unit's Environment, writing to the VM's own /var.
    [pre] = vm_a.view("/var/lib/web").iterdir()
    assert pre.read_text().strip() == "port 8080 100%"
    assert not Path("/var/lib/web").exists()
    # No public interface without a public IP: nothing answers on the public side.
    assert a.public_ip is None and vm_a.public_ip is None


def test_public_side_sees_only_the_security_groups_ports(box: BootingFake) -> None:
    cloud = adapter(box)
    sg = security_group(box, cloud, 8443)
    head = launch(cloud, "head", web_vm("head-token", ports=(8080, 8443)), public=True, sg=sg)
    peer = launch(cloud, "peer", web_vm("peer-token"))
    vm = box.box.vm(head.provider_instance_id)
    peer_vm = box.box.vm(peer.provider_instance_id)
    assert vm is not None and peer_vm is not None and head.public_ip
    assert head.public_ip.startswith("198.18.")  # never a routable address
    serving(box.box, vm, (8080, 8443))
    serving(box.box, peer_vm)
    public_ns = boot_status(box)["public_netns"]
    assert open_ports(box.box, public_ns, head.public_ip) == [8443]
    # The private network is not filtered (security groups apply to public traffic only).
    assert open_ports(box.box, peer_vm.netns, vm.private_ips[0]) == [8080, 8443]
    # The public side cannot reach the private network at all.
    assert open_ports(box.box, public_ns, vm.private_ips[0]) == []


def test_unknown_module_is_a_boot_error_the_test_sees(box: BootingFake) -> None:
    cloud = adapter(box)
    inst = launch(cloud, "bad", "#cloud-config\nwrite_files: []\npackages: [nginx]\n")
    vm = boot_status(box)["vms"][inst.provider_instance_id]
    assert vm["phase"] == "failed"
    assert "unsupported cloud-init module(s): packages" in vm["error"]
    # A runcmd that fails is a boot error too (as cloud-init reports it).
    inst = launch(cloud, "bad-cmd", dump_cloud_config({"runcmd": [["/bin/false"]]}))
    status = box.box.wait_booted(inst.provider_instance_id)
    assert status["phase"] == "failed" and "runcmd[0] /bin/false exited 1" in status["error"]


def test_restart_policy_restarts_a_unit_that_exits(box: BootingFake) -> None:
    cloud = adapter(box)
    flaky = unit("flaky.service", ["/bin/sh", "-c", "mkdir -p /var/lib/f && echo run >> "
                                   "/var/lib/f/runs; exit 3"])
    once = unit("once.service", ["/bin/sh", "-c", "mkdir -p /var/lib/f && echo once >> "
                                 "/var/lib/f/once; exit 3"],
                restart="no")
    inst = launch(cloud, "flaky", dump_cloud_config({
        "write_files": [flaky, once],
        "runcmd": [["systemctl", "enable", "--now", "flaky.service"],
                   ["systemctl", "start", "once.service"]]}))
    vm = box.box.vm(inst.provider_instance_id)
    assert vm is not None
    deadline = time.monotonic() + 20
    while box.box.wait_booted(vm.server_id)["units"]["flaky.service"]["restarts"] < 2:
        assert time.monotonic() < deadline, vm.status()
        time.sleep(0.05)
    assert len(vm.view("/var/lib/f/runs").read_text().split()) >= 2
    status = vm.status()["units"]["once.service"]
    assert status["restarts"] == 0 and status["last_exit"] == 3
    assert vm.view("/var/lib/f/once").read_text() == "once\n"


def test_terminate_leaves_no_namespace_process_or_bridge() -> None:
    try:
        require_box_tools()
    except BoxUnavailable as exc:
        pytest.skip(str(exc))
    fake = serve_booting()
    try:
        cloud = adapter(fake)
        inst = launch(cloud, "gone", web_vm("t"), public=True)
        vm = fake.box.vm(inst.provider_instance_id)
        assert vm is not None
        status = fake.box.wait_booted(vm.server_id, units=["web8080.service"])
        pids = [status["pid"], status["units"]["web8080.service"]["pid"]]
        assert vm.netns in list_box_netns()
        # The user data can be read, then deleted through the API (as the head does).
        api = InstanceV1API(cloud.client)
        assert api.list_server_user_data(server_id=vm.server_id).user_data == ["cloud-init"]
        api.delete_server_user_data(server_id=vm.server_id, key="cloud-init")
        assert api.list_server_user_data(server_id=vm.server_id).user_data == []
        assert cloud.terminate(inst.provider_instance_id, inst.zone, launch_id=inst.launch_id,
                               wait=True)
        assert fake.box.vm(vm.server_id) is None
        assert vm.netns not in list_box_netns()
        assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
        assert fake.state.servers == {}
    finally:
        fake.stop()
    assert [ns for ns in list_box_netns() if ns.startswith(fake.box.prefix)] == []
    assert not fake.box.root.exists()  # the switch netns (all bridges) went with it


def test_a_box_root_the_vms_would_hide_is_refused() -> None:
    with pytest.raises(BoxUnavailable, match="outside /etc, /var, /run and /tmp"):
        Box(Path("/tmp/somewhere"))


def test_leftovers_of_a_dead_owner_are_swept() -> None:
    try:
        require_box_tools()
    except BoxUnavailable as exc:
        pytest.skip(str(exc))
    # A box whose owner process died without cleaning up (SIGKILL): its names carry the pid.
    script = ("import os,sys;from pathlib import Path;"
              "from cluster.fake_scaleway.box import Box;"
              f"b=Box(Path({str(DEFAULT_ROOT)!r}));print(b.prefix,flush=True);os._exit(0)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True, cwd=Path(__file__).resolve().parents[2])
    prefix = done.stdout.strip()
    assert any(ns.startswith(prefix) for ns in list_box_netns())
    assert (DEFAULT_ROOT / prefix).is_dir()
    removed = sweep(DEFAULT_ROOT)
    assert any(prefix in r for r in removed)
    assert not any(ns.startswith(prefix) for ns in list_box_netns())
    assert not (DEFAULT_ROOT / prefix).exists()


def test_the_seeded_head_group_opens_only_443(box: BootingFake) -> None:
    from cluster.fake_scaleway.booting import BOX_HEAD_SECURITY_GROUP, BOX_PRIVATE_NETWORK

    cloud = adapter(box)
    head = cloud.create(LaunchRequest(
        launch_id=f"h-{os.urandom(3).hex()}", cluster_name="box", node_type="head",
        instance_type="DEV1-S", image="ubuntu_noble", zones=("fr-par-2",),
        user_data=web_vm("t", ports=(443, 8080)), name="box-head", public_ip=True,
        private_network_id=BOX_PRIVATE_NETWORK, security_group_id=BOX_HEAD_SECURITY_GROUP))
    vm = box.box.vm(head.provider_instance_id)
    assert vm is not None and head.public_ip
    serving(box.box, vm, (443, 8080))
    assert open_ports(box.box, box.box.public_netns, head.public_ip) == [443]


def test_the_api_answers_on_the_public_side_only(box: BootingFake) -> None:
    cloud = adapter(box)
    head = launch(cloud, "api-head", web_vm("t"), public=True)
    worker = launch(cloud, "api-worker", web_vm("t"))
    code = ("import urllib.request,urllib.error\n"
            "try:\n"
            f" urllib.request.urlopen({box.box_api_url + '/instance/v1/zones/fr-par-2/servers'!r},"
            " timeout=2)\n"
            "except urllib.error.HTTPError as e: print(e.code)\n"
            "except OSError as e: print('unreachable')\n")
    head_vm, worker_vm = (box.box.vm(i.provider_instance_id) for i in (head, worker))
    assert head_vm is not None and worker_vm is not None
    assert in_ns(box.box, head_vm.netns, code) == "401"  # reached; no token, denied
    assert in_ns(box.box, worker_vm.netns, code) == "unreachable"  # no public interface


def test_module_entry_point_prints_the_api_url_and_cleans_up_on_sigterm() -> None:
    try:
        require_box_tools()
    except BoxUnavailable as exc:
        pytest.skip(str(exc))
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "cluster.fake_scaleway", "--boot",
                             "--port", "0"], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        rest = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(7))
        assert first.startswith("SCW_API_URL=http://127.0.0.1:")
        public_ns = rest["INVENTIV_BOX_PUBLIC_NETNS"]
        assert public_ns in list_box_netns()
        resp = requests.get(first.split("=", 1)[1] + "/_fake/boot", timeout=5)
        assert resp.json()["public_netns"] == public_ns
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert public_ns not in list_box_netns()
