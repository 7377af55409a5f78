"""The reconciler's decisions, without I/O: what one cluster's cloud listing, Ray's view and the
database rows (as plain values), at one instant, call for -- a list of actions.

The rules (the module docstring of :mod:`control_api.reconcile` says why):

- VM matched to a live row (by provider instance id, else launch id): record the facts the cloud
  gives and open the cost interval; a row before ``ready`` whose VM Ray sees advances to
  ``ready``; a row past its deadline is failed (``deadline_exceeded``) and, before ``ready`` or
  while ``terminating``, its VM reaped; a ``terminating`` row whose VM is still listed after
  ``terminate_retry`` gets its terminate resent.
- VM of a failed row: kept while Ray uses it, else reaped (its cost recorded first).
- VM with no row (an orphan): adopted when seen by Ray past ``adopt_grace``; reaped when not seen
  past ``reap_grace`` (when Ray's view is unknown, only VMs that cannot be nodes, unless
  ``reap_when_ray_unknown``); a head node is never reaped.
- live row (or failed row with an open interval) whose VM is not listed: judged only once its
  absence is confirmed (:func:`confirmation_needed` says which lookup the caller must make;
  ``vm_exists`` carries the answers): the interval closes and the row ends, or a launch that
  never got a VM fails ``launch_lost`` past its deadline.
- a failed listing (``vms is None``): only DB-only facts, deadlines, are acted on.

Reaps count against ``max_reaps_per_pass`` across the clusters of a pass (``reaps_left``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import ClassVar, Literal

from control_api.reconcile.report import ReconcileSettings
from core.clouds import CloudInstance, InstanceStatus
from core.states import InstanceState

S = InstanceState

PRE_READY = frozenset({S.REQUESTED, S.PROVISIONING, S.BOOTING, S.JOINING})
NOT_LAUNCHED = frozenset({S.REQUESTED, S.PROVISIONING})
FINAL = frozenset({S.TERMINATED, S.ARCHIVED})
HEAD_NODE_TYPES = frozenset({"head", "ray-head", "ray.head.default"})


@dataclass(frozen=True)
class RowView:
    """An instance row as the pass read it, after the listing (never written back)."""

    id: uuid.UUID
    launch_id: str
    state: InstanceState
    provider_instance_id: str | None
    zone: str | None
    private_ip: str | None
    public_ip: str | None
    state_entered_at: datetime
    deadline: datetime | None
    created_at: datetime
    has_open_interval: bool


# ------------------------------------------------------------------------------ actions


@dataclass(frozen=True)
class Record:
    """Write the cloud's facts (id, zone, IPs) on the row; open its interval if the VM is live.
    ``report_when_dry``: False for a failed row's record, which a dry run does not report."""

    kind: ClassVar[str] = "record"
    vm: CloudInstance
    row: RowView
    reason: str
    report_when_dry: bool = True


@dataclass(frozen=True)
class Advance:
    """Move a row before ``ready`` whose node Ray sees to ``ready``."""

    kind: ClassVar[str] = "advance"
    vm: CloudInstance
    row: RowView
    reason: str


@dataclass(frozen=True)
class Reap:
    """Delete the VM, its cost recorded first: on ``row`` when ``reuse``, else on a new row."""

    kind: ClassVar[str] = "reap"
    vm: CloudInstance
    row: RowView | None
    reuse: bool
    reason: str


@dataclass(frozen=True)
class Adopt:
    """Write the row a VM should have had, in ``state``, under ``launch_id``."""

    kind: ClassVar[str] = "adopt"
    vm: CloudInstance
    state: InstanceState
    launch_id: str
    reason: str


@dataclass(frozen=True)
class CloseInterval:
    """The row's VM is confirmed gone: close its interval now and end the row."""

    kind: ClassVar[str] = "close_interval"
    row: RowView
    reason: str


@dataclass(frozen=True)
class Defer:
    """Nothing is done this pass, for ``reason`` (reported)."""

    kind: ClassVar[str] = "defer"
    vm: CloudInstance
    row: RowView | None
    reason: str


