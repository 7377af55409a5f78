"""The booting fake: the fake Scaleway API whose powered-on servers boot in a :class:`Box`.

:func:`serve_booting` starts the API (real-time clock, public IPs in 198.18.0.0/15) with a
:class:`BoxBooter` and a ticker thread, so a server that reaches ``running`` boots without anyone
polling the API: its private NICs join their network's bridge with their IPAM address, its public
IP sits behind its security group, its ``cloud-init`` user data runs (a snapshot taken at boot,
as on Scaleway). Power-off, terminate and delete halt it. ``GET /_fake/boot`` shows every VM's
boot phase, error and units. ``python -m cluster.fake_scaleway --boot`` runs it standalone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster.fake_scaleway import FAKE_PROJECT_ID, FakeScaleway, serve_in_thread
from cluster.fake_scaleway.box import (
    DEFAULT_ROOT,
    PROBE_ADDRESS,
    BootSpec,
    Box,
    FirewallSpec,
    NicSpec,
    RuleSpec,
)
from cluster.fake_scaleway.state import (
    FakeClock,
    FakeConfig,
    FakeState,
    PrivateNetwork,
    SecurityGroup,
    SecurityGroupRule,
    Server,
    region_of,
)

if TYPE_CHECKING:
    from cluster.fake_scaleway.box_db import BoxDatabase

log = logging.getLogger(__name__)
BOX_PUBLIC_IP_PREFIX = "198.18"
# What configs/clusters/box.yaml names: seeded as a platform team creates them once.
BOX_PRIVATE_NETWORK = "pn-box"
BOX_HEAD_SECURITY_GROUP = "sg-box-head"


def seed_box_network(state: FakeState, project: str = FAKE_PROJECT_ID,
                     zone: str = "fr-par-2") -> None:
    """The private network ``pn-box`` (named ``box``) and the head's security group
    ``sg-box-head`` (stateful, inbound default drop, TCP 443 only)."""
    with state.lock:
        now = state.clock.now()
        state.private_networks[BOX_PRIVATE_NETWORK] = PrivateNetwork(
            id=BOX_PRIVATE_NETWORK, name="box", region=region_of(zone), project=project,
            subnets=["172.16.0.0/22"], created_at=now)
        state.security_groups[BOX_HEAD_SECURITY_GROUP] = SecurityGroup(
            id=BOX_HEAD_SECURITY_GROUP, name="box-head", zone=zone, project=project,
            created_at=now, inbound_default_policy="drop", stateful=True,
            rules=[SecurityGroupRule(id="sg-box-head-443", dest_port_from=443, position=1)])


class BoxBooter:
    """Turns the fake's server transitions into box boots and halts (errors kept, not raised:
    a box failure must not turn into an API 500)."""

    def __init__(self, box: Box) -> None:
        self.box = box
        self.errors: dict[str, str] = {}

    def spec_for(self, state: FakeState, server: Server) -> BootSpec:
        nics = []
        for nid in server.nic_ids:
            nic = state.nics.get(nid)
            ip = state.ips.get(nic.ip_id) if nic else None
            if nic is not None and ip is not None:
                pn = state.private_networks.get(nic.private_network_id)
                nics.append(NicSpec(nic.private_network_id, ip.address, nic.mac_address,
                                    network_name=pn.name if pn else None))
        firewall = None
        if server.public_ip:
            sg = state.security_groups.get(server.security_group or "")
            # An unknown group is Scaleway's default one: everything accepted.
            firewall = FirewallSpec() if sg is None else FirewallSpec(
                inbound_default_policy=sg.inbound_default_policy, stateful=sg.stateful,
                rules=[RuleSpec(r.direction, r.action, r.protocol, r.ip_range,
                                r.dest_port_from, r.dest_port_to)
                       for r in sorted(sg.rules, key=lambda r: r.position)])
        return BootSpec(server_id=server.id, name=server.name,
                        user_data=server.user_data.get("cloud-init"), nics=nics,
                        public_ip=server.public_ip, firewall=firewall)

    def on_running(self, state: FakeState, server: Server) -> None:
        try:
            self.box.boot(self.spec_for(state, server))
        except Exception as exc:  # noqa: BLE001 - reported through /_fake/boot
            log.exception("box: boot of %s failed", server.id)
            self.errors[server.id] = f"{type(exc).__name__}: {exc}"

    def on_halted(self, state: FakeState, server: Server) -> None:
        try:
            self.box.halt(server.id)
        except Exception as exc:  # noqa: BLE001
            log.exception("box: halt of %s failed", server.id)
            self.errors[server.id] = f"{type(exc).__name__}: {exc}"

    def describe(self) -> dict[str, Any]:
        vms = {}
        for vm in self.box.vms():
            vms[vm.server_id] = {**vm.status(), "netns": vm.netns, "name": vm.name,
                                 "private_ips": vm.private_ips, "public_ip": vm.public_ip}
        for sid, err in self.errors.items():
            vms.setdefault(sid, {"phase": "failed", "error": err, "units": {}})
        return {"public_netns": self.box.public_netns, "vms": vms}


@dataclass
class BootingFake:
    """A running booting fake: the API, its box, and how to stop both."""

    api: FakeScaleway
    box: Box
    booter: BoxBooter
    box_api_url: str  # the API as VMs with a public interface reach it
    database: BoxDatabase | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _ticker: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.api.url

    @property
    def state(self) -> FakeState:
        return self.api.state

    def env(self) -> dict[str, str]:
        env = {**self.api.env(), "INVENTIV_BOX_PUBLIC_NETNS": self.box.public_netns,
               "INVENTIV_BOX_API_URL": self.box_api_url}
        if self.database is not None:
            env["INVENTIV_DATABASE_PASSWORD"] = self.database.password
        return env

    def start_database(self) -> BoxDatabase:
        """The box's managed database on ``pn-box`` (``box-db.box.internal``; what
        configs/clusters/box.yaml names), started once; VMs booted afterwards resolve it."""
        if self.database is None:
            from cluster.fake_scaleway.box_db import start_database

            self.database = start_database(self.box, BOX_PRIVATE_NETWORK)
        return self.database

    def stop(self) -> None:
        """Stop ticking, halt every VM, remove the box, stop the API (idempotent)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(5)
        self.state.booter = None
        self.box.close()
        self.api.stop()

    def __enter__(self) -> BootingFake:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def serve_booting(*, host: str = "127.0.0.1", port: int = 0, root: Path = DEFAULT_ROOT,
                  binds: Sequence[tuple[str, str]] = (), config: FakeConfig | None = None,
                  tick_s: float = 0.05) -> BootingFake:
    """Start the booting fake (needs root: :class:`cluster.fake_scaleway.box.BoxUnavailable`)."""
    box = Box(root, binds=binds)
    try:
        cfg = config or FakeConfig()
        cfg.public_ip_prefix = BOX_PUBLIC_IP_PREFIX
        state = FakeState(clock=FakeClock(auto=True), config=cfg)
        seed_box_network(state)
        booter = BoxBooter(box)
        state.booter = booter
        # The API also answers on the box's public side (where the head reaches Scaleway's
        # API in production: over its public interface), at PROBE_ADDRESS.
        public = box.listen_in(box.public_netns, PROBE_ADDRESS)
        api = serve_in_thread(state, host=host, port=port, extra_sockets=[public])
        box_api_url = f"http://{PROBE_ADDRESS}:{public.getsockname()[1]}"
    except Exception:
        box.close()
        raise
    fake = BootingFake(api=api, box=box, booter=booter, box_api_url=box_api_url)

    def tick() -> None:
        while not fake._stop.wait(tick_s):
            try:
                state.tick()
            except Exception:  # noqa: BLE001 - keep ticking
                log.exception("box: tick failed")

    fake._ticker = threading.Thread(target=tick, name="fake-scaleway-boot-ticker", daemon=True)
    fake._ticker.start()
    return fake


__all__ = ["BOX_HEAD_SECURITY_GROUP", "BOX_PRIVATE_NETWORK", "BOX_PUBLIC_IP_PREFIX",
           "BootingFake", "BoxBooter", "seed_box_network", "serve_booting"]
