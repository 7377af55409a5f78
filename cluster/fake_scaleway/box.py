"""Scaleway in a box: the fake's servers boot as Linux namespaces on this machine.

One :class:`Box` owns a *switch* network namespace holding one Linux bridge per private network
and one "public" bridge, a *public probe* namespace on the public bridge (where a test stands to
reach the head's public IP), and one network namespace per running VM. A VM's private NICs are
veth pairs (``ethN`` in the VM) on its network's bridge with the address IPAM returned; a VM with a
public IP gets ``pub0`` on the public bridge, filtered by its security group with nftables
(inbound default policy + the group's accept/drop rules, stateful). Nothing is created in the
host's network namespace and no address leaves these namespaces (public IPs are taken from
198.18.0.0/15, the benchmarking range).

Each VM runs :mod:`cluster.fake_scaleway.vm_init` in its own mount namespace (own ``/etc``,
``/var``, ``/run``, ``/tmp``). Terminate kills every process in the VM's network namespace and
deletes it. Every name starts with ``ibx-<owner pid>-``: :meth:`Box.close` (also registered with
``atexit``) removes the box, and :func:`sweep` removes the leftovers of boxes whose owner died.
Needs root (:class:`BoxUnavailable` otherwise).
"""

# This module runs fixed system tools (ip, nft, mount) and the VM's own cloud-init commands.
# ruff: noqa: S603, S607, S108

from __future__ import annotations

import atexit
import ctypes
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.fake_scaleway.cloudinit import BootError, parse_user_data

NAME_PREFIX = "ibx-"
DEFAULT_ROOT = Path(os.environ.get("INVENTIV_BOX_DIR", "/srv/inventiv-box"))
PUBLIC_NET = ipaddress.ip_network("198.18.0.0/15")
PROBE_ADDRESS = "198.19.255.254"  # the public probe namespace: "the internet" of the box
CLONE_NEWNET = 0x40000000
PACKAGES_DIR = Path(__file__).resolve().parents[2]
_OWNED = re.compile(r"^ibx-(\d+)-[0-9a-f]+")


class BoxUnavailable(RuntimeError):
    """The box cannot run here (not root, or ``ip``/``nft``/``unshare`` missing)."""


def require_box_tools() -> None:
    """Raise :class:`BoxUnavailable` with what is missing."""
    if os.geteuid() != 0:
        raise BoxUnavailable("the booting fake needs root (network and mount namespaces)")
    missing = [t for t in ("ip", "nft", "nsenter", "unshare", "mount") if not shutil.which(t)]
    if missing:
        raise BoxUnavailable(f"the booting fake needs {', '.join(missing)} "
                             "(Debian: iproute2 nftables util-linux)")


