"""The reconciler's planner on hand-built inputs: no cloud, no Ray, no database."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from control_api.reconcile import ReconcileSettings
from control_api.reconcile.planner import (
    Adopt,
    Advance,
    CloseInterval,
    ClusterView,
    Defer,
    FailStuck,
    Reap,
    Record,
    RowView,
    confirmation_needed,
    match,
    plan_cluster,
)
from core.clouds import CloudInstance, InstanceStatus
from core.states import InstanceState

S = InstanceState
NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)
SETTINGS = ReconcileSettings()
CLUSTER = "c1"


def vm(pid: str, launch_id: str | None = None, *, age: timedelta = timedelta(hours=1),
       state: InstanceStatus = InstanceStatus.RUNNING, node_type: str = "cpu",
       created: bool = True) -> CloudInstance:
    return CloudInstance(provider_instance_id=pid, launch_id=launch_id, cluster_name=CLUSTER,
                         node_type=node_type, instance_type="DEV1-S", zone="fr-par-2",
                         state=state, public_ip="1.2.3.4",
                         created_at=NOW - age if created else None)


def row(launch_id: str, state: InstanceState = S.READY, *, of: CloudInstance | None = None,
        billed: bool = True, entered: timedelta = timedelta(minutes=5),
        deadline: timedelta | None = None) -> RowView:
    """A row; ``of``: its VM's facts already recorded; ``deadline``: from now (negative: past)."""
    return RowView(
        id=uuid.uuid4(), launch_id=launch_id, state=state,
        provider_instance_id=of.provider_instance_id if of else None,
        zone=of.zone if of else None, private_ip=None, public_ip=of.public_ip if of else None,
        state_entered_at=NOW - entered, deadline=NOW + deadline if deadline else None,
        created_at=NOW - entered, has_open_interval=billed)


def plan(vms: list[CloudInstance] | None, rows: list[RowView], *,
         ray: set[str] | None = None, settings: ReconcileSettings = SETTINGS,
         reaps_left: int = 50, **view: object) -> list[object]:
    cluster = ClusterView(CLUSTER, vms, frozenset(ray) if ray is not None else None, rows,
                          **view)  # type: ignore[arg-type]
    return list(plan_cluster(cluster, NOW, settings, reaps_left).actions)


def test_a_vm_and_its_complete_row_need_nothing() -> None:
    v = vm("i-1", "l-1")
    assert plan([v], [row("l-1", of=v)], ray={"l-1"}) == []


def test_unrecorded_vm_facts_are_recorded_and_the_row_advanced_when_ray_sees_it() -> None:
    v = vm("i-1", "l-1")
    r = row("l-1", S.BOOTING, billed=False)
    assert plan([v], [r], ray={"i-1"}) == [
        Record(v, r, "cloud lists the VM: facts recorded, cost interval open"),
        Advance(v, r, "Ray sees the node while the row says booting")]


def test_a_row_past_its_deadline_is_failed_and_its_vm_reaped() -> None:
    v = vm("i-1", "l-1")
    r = row("l-1", S.BOOTING, of=v, deadline=-timedelta(seconds=1))
    [fail] = plan([v], [r], ray=set())
    assert isinstance(fail, FailStuck) and fail.error_code == "deadline_exceeded"
    assert fail.then == (Reap(v, replace(r, state=S.FAILED), True,
                              "deadline exceeded in booting"),)


def test_a_terminating_row_still_listed_gets_its_terminate_resent() -> None:
    v = vm("i-1", "l-1")
    r = row("l-1", S.TERMINATING, of=v, entered=timedelta(minutes=3))
    assert plan([v], [r], ray=set()) == [
        Reap(v, r, True, "still listed after terminate: terminate resent")]
    young = replace(r, state_entered_at=NOW - timedelta(seconds=30))
    assert plan([v], [young], ray=set()) == []


def test_orphans_are_adopted_when_ray_sees_them_and_reaped_when_not() -> None:
    seen, unseen = vm("i-1", "l-1"), vm("i-2", "l-2")
    assert plan([seen, unseen], [], ray={"l-1"}) == [
        Adopt(seen, S.READY, "l-1", "orphan seen in Ray, adopted as ready"),
        Reap(unseen, None, False, "orphan not seen in Ray")]


def test_orphans_within_their_grace_are_deferred() -> None:
    young = vm("i-1", "l-1", age=timedelta(minutes=1))
    [early] = plan([young], [], ray={"i-1"})
    assert isinstance(early, Defer) and "adopt grace" in early.reason
    booting = vm("i-2", "l-2", age=timedelta(minutes=10))
    [wait] = plan([booting], [], ray=set())
    assert isinstance(wait, Defer) and "reap grace" in wait.reason