@dataclass(frozen=True)
class FailStuck:
    """Fail the row (``error_code``); ``then`` runs only if that applied (or in a dry run)."""

    kind: ClassVar[str] = "fail_stuck"
    row: RowView
    vm: CloudInstance | None
    reason: str
    error_code: str
    error_message: str
    then: tuple[Action, ...] = ()


Action = Record | Advance | Reap | Adopt | CloseInterval | Defer | FailStuck


# ------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Matching:
    """The listing against the rows: VM-row pairs, VMs without a row, rows without a VM."""

    pairs: list[tuple[CloudInstance, RowView]]
    unmatched: list[CloudInstance]
    unseen: list[RowView]


@dataclass(frozen=True)
class ClusterView:
    """Everything one cluster's plan is decided from.

    ``vms``: the cloud's listing, ``None`` when it failed. ``ray``: the cloud instance ids of
    Ray's live nodes, ``None`` when unknown. ``rows``: the cluster's rows not final, plus final
    rows still holding an open interval. ``stale``: for VMs with no row of their own, a row
    already naming their id or launch id, by provider instance id. ``vm_exists``: the answers to
    :func:`confirmation_needed` lookups, by row id (missing: the lookup failed).
    """

    cluster: str
    vms: Sequence[CloudInstance] | None
    ray: frozenset[str] | None
    rows: Sequence[RowView]
    stale: Mapping[str, RowView] = field(default_factory=dict)
    vm_exists: Mapping[uuid.UUID, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterPlan:
    """The actions for one cluster, in order, and how many of them are reaps."""

    actions: list[Action]
    reaps: int


def match(vms: Sequence[CloudInstance], rows: Sequence[RowView]) -> Matching:
    """Pair listed VMs with rows, by provider instance id, else by launch id.

    A launch id must never have two VMs: the recorded VM, else the oldest, keeps the row; the
    others are unmatched (orphans).
    """
    by_pid = {r.provider_instance_id: r for r in rows if r.provider_instance_id}
    by_launch = {r.launch_id: r for r in rows}
    matched: set[uuid.UUID] = set()
    pairs: list[tuple[CloudInstance, RowView]] = []
    unmatched: list[CloudInstance] = []
    seen_launch: set[str] = set()
    for vm in sorted(vms, key=lambda v: (v.provider_instance_id not in by_pid,
                                         v.created_at is None, v.created_at,
                                         v.provider_instance_id)):
        row = by_pid.get(vm.provider_instance_id)
        if row is None and vm.launch_id and vm.launch_id not in seen_launch:
            cand = by_launch.get(vm.launch_id)
            if cand is not None and cand.provider_instance_id in (None, vm.provider_instance_id):
                row = cand
        if vm.launch_id:
            seen_launch.add(vm.launch_id)
        if row is None or row.id in matched:
            unmatched.append(vm)
            continue
        matched.add(row.id)
        pairs.append((vm, row))
    return Matching(pairs, unmatched, [r for r in rows if r.id not in matched])


def confirmation_needed(row: RowView, now: datetime,
                        settings: ReconcileSettings) -> Literal["get", "launch"] | None:
    """Which cloud lookup confirms that an unlisted row's VM is gone: ``get`` by its VM id,
    ``launch`` (find by launch id) when none is recorded, or ``None`` when the row is not judged
    this pass (nothing billed on a failed row; a launch not yet past its deadline)."""
    if row.state == S.FAILED and not row.has_open_interval:
        return None  # nothing billed; if its VM shows up later it is matched by launch id
    if row.provider_instance_id and row.zone:
        return "get"
    in_time = row.deadline is None or row.deadline > now
    if row.state in NOT_LAUNCHED and in_time:
        return None  # the provider may be creating it right now
    if row.state not in NOT_LAUNCHED and not row.has_open_interval and \
            now - row.state_entered_at < settings.reap_grace and in_time:
        return None
    return "launch"


def plan_cluster(view: ClusterView, now: datetime, settings: ReconcileSettings,
                 reaps_left: int) -> ClusterPlan:
    """The actions ``view`` calls for at ``now`` (see the module docstring)."""
    planner = _Planner(view, now, settings, reaps_left)
    planner.plan()
    return ClusterPlan(planner.actions, planner.reaps)


class _Planner:
    """Builds one cluster's plan; ``actions`` in the order they are to be applied."""

    def __init__(self, view: ClusterView, now: datetime, settings: ReconcileSettings,
                 reaps_left: int) -> None:
        self.view = view
        self.now = now
        self.settings = settings
        self.reaps_left = reaps_left
        self.reaps = 0
        self.actions: list[Action] = []

    def plan(self) -> None:
        view = self.view
        if view.vms is None:
            # Nothing is known about the cloud: only DB-only facts (deadlines) are acted on.
            for stuck in view.rows:
                if self.past_deadline(stuck) and stuck.state != S.FAILED:
                    self.actions.append(self.fail_stuck(stuck, None))
            return
        matching = match(view.vms, view.rows)
        for vm, row in matching.pairs:
            if row.state == S.FAILED:
                self.vm_of_failed_row(vm, row)
            else:
                self.vm_of_live_row(vm, row)
        for vm in matching.unmatched:
            # A row already naming the VM (ended, or a duplicate VM of a launch that has its
            # VM) is never reused: a new row is written for this VM.
            self.actions.append(self.orphan_rule(vm, view.stale.get(vm.provider_instance_id),
                                                 may_adopt=True, reuse=False))
        for row in matching.unseen:
            self.row_without_vm(row)

    # -------------------------------------------------------------- helpers

    def past_deadline(self, row: RowView) -> bool:
        return row.deadline is not None and row.deadline <= self.now

    def ray_sees(self, vm: CloudInstance, *, by_launch_id: bool = True) -> bool | None:
        """Whether Ray has a node for this VM (its raylet's cloud instance id is the VM id or
        the launch id); ``None`` when Ray's view is unknown."""
        ray = self.view.ray
        if ray is None:
            return None
        if vm.provider_instance_id in ray:
            return True
        return by_launch_id and bool(vm.launch_id) and vm.launch_id in ray

    def age(self, vm: CloudInstance) -> timedelta | None:
        return self.now - vm.created_at if vm.created_at is not None else None

    def reap(self, vm: CloudInstance, row: RowView | None, *, reason: str,
             reuse: bool = True) -> Action:
        """A reap, unless the pass's brake is used up (then a deferral)."""
        if self.reaps_left <= 0:
            return Defer(vm, row, f"reap brake: over {self.settings.max_reaps_per_pass} per pass")
        self.reaps_left -= 1
        self.reaps += 1
        return Reap(vm, row, reuse and row is not None and row.state not in FINAL, reason)

    def fail_stuck(self, row: RowView, vm: CloudInstance | None) -> FailStuck:
        """Past the state deadline: failed (``deadline_exceeded``); the VM of a row that never
        became ready, or was being terminated, is reaped (``vm`` given: it is listed)."""
        state = row.state
        then: tuple[Action, ...] = ()
        if vm is not None and (state in PRE_READY or state == S.TERMINATING):
            then = (self.reap(vm, replace(row, state=S.FAILED),
                              reason=f"deadline exceeded in {state.value}"),)
        return FailStuck(row, vm, f"{state.value} past its deadline {row.deadline}",
                         "deadline_exceeded", f"{state.value} past its deadline", then)

    # -------------------------------------------------------------- VM with a row

    def vm_of_live_row(self, vm: CloudInstance, row: RowView) -> None:
        facts_missing = any(v and cur != v for cur, v in (
            (row.provider_instance_id, vm.provider_instance_id), (row.zone, vm.zone),
            (row.private_ip, vm.private_ip), (row.public_ip, vm.public_ip)))
        if facts_missing or (not row.has_open_interval and vm.is_live):
            self.actions.append(Record(
                vm, row, "cloud lists the VM: facts recorded, cost interval open"))
        state = row.state
        if state in PRE_READY and self.ray_sees(vm):
            self.actions.append(Advance(
                vm, row, f"Ray sees the node while the row says {state.value}"))
        elif self.past_deadline(row):
            self.actions.append(self.fail_stuck(row, vm))
        elif state == S.TERMINATING and \
                self.now - row.state_entered_at >= self.settings.terminate_retry:
            self.actions.append(self.reap(
                vm, row, reason="still listed after terminate: terminate resent"))

    def vm_of_failed_row(self, vm: CloudInstance, row: RowView) -> None:
        """A failed instance still holding a VM: keep it while Ray uses it, else reap it."""
        if not row.has_open_interval and vm.is_live:
            self.actions.append(Record(vm, row, "failed instance still has a VM: cost interval "
                                                "open", report_when_dry=False))
        self.actions.append(self.orphan_rule(vm, row, may_adopt=False, reuse=True))

    # -------------------------------------------------------------- orphans

    def orphan_rule(self, vm: CloudInstance, row: RowView | None, *, may_adopt: bool,
                    reuse: bool) -> Action:
        age = self.age(vm)
        # A second VM of a launch that has its VM: a Ray node under that launch id is the other.
        duplicate = not reuse and row is not None and row.state not in FINAL
        seen = self.ray_sees(vm, by_launch_id=not duplicate)
        if age is None:
            return Defer(vm, row, "the cloud gives no creation time")
        if seen and may_adopt:
            if age >= self.settings.adopt_grace:
                return self.adopt(vm, row)
            return Defer(vm, row, f"orphan seen in Ray, younger than the adopt grace ({age})")
        if seen:
            return Defer(vm, row, "failed instance whose node Ray still uses")
        if (vm.node_type or "") in HEAD_NODE_TYPES:
            return Defer(vm, row, "a head node is never reaped")
        if age < self.settings.reap_grace:
            return Defer(vm, row, f"orphan younger than the reap grace ({age})")
        if seen is None and not self.settings.reap_when_ray_unknown and \
                vm.state not in (InstanceStatus.STOPPED, InstanceStatus.TERMINATING):
            return Defer(vm, row, "Ray's view is unknown: not reaping a VM that may be a node")
        return self.reap(vm, row, reuse=reuse, reason="failed instance not seen in Ray" if reuse
                         else "orphan not seen in Ray")

    @staticmethod
    def adopt(vm: CloudInstance, stale: RowView | None) -> Adopt:
        """The row the VM should have had, in ``ready`` (running) or ``booting``."""
        state = S.READY if vm.state is InstanceStatus.RUNNING else S.BOOTING
        launch_id = vm.launch_id if vm.launch_id and stale is None else \
            f"adopted-{vm.provider_instance_id}"[:64]
        return Adopt(vm, state, launch_id, f"orphan seen in Ray, adopted as {state.value}")

    # -------------------------------------------------------------- row without VM

    def row_without_vm(self, row: RowView) -> None:
        """The listing does not show this row's VM: act once the lookup confirmed it."""
        lookup = confirmation_needed(row, self.now, self.settings)
        exists = self.view.vm_exists.get(row.id)
        if lookup is None or exists is None:
            return
        if lookup == "get":
            if not exists:
                self.actions.append(CloseInterval(
                    row, "the cloud no longer has the VM (get: not found)"))
            elif self.past_deadline(row) and row.state != S.FAILED:
                # It exists but was not listed (created meanwhile, or its tags changed).
                self.actions.append(self.fail_stuck(row, None))
            return
        if exists:
            return  # appeared after the listing: the next pass matches it
        if row.state in NOT_LAUNCHED and not row.has_open_interval:
            self.actions.append(FailStuck(
                row, None, f"{row.state.value} past its deadline and no VM carries the launch id",
                "launch_lost", "no VM carries the launch id past the deadline"))
            return
        self.actions.append(CloseInterval(row, "no VM carries the launch id"))