def _run(args: Sequence[str], *, input_text: str | None = None, check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), input=input_text, capture_output=True, text=True,
                          check=False, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def netns_pids(ns: str) -> list[int]:
    done = _run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def kill_netns(ns: str, grace_s: float = 3.0,
               children: Sequence[subprocess.Popen[bytes]] = ()) -> None:
    """Stop every process whose network namespace is ``ns``, then delete ``ns``. ``children``:
    our own processes among them, reaped as they exit (a zombie still counts as in ``ns``)."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        pids = netns_pids(ns)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(0.02)
            for child in children:
                child.poll()
            pids = netns_pids(ns)
        if not pids:
            break
    _run(["ip", "netns", "del", ns], check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_box_netns() -> list[str]:
    done = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in done.stdout.splitlines()
            if line.startswith(NAME_PREFIX)]


def sweep(root: Path = DEFAULT_ROOT, *, include_own: bool = False) -> list[str]:
    """Remove namespaces/dirs of boxes whose owner process is gone; returns what was removed."""
    removed: list[str] = []
    for ns in list_box_netns():
        m = _OWNED.match(ns)
        if m and (not _pid_alive(int(m.group(1))) or (include_own and
                                                        int(m.group(1)) == os.getpid())):
            kill_netns(ns)
            removed.append(ns)
    etc_netns = Path("/etc/netns")
    if etc_netns.is_dir():
        for d in etc_netns.iterdir():
            m = _OWNED.match(d.name)
            if m and (not _pid_alive(int(m.group(1))) or (include_own and
                                                            int(m.group(1)) == os.getpid())):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(str(d))
    if root.is_dir():
        for d in root.iterdir():
            m = _OWNED.match(d.name)
            if m and (not _pid_alive(int(m.group(1))) or (include_own and
                                                            int(m.group(1)) == os.getpid())):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(str(d))
    return removed


@dataclass
class NicSpec:
    """One private NIC of a booting server: its network and IPAM address (``a.b.c.d/nn``)."""

    private_network_id: str
    address: str
    mac_address: str | None = None
    network_name: str | None = None  # the server is ``<name>.<network_name>.internal`` there


@dataclass
class RuleSpec:
    """One security-group rule, as the Instance API has it."""

    direction: str = "inbound"
    action: str = "accept"
    protocol: str = "TCP"
    ip_range: str = "0.0.0.0/0"
    dest_port_from: int | None = None
    dest_port_to: int | None = None


@dataclass
class FirewallSpec:
    """A security group on the public interface."""

    inbound_default_policy: str = "accept"
    stateful: bool = True
    rules: list[RuleSpec] = field(default_factory=list)


@dataclass
class BootSpec:
    """Everything the box needs to boot one server."""

    server_id: str
    name: str
    user_data: bytes | None
    nics: list[NicSpec] = field(default_factory=list)
    public_ip: str | None = None
    firewall: FirewallSpec | None = None


@dataclass
class BoxVm:
    """A booted (or failed) VM of the box."""

    server_id: str
    name: str
    netns: str
    dir: Path
    private_ips: list[str]
    public_ip: str | None
    process: subprocess.Popen[bytes] | None = None
    boot_error: str | None = None

    def status(self) -> dict[str, Any]:
        """``<vm dir>/status.json`` (``phase``, ``error``, ``units``), or the boot error."""
        if self.boot_error:
            return {"phase": "failed", "error": self.boot_error, "units": {}}
        try:
            return dict(json.loads((self.dir / "status.json").read_text()))
        except (OSError, ValueError):
            return {"phase": "starting", "error": None, "units": {}}

    def log(self, name: str) -> str:
        try:
            return (self.dir / "logs" / name).read_text(errors="replace")
        except OSError:
            return ""

    def view(self, path: str) -> Path:
        """Where a file the VM wrote under ``/etc`` or ``/var`` lives on the host."""
        top, _, rest = path.lstrip("/").partition("/")
        if top not in ("etc", "var"):
            raise ValueError("only /etc and /var views are kept on the host")
        return self.dir / "fs" / f"{top}.upper" / rest


class Box:
    """The namespaces, bridges and VM processes of one booting fake."""

    def __init__(self, root: Path = DEFAULT_ROOT, *, binds: Sequence[tuple[str, str]] = (),
                 python: str = sys.executable, hosts: Mapping[str, Sequence[str]] | None = None
                 ) -> None:
        resolved = root.resolve()
        if any(resolved.is_relative_to(p) for p in ("/etc", "/var", "/run", "/tmp")):
            # VMs get their own views of these: the box's files would vanish from them.
            raise BoxUnavailable(f"the box directory {root} must be outside /etc, /var, /run "
                                 "and /tmp")
        require_box_tools()
        sweep(root)
        self.id = secrets.token_hex(3)
        self.prefix = f"{NAME_PREFIX}{os.getpid()}-{self.id}"
        self.root = root / self.prefix
        self.root.mkdir(parents=True, exist_ok=False)
        self.binds = list(binds)
        self.python = python
        self.hosts: dict[str, list[str]] = {k: list(v) for k, v in (hosts or {}).items()}
        self.switch = f"{self.prefix}-sw"
        self.public_netns = f"{self.prefix}-public"
        self._lock = threading.RLock()
        self._bridges: dict[str, str] = {}
        self._vms: dict[str, BoxVm] = {}
        self._public_names: dict[str, str] = {}
        self._closers: list[Any] = []  # services of the box, stopped before its namespaces
        self._count = 0
        self._closed = False
        atexit.register(self.close)
        try:
            self._setup()
        except Exception:
            self.close()
            raise

    # ------------------------------------------------------------------ network

    def _setup(self) -> None:
        for ns in (self.switch, self.public_netns):
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", self.switch, "link", "add", "brpub", "type", "bridge"])
        _run(["ip", "-n", self.switch, "link", "set", "brpub", "up"])
        self._veth(self.switch, "vprobe", self.public_netns, "pub0", "brpub")
        _run(["ip", "-n", self.public_netns, "addr", "add",
              f"{PROBE_ADDRESS}/{PUBLIC_NET.prefixlen}", "dev", "pub0"])
        _run(["ip", "-n", self.public_netns, "link", "set", "pub0", "up"])

    def listen_in(self, netns: str, address: str, port: int = 0) -> socket.socket:
        """A listening TCP socket created inside ``netns`` (a thread enters it: network
        namespaces are per thread), servable from any thread of this process."""
        out: list[socket.socket | BaseException] = []

        def enter_and_bind() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(f"/run/netns/{netns}") as fh:
                    if libc.setns(fh.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns {netns}")
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((address, port))
                sock.listen(128)
                out.append(sock)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                out.append(exc)

        worker = threading.Thread(target=enter_and_bind, name=f"setns-{netns}")
        worker.start()
        worker.join()
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]

    def _veth(self, switch: str, host_end: str, ns: str, vm_end: str, bridge: str) -> None:
        _run(["ip", "-n", switch, "link", "add", host_end, "type", "veth", "peer", "name",
              vm_end, "netns", ns])
        _run(["ip", "-n", switch, "link", "set", host_end, "master", bridge])
        _run(["ip", "-n", switch, "link", "set", host_end, "up"])

    def bridge_for(self, private_network_id: str) -> str:
        """The bridge of a private network (created on first use)."""
        with self._lock:
            if private_network_id not in self._bridges:
                name = f"brpn{len(self._bridges)}"
                _run(["ip", "-n", self.switch, "link", "add", name, "type", "bridge"])
                _run(["ip", "-n", self.switch, "link", "set", name, "up"])
                self._bridges[private_network_id] = name
            return self._bridges[private_network_id]

    def service_netns(self, label: str, private_network_id: str, address: str,
                      names: Sequence[str] = ()) -> str:
        """A namespace on a private network's bridge at ``address`` (``a.b.c.d/nn``), for a
        managed service of the box (e.g. its database: a private endpoint, as Scaleway's
        managed databases have); ``names`` go to the ``/etc/hosts`` of VMs booted later."""
        with self._lock:
            if self._closed:
                raise BoxUnavailable("the box is closed")
            ns = f"{self.prefix}-{label}"
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            self._veth(self.switch, f"vs{label}"[:15], ns, "eth0",
                       self.bridge_for(private_network_id))
            _run(["ip", "-n", ns, "addr", "add", address, "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            if names:
                self.hosts.setdefault(address.split("/")[0], []).extend(names)
            return ns

    def publish_public_name(self, name: str, ip: str) -> None:
        """Resolve ``name`` to ``ip`` in the public probe namespace (the box's "public DNS",
        as an operator's A record for the front door's domain): ``ip netns exec`` binds
        ``/etc/netns/<ns>/hosts`` over ``/etc/hosts``; removed with the box."""
        with self._lock:
            self._public_names[name] = ip
            etc = Path("/etc/netns") / self.public_netns
            etc.mkdir(parents=True, exist_ok=True)
            base = Path("/etc/hosts").read_text()
            (etc / "hosts").write_text(base.rstrip("\n") + "\n" + "".join(
                f"{addr} {host}\n" for host, addr in self._public_names.items()))

    @staticmethod
    def nft_ruleset(fw: FirewallSpec, iface: str = "pub0") -> str:
        """The VM's nftables ruleset for its public interface (private ones never filtered)."""
        lines = ["table inet inventiv_sg {", " chain input {",
                 "  type filter hook input priority 0; policy accept;",
                 f'  iifname != "{iface}" accept']
        if fw.stateful:
            lines.append(f'  iifname "{iface}" ct state established,related accept')
        for rule in fw.rules:
            if rule.direction not in ("inbound", "both"):
                continue
            verdict = "accept" if rule.action == "accept" else "drop"
            net = ipaddress.ip_network(rule.ip_range, strict=False)
            if net.version != 4:
                continue
            match = [f'iifname "{iface}"', f"ip saddr {net}"]
            proto = rule.protocol.upper()
            if proto in ("TCP", "UDP"):
                match.append(proto.lower())
                if rule.dest_port_from is not None:
                    hi = rule.dest_port_to or rule.dest_port_from
                    span = str(rule.dest_port_from) if hi == rule.dest_port_from \
                        else f"{rule.dest_port_from}-{hi}"
                    match.append(f"dport {span}")
            elif proto == "ICMP":
                match.append("ip protocol icmp")
            lines.append("  " + " ".join(match) + f" {verdict}")
        policy = "accept" if fw.inbound_default_policy == "accept" else "drop"
        lines += [f'  iifname "{iface}" {policy}', " }", "}"]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ VMs

    def boot(self, spec: BootSpec) -> BoxVm:
        """Give the server its namespaces and interfaces, then run its cloud-init there."""
        with self._lock:
            if self._closed:
                raise BoxUnavailable("the box is closed")
            if spec.server_id in self._vms:
                return self._vms[spec.server_id]
            self._count += 1
            n = self._count
            ns = f"{self.prefix}-vm{n}"
            vm_dir = self.root / f"vm{n}"
            (vm_dir / "logs").mkdir(parents=True)
            vm = BoxVm(server_id=spec.server_id, name=spec.name, netns=ns, dir=vm_dir,
                       private_ips=[nic.address.split("/")[0] for nic in spec.nics],
                       public_ip=spec.public_ip)
            self._vms[spec.server_id] = vm
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            for k, nic in enumerate(spec.nics):
                self._veth(self.switch, f"v{n}n{k}", ns, f"eth{k}",
                           self.bridge_for(nic.private_network_id))
                _run(["ip", "-n", ns, "addr", "add", nic.address, "dev", f"eth{k}"])
                _run(["ip", "-n", ns, "link", "set", f"eth{k}", "up"])
                names = [spec.name]
                if nic.network_name:  # Scaleway's private DNS: <server>.<network>.internal
                    names.insert(0, f"{spec.name}.{nic.network_name}.internal")
                self.hosts.setdefault(nic.address.split("/")[0], []).extend(names)
            if spec.public_ip:
                self._veth(self.switch, f"v{n}p", ns, "pub0", "brpub")
                _run(["ip", "-n", ns, "addr", "add", f"{spec.public_ip}/{PUBLIC_NET.prefixlen}",
                      "dev", "pub0"])
                _run(["ip", "-n", ns, "link", "set", "pub0", "up"])
                _run(["ip", "netns", "exec", ns, "nft", "-f", "-"],
                     input_text=self.nft_ruleset(spec.firewall or FirewallSpec()))
            if spec.user_data is None:
                vm.boot_error = "BootError: the server has no cloud-init user data"
                return vm
            try:
                parse_user_data(spec.user_data)
            except BootError as exc:
                vm.boot_error = f"BootError: {exc}"
                return vm
            (vm_dir / "user-data").write_bytes(spec.user_data)
            (vm_dir / "user-data").chmod(0o600)
            (vm_dir / "vm.json").write_text(json.dumps({
                "user_data_path": str(vm_dir / "user-data"), "binds": self.binds,
                "hosts": self.hosts, "hostname": spec.name}))
            log = open(vm_dir / "logs" / "init.log", "ab")  # noqa: SIM115 (child's stdout)
            env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                   "PYTHONPATH": str(PACKAGES_DIR), "HOME": "/root"}
            vm.process = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{ns}", "--", "unshare", "--mount",
                 "--propagation", "private", "--", self.python, "-m",
                 "cluster.fake_scaleway.vm_init", str(vm_dir)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd="/",
                start_new_session=True)
            log.close()
            return vm

    def halt(self, server_id: str) -> None:
        """Power the VM off: stop its processes, delete its namespace (idempotent)."""
        with self._lock:
            vm = self._vms.pop(server_id, None)
        if vm is None:
            return
        kill_netns(vm.netns, children=[vm.process] if vm.process else [])
        if vm.process is not None:
            try:
                vm.process.wait(5)
            except subprocess.TimeoutExpired:
                vm.process.kill()
                vm.process.wait()

    def vm(self, server_id: str) -> BoxVm | None:
        with self._lock:
            return self._vms.get(server_id)

    def vms(self) -> list[BoxVm]:
        with self._lock:
            return list(self._vms.values())

    def wait_booted(self, server_id: str, timeout_s: float = 30.0,
                    units: Sequence[str] = ()) -> dict[str, Any]:
        """Wait until the VM's cloud-init finished (or failed) and ``units`` are active."""
        deadline = time.monotonic() + timeout_s
        while True:
            vm = self.vm(server_id)
            status: dict[str, Any] = vm.status() if vm else {"phase": "gone",
                                                             "error": "not booted", "units": {}}
            if status["phase"] == "failed":
                return status
            if status["phase"] == "booted" and all(
                    status["units"].get(u, {}).get("active") for u in units):
                return status
            if time.monotonic() >= deadline:
                raise TimeoutError(f"VM {server_id} not booted: {status}")
            time.sleep(0.05)

    def exec_in(self, netns: str, argv: Sequence[str], *, timeout_s: float = 30.0
                ) -> subprocess.CompletedProcess[str]:
        """Run a command in one of the box's network namespaces (e.g. the public probe)."""
        return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True,
                              text=True, timeout=timeout_s, check=False,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Stop every VM and remove every namespace and directory of this box."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            ids = list(self._vms)
        for sid in ids:
            self.halt(sid)
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception:  # noqa: BLE001, S110 - the namespaces go below regardless
                pass
        shutil.rmtree(Path("/etc/netns") / self.public_netns, ignore_errors=True)
        for ns in list_box_netns():
            if ns.startswith(self.prefix):
                kill_netns(ns)
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.close)

    def __enter__(self) -> Box:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


__all__ = ["Box", "BoxUnavailable", "BoxVm", "BootSpec", "FirewallSpec", "NicSpec",
           "RuleSpec", "kill_netns", "list_box_netns", "require_box_tools", "sweep"]