def test_unknown_ray_view_reaps_only_vms_that_cannot_be_nodes() -> None:
    running, stopped = vm("i-1", "l-1"), vm("i-2", "l-2", state=InstanceStatus.STOPPED)
    deferred, reaped = plan([running, stopped], [], ray=None)
    assert isinstance(deferred, Defer) and "unknown" in deferred.reason
    assert reaped == Reap(stopped, None, False, "orphan not seen in Ray")
    bold = ReconcileSettings(reap_when_ray_unknown=True)
    assert all(isinstance(a, Reap) for a in plan([running, stopped], [], settings=bold))


def test_heads_and_vms_without_a_creation_time_are_never_reaped() -> None:
    head, undated = vm("i-1", "l-1", node_type="head"), vm("i-2", "l-2", created=False)
    assert [a.reason for a in plan([head, undated], [], ray=set())] == [  # type: ignore[attr-defined]
        "a head node is never reaped", "the cloud gives no creation time"]


def test_the_reap_brake_defers_reaps_past_the_limit() -> None:
    vms = [vm(f"i-{n}", f"l-{n}") for n in range(3)]
    actions = plan(vms, [], ray=set(), reaps_left=2)
    assert [type(a) for a in actions] == [Reap, Reap, Defer]
    assert "brake" in actions[2].reason  # type: ignore[attr-defined]


def test_a_second_vm_of_a_launch_is_an_orphan_reaped_into_its_own_row() -> None:
    first = vm("i-1", "l-1", age=timedelta(hours=2))
    dup = vm("i-2", "l-1")
    r = row("l-1", of=first)
    matching = match([dup, first], [r])
    assert matching.pairs == [(first, r)] and matching.unmatched == [dup]
    # Ray sees a node under the launch id: that is the first VM, not the duplicate.
    assert plan([dup, first], [r], ray={"l-1"}, stale={"i-2": r}) == [
        Reap(dup, r, False, "orphan not seen in Ray")]


def test_a_failed_row_keeps_its_vm_while_ray_uses_it() -> None:
    v = vm("i-1", "l-1")
    r = row("l-1", S.FAILED, of=v, billed=False)
    record, keep = plan([v], [r], ray={"i-1"})
    assert record == Record(v, r, "failed instance still has a VM: cost interval open",
                            report_when_dry=False)
    assert keep == Defer(v, r, "failed instance whose node Ray still uses")
    [reap] = plan([v], [replace(r, has_open_interval=True)], ray=set())
    assert reap == Reap(v, replace(r, has_open_interval=True), True,
                        "failed instance not seen in Ray")


def test_a_row_whose_vm_is_unlisted_is_judged_only_once_confirmed() -> None:
    gone_vm = vm("i-1", "l-1")
    r = row("l-1", of=gone_vm)
    assert confirmation_needed(r, NOW, SETTINGS) == "get"
    assert plan([], [r], ray=set()) == []  # the lookup failed: no answer, nothing done
    assert plan([], [r], ray=set(), vm_exists={r.id: True}) == []
    assert plan([], [r], ray=set(), vm_exists={r.id: False}) == [
        CloseInterval(r, "the cloud no longer has the VM (get: not found)")]


def test_a_launch_that_never_got_a_vm_fails_launch_lost_past_its_deadline() -> None:
    r = row("l-1", S.REQUESTED, billed=False, deadline=timedelta(minutes=1))
    assert confirmation_needed(r, NOW, SETTINGS) is None  # the provider may be creating it
    late = replace(r, deadline=NOW - timedelta(seconds=1))
    assert confirmation_needed(late, NOW, SETTINGS) == "launch"
    [fail] = plan([], [late], ray=set(), vm_exists={late.id: False})
    assert isinstance(fail, FailStuck) and fail.error_code == "launch_lost" and not fail.then
    failed = replace(late, state=S.FAILED)
    assert confirmation_needed(failed, NOW, SETTINGS) is None  # nothing billed, nothing to do


def test_a_failed_listing_acts_only_on_deadlines() -> None:
    stuck = row("l-1", S.BOOTING, deadline=-timedelta(seconds=1))
    fine = row("l-2", S.READY)
    [fail] = plan(None, [stuck, fine], ray=set())
    assert isinstance(fail, FailStuck) and fail.row == stuck and fail.vm is None
