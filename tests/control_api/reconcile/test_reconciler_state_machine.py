"""A hypothesis state machine: the real node provider (``InventivNodeProvider``) scaling up and
down on the fake Scaleway API (real SDK over HTTP), with injected cloud faults, provider crashes
at the two dangerous points of the provisioning protocol, Ray nodes that never join, VMs whose
intent was never written, clock jumps and reconcile passes (some with a failing listing).

The provider's lifecycle events are applied synchronously through the control API's own event
code (``control_api.services.internal.apply_lifecycle_events``) -- what the internal endpoint
does -- with the fake clock's time, so deadlines and grace periods are deterministic.
A "crash" is a ``BaseException`` raised while reporting a state: the event is lost (it never
reached the durable spool) and the provider object is replaced, like a restarted process.

After settling (faults cleared, Ray's view known, the clock pushed past every grace period and
deadline, reconcile passes run) the invariants are: every tagged VM has exactly one
non-terminated instance row; no launch id has two VMs (also checked after every step); no cost
interval is open for a VM that is gone; every VM still there has an open cost interval; no row
is left past its state deadline; one more pass changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from ray.autoscaler.node_launch_exception import NodeLaunchException
from ray.autoscaler.tags import TAG_RAY_USER_NODE_TYPE
from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from cluster.fake_scaleway import FakeClock, FakeConfig, FakeScaleway
from cluster.node_provider import InventivNodeProvider, LifecycleReporter
from control_api.reconcile import Reconciler
from control_api.services.internal import apply_lifecycle_events
from core.clouds import TAG_LAUNCH, CloudError, LaunchRequest, parse_tags
from core.db import make_sessionmaker
from core.models import BillingInterval, Instance, InstanceState
from core.wire import LifecycleEventIn
from tests.cluster.conftest import ScwEnv
from tests.conftest import truncate_all
from tests.control_api.reconcile.helpers import CLUSTER, IMAGE, SETTINGS, TYPE, seed_catalog

FINAL = {InstanceState.TERMINATED, InstanceState.ARCHIVED}
CREATE_FAULTS = [None, None, "server_error", "html_502", "lost_response", "lost_response_drop",
                 "quota", "quota_legacy", "out_of_stock"]
LIST_FAULTS = ["server_error", "html_502", "transient_state"]


class Crash(BaseException):
    """The provider process dies here (not an ``Exception``: nothing in it catches this)."""


class DirectReporter(LifecycleReporter):
    """Applies each event at once through the control API's event code, at the fake time;
    ``crash_on`` makes the provider die while reporting that state (the event is lost)."""

    def __init__(self, maker: sessionmaker[Any], clock: Any) -> None:
        super().__init__(None, cluster_name=CLUSTER, provider="scaleway")
        self.maker = maker
        self.clock = clock
        self.crash_on: str | None = None

    def report(self, state: str, **kw: Any) -> None:  # type: ignore[override]
        if state == self.crash_on:
            self.crash_on = None
            raise Crash(state)
        super().report(state, **kw)
        event = dict(self.sent[-1], at=self.clock().isoformat())
        with self.maker.begin() as s:
            result = apply_lifecycle_events(s, [LifecycleEventIn.model_validate(event)],
                                            actor="node_provider", now=self.clock())
        assert not [r for r in result.rejected if r.code != "invalid_transition"], result


def run_machine(engine: Engine, fake: FakeScaleway, token: Path, max_examples: int,
                steps: int) -> None:
    maker = make_sessionmaker(engine)

    class ReconcileMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            truncate_all(engine)
            seed_catalog(maker)
            fake.state.reset()
            self.env = ScwEnv(fake=fake, clock=FakeClock())
            fake.state.clock = self.env.clock
            fake.state.config = FakeConfig()
            self.cloud = self.env.cloud(max_attempts=2)
            self.never_join: set[str] = set()
            self.ray_blind = False
            self.reporter = DirectReporter(maker, self.now)
            self.provider = self.new_provider()
            self.reconciler = Reconciler(maker, {CLUSTER: self.cloud}, ray_nodes=self.ray_view,
                                         clock=self.now, settings=SETTINGS)
            self.rogue = 0

        # ---------------------------------------------------------------- helpers

        def now(self) -> datetime:
            return datetime.fromisoformat(fake.state.iso(self.env.clock.now()) or "")

        def new_provider(self) -> InventivNodeProvider:
            config = {"cloud": "scaleway", "zones": ["fr-par-2", "pl-waw-2"],
                      "head_address": "10.0.0.2:6379", "token_path": str(token),
                      "cache_ttl_s": 0, "membership_poll_s": 0, "max_parallel_creates": 1}
            return InventivNodeProvider(config, CLUSTER, cloud=self.cloud,
                                        reporter=self.reporter, membership=self.membership,
                                        clock=self.env.clock.now)

        def servers(self) -> list[Any]:
            fake.state.tick()
            with fake.state.lock:
                return list(fake.state.servers.values())

        def joined(self) -> set[str]:
            """Launch ids of the Ray nodes: running VMs whose node joined the head."""
            out: set[str] = set()
            for s in self.servers():
                lid = parse_tags(s.tags).get(TAG_LAUNCH)
                if s.state == "running" and lid and lid not in self.never_join:
                    out.add(lid)
            return out

        def ray_view(self, _cluster: str) -> set[str] | None:
            return None if self.ray_blind else self.joined()

        def membership(self) -> dict[str, str]:
            return {lid: f"ray-{lid}" for lid in self.joined()}

        def crash(self) -> None:
            self.provider = self.new_provider()  # a new process: nothing in memory

        def launch_ids(self) -> set[str]:
            return {parse_tags(s.tags).get(TAG_LAUNCH, "") for s in self.servers()}

        # ---------------------------------------------------------------- rules

        @rule(fault=st.sampled_from(CREATE_FAULTS),
              crash=st.sampled_from([None, None, "provisioning", "booting"]),
              joins=st.booleans())
        def scale_up(self, fault: str | None, crash: str | None, joins: bool) -> None:
            before = self.launch_ids()
            if fault:
                self.env.arm("create_server", fault, zone="fr-par-2")
            self.reporter.crash_on = crash
            try:
                self.provider.create_node_with_resources_and_labels(
                    {"instance_type": TYPE, "image": IMAGE}, {TAG_RAY_USER_NODE_TYPE: "cpu"},
                    1, {"CPU": 2}, {})
            except NodeLaunchException:
                pass
            except Crash:
                self.crash()
            finally:
                self.reporter.crash_on = None
                requests.delete(f"{fake.url}/_fake/faults", timeout=5)
            if not joins:
                self.never_join |= self.launch_ids() - before

        @rule(data=st.data(), crash=st.booleans())
        def scale_down(self, data: st.DataObject, crash: bool) -> None:
            # Launch ids are random: order them by creation so a replay draws the same node.
            seq = {parse_tags(s.tags).get(TAG_LAUNCH): i for i, s in enumerate(self.servers())}
            nodes = sorted(self.provider.non_terminated_nodes({}),
                           key=lambda n: (seq.get(n, len(seq)), n))
            if not nodes:
                return
            node = data.draw(st.sampled_from(nodes))
            self.reporter.crash_on = "terminated" if crash else None
            try:
                self.provider.terminate_nodes([node])
                self.provider.non_terminated_nodes({})  # a refresh finishes the terminate
            except Crash:
                self.crash()
            finally:
                self.reporter.crash_on = None

        @rule(joins=st.booleans())
        def vm_without_intent(self, joins: bool) -> None:
            """A VM of the cluster whose intent never reached the database."""
            self.rogue += 1
            lid = f"rogue-{self.rogue}"
            try:
                self.cloud.create(LaunchRequest(launch_id=lid, cluster_name=CLUSTER,
                                                node_type="cpu", instance_type=TYPE,
                                                image=IMAGE, zones=("pl-waw-2",)))
            except CloudError:
                return
            if not joins:
                self.never_join.add(lid)

        @rule()
        def provider_tick(self) -> None:
            try:
                self.provider.non_terminated_nodes({})
            except Crash:
                self.crash()

        @rule()
        def provider_restart(self) -> None:
            self.crash()

        @rule(seconds=st.sampled_from([5, 60, 300, 900, 1800]))
        def clock_advances(self, seconds: int) -> None:
            self.env.clock.advance(seconds)

        @rule(dry_run=st.booleans())
        def reconcile(self, dry_run: bool) -> None:
            report = self.reconciler.run_once(dry_run=dry_run)
            assert report.skipped is None

        @rule(kind=st.sampled_from(LIST_FAULTS))
        def reconcile_while_listing_fails(self, kind: str) -> None:
            ids = {s.id for s in self.servers()}
            self.env.arm("list_servers", kind, count=-1)
            try:
                report = self.reconciler.run_once()
            finally:
                requests.delete(f"{fake.url}/_fake/faults", timeout=5)
            assert report.clusters[0].listing == "failed"
            assert not report.reaped and not report.closed_intervals and not report.adopted
            assert {s.id for s in self.servers()} == ids

        @precondition(lambda self: not self.ray_blind)
        @rule()
        def ray_becomes_unreachable(self) -> None:
            self.ray_blind = True

        @precondition(lambda self: self.ray_blind)
        @rule()
        def ray_is_back(self) -> None:
            self.ray_blind = False

        # ---------------------------------------------------------------- invariants

        @invariant()
        def no_launch_id_has_two_vms(self) -> None:
            lids = [parse_tags(s.tags).get(TAG_LAUNCH) for s in self.servers()]
            assert len(lids) == len(set(lids)), lids

        def teardown(self) -> None:
            self.ray_blind = False
            requests.delete(f"{fake.url}/_fake/faults", timeout=5)
            for _ in range(4):
                self.env.clock.advance(3600)
                self.provider.non_terminated_nodes({})
                report = self.reconciler.run_once()
                assert not report.errors, report.errors
            servers = {s.id: s for s in self.servers()}
            with maker() as s:
                insts = list(s.scalars(select(Instance)))
                open_ivs = {b.instance_id for b in s.scalars(
                    select(BillingInterval).where(BillingInterval.ended_at.is_(None)))}
            for sid, server in servers.items():
                live = [i for i in insts if i.provider_instance_id == sid
                        and i.state not in FINAL]
                assert len(live) == 1, (sid, server.tags, [(i.launch_id, i.state)
                                                           for i in insts])
                assert live[0].id in open_ivs, ("VM without an open cost interval", sid)
            for inst in insts:
                if inst.provider_instance_id not in servers:
                    assert inst.id not in open_ivs, ("interval open for a gone VM",
                                                     inst.launch_id, inst.state)
            # No instance is left stuck past its state deadline.
            now = self.now()
            stuck = [(i.launch_id, i.state) for i in insts if i.state not in FINAL
                     and i.state_deadline_at is not None and i.state_deadline_at <= now]
            assert not stuck, stuck
            # Settled means quiet: one more pass changes nothing.
            self.env.clock.advance(60)
            last = self.reconciler.run_once()
            assert not (last.adopted or last.reaped or last.closed_intervals
                        or last.failed_stuck), last.counts()

    run_state_machine_as_test(ReconcileMachine, settings=settings(
        max_examples=max_examples, stateful_step_count=steps, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


def test_reconciler_state_machine(engine: Engine, fake_server: FakeScaleway,
                                  tmp_path: Path) -> None:
    token = tmp_path / "ray_token"
    token.write_text("ray-cluster-token-for-tests\n")
    if engine.dialect.name == "sqlite":
        # Same code paths; fewer examples keep the suite fast (Postgres is production's).
        run_machine(engine, fake_server, token, max_examples=30, steps=25)
    else:
        run_machine(engine, fake_server, token, max_examples=30, steps=25)


@pytest.fixture(autouse=True)
def _quiet_fake(fake_server: FakeScaleway) -> None:
    fake_server.state.config = FakeConfig()
