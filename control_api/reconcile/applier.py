"""Carries out a cluster's planned actions: one transaction per action, each with its child
action log under the pass's ``reconcile.pass`` log; in a dry run, reports them and changes
nothing. An action that lost a race with the provider's events (the row changed meanwhile) is
reported as skipped and left to the next pass."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, assert_never

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from control_api.errors import InvalidTransition
from control_api.lifecycle import (
    close_billing_interval,
    deadline_for,
    open_billing_interval,
    transition,
)
from control_api.reconcile.planner import (
    FINAL,
    PRE_READY,
    Action,
    Adopt,
    Advance,
    CloseInterval,
    Defer,
    FailStuck,
    Reap,
    Record,
    RowView,
)
from control_api.reconcile.report import ReconcileAction, ReconcileReport
from core.clouds import Cloud, CloudError, CloudInstance
from core.clouds import NotFound as CloudNotFound
from core.models import ActionLog, Instance, InstanceState, InstanceStateHistory

S = InstanceState
COMPONENT = "reconciler"


def short_error(exc: BaseException) -> str:
    """An error as the reports and logs carry it: its code (or type) and message, bounded."""
    return f"{getattr(exc, 'code', type(exc).__name__)}: {exc}"[:500]


class Applier:
    """Applies one cluster's actions of one pass, at ``now``, into ``report``."""

    def __init__(self, sessions: sessionmaker[Session], cloud: Cloud, *, cluster: str,
                 provider: str, report: ReconcileReport, now: datetime) -> None:
        self.sessions = sessions
        self.cloud = cloud
        self.cluster = cluster
        self.provider = provider
        self.report = report
        self.now = now
        self.dry = report.dry_run

    def apply_all(self, actions: Iterable[Action]) -> None:
        """Apply ``actions`` in order."""
        for action in actions:
            self.apply(action)

    def apply(self, action: Action) -> None:
        """Apply one action (and, for a failed row, its follow-ups if the failure applied)."""
        if isinstance(action, Record):
            self.record(action)
        elif isinstance(action, Advance):
            self.advance(action)
        elif isinstance(action, FailStuck):
            if self.fail_stuck(action) or self.dry:
                self.apply_all(action.then)
        elif isinstance(action, Reap):
            self.reap(action)
        elif isinstance(action, Adopt):
            self.adopt(action)
        elif isinstance(action, CloseInterval):
            self.close_interval(action)
        elif isinstance(action, Defer):
            self.report.add(self.entry(action.kind, vm=action.vm, row=action.row,
                                       reason=action.reason))
        else:
            assert_never(action)

    # -------------------------------------------------------------- helpers

    def entry(self, kind: str, *, vm: CloudInstance | None = None, row: RowView | None = None,
              reason: str = "", instance_id: uuid.UUID | None = None) -> ReconcileAction:
        """The report entry of an action on ``vm`` and/or ``row``."""
        return ReconcileAction(
            kind=kind, cluster=self.cluster,
            provider_instance_id=(vm.provider_instance_id if vm else
                                  row.provider_instance_id if row else None),
            launch_id=(vm.launch_id if vm and vm.launch_id else row.launch_id if row else None),
            instance_id=str(instance_id or (row.id if row else "")) or None, reason=reason)

    @contextlib.contextmanager
    def unit(self, act: ReconcileAction, log_type: str,
             details: dict[str, Any] | None = None) -> Iterator[Session]:
        """One transaction for one action, with its child action log; errors are reported."""
        t0 = time.perf_counter()
        try:
            with self.sessions.begin() as s:
                yield s
                s.add(ActionLog(
                    type=log_type, component=COMPONENT, status="success",
                    instance_id=uuid.UUID(act.instance_id) if act.instance_id else None,
                    parent_id=self.report.pass_log_id, created_at=self.now,
                    duration_ms=int((time.perf_counter() - t0) * 1000),
                    details={"cluster": self.cluster, "provider": self.provider,
                             "provider_instance_id": act.provider_instance_id,
                             "launch_id": act.launch_id, "reason": act.reason,
                             **(details or {})}))
            act.applied = True
        except (InvalidTransition, IntegrityError) as exc:
            # Someone else (the provider's events) changed the row meanwhile: next pass.
            act.error = f"skipped, changed concurrently: {short_error(exc)}"
        self.report.add(act)

    def log_failure(self, act: ReconcileAction, log_type: str, error: str) -> None:
        """Report a failed cloud call and record it as a failed child action log."""
        act.error = error
        self.report.add(act)
        if self.dry:
            return
        with self.sessions.begin() as s:
            s.add(ActionLog(
                type=log_type, component=COMPONENT, status="failure", error_code="cloud_error",
                error_message=error,
                instance_id=uuid.UUID(act.instance_id) if act.instance_id else None,
                parent_id=self.report.pass_log_id, created_at=self.now,
                details={"cluster": self.cluster, "provider_instance_id":
                         act.provider_instance_id, "launch_id": act.launch_id,
                         "reason": act.reason}))

    @staticmethod
    def record_facts(inst: Instance, vm: CloudInstance) -> None:
        """Copy the cloud's facts (id, zone, IPs) the row does not have yet."""
        for attr, value in (("provider_instance_id", vm.provider_instance_id),
                            ("zone_code", vm.zone), ("private_ip", vm.private_ip),
                            ("public_ip", vm.public_ip)):
            if value and getattr(inst, attr) != value:
                setattr(inst, attr, value)

    def new_row(self, s: Session, new_id: uuid.UUID, launch_id: str, vm: CloudInstance,
                state: InstanceState, reason: str) -> Instance:
        """A row for a VM that had none (adopted or reaped), with its first history entry."""
        inst = Instance(
            id=new_id, launch_id=launch_id, cluster_name=self.cluster,
            provider_code=self.provider, zone_code=vm.zone, instance_type_name=vm.instance_type,
            node_type=vm.node_type, provider_instance_id=vm.provider_instance_id,
            private_ip=vm.private_ip, public_ip=vm.public_ip, state=state,
            state_entered_at=self.now, state_deadline_at=deadline_for(state, self.now),
            created_at=vm.created_at or self.now, updated_at=self.now)
        s.add(inst)
        s.flush()
        s.add(InstanceStateHistory(instance_id=new_id, from_state=None, to_state=state,
                                   at=self.now, reason=reason, actor=COMPONENT))
        s.flush()
        return inst

    # -------------------------------------------------------------- actions

    def record(self, action: Record) -> None:
        act = self.entry("record", vm=action.vm, row=action.row, reason=action.reason)
        if self.dry:
            if action.report_when_dry:
                self.report.add(act)
            return
        with self.unit(act, "reconcile.record") as s:
            inst = s.get(Instance, action.row.id)
            assert inst is not None
            self.record_facts(inst, action.vm)
            if action.vm.is_live:
                open_billing_interval(s, inst, action.vm.created_at or self.now)

    def advance(self, action: Advance) -> None:
        act = self.entry("advance", vm=action.vm, row=action.row, reason=action.reason)
        if self.dry:
            self.report.add(act)
            return
        with self.unit(act, "reconcile.advance") as s:
            transition(s, action.row.id, S.READY, expected_from=action.row.state, at=self.now,
                       reason="reconciler: node seen in Ray", actor=COMPONENT)

    def fail_stuck(self, action: FailStuck) -> bool:
        """Fail the row; True when that was applied."""
        row = action.row
        act = self.entry("fail_stuck", vm=action.vm, row=row, reason=action.reason)
        if self.dry:
            self.report.add(act)
            return False
        with self.unit(act, "reconcile.fail_stuck", {"from": row.state.value}) as s:
            transition(s, row.id, S.FAILED, expected_from=row.state, at=self.now,
                       error_code=action.error_code, error_message=action.error_message,
                       actor=COMPONENT)
        return act.applied

    def adopt(self, action: Adopt) -> None:
        vm = action.vm
        new_id = uuid.uuid4()
        act = self.entry("adopt", vm=vm, reason=action.reason, instance_id=new_id)
        act.launch_id = action.launch_id
        if self.dry:
            self.report.add(act)
            return
        with self.unit(act, "reconcile.adopt", {"state": action.state.value,
                                                "vm_created_at": _iso(vm.created_at)}) as s:
            inst = self.new_row(s, new_id, action.launch_id, vm, action.state,
                                "adopted by the reconciler: VM without a row, seen in Ray")
            open_billing_interval(s, inst, vm.created_at or self.now)

    def reap(self, action: Reap) -> None:
        """Delete a VM. The cost is recorded first: a ``terminating`` row (``reuse``: the VM's
        own failed/live row, else a new one) with an interval open from the VM's creation;
        closed when the VM is confirmed gone."""
        vm, row, reason = action.vm, action.row, action.reason
        new_id = uuid.uuid4()
        reused = row if action.reuse else None
        act = self.entry("reap", vm=vm, row=reused, reason=reason,
                         instance_id=reused.id if reused else new_id)
        if self.dry:
            self.report.add(act)
            return
        # 1. the record, so a crash between here and the cloud call loses no cost
        t0 = time.perf_counter()
        try:
            with self.sessions.begin() as s:
                if reused is not None:
                    inst = s.get(Instance, reused.id)
                    assert inst is not None
                    if inst.state != S.TERMINATING:
                        transition(s, reused.id, S.TERMINATING, expected_from=reused.state,
                                   at=self.now, reason=f"reconciler: {reason}",
                                   actor=COMPONENT)
                    self.record_facts(inst, vm)
                else:
                    taken = row is not None or (vm.launch_id and s.scalar(
                        select(Instance.id).where(Instance.launch_id == vm.launch_id)))
                    launch_id = f"reaped-{vm.provider_instance_id}"[:64] if taken or \
                        not vm.launch_id else vm.launch_id
                    act.launch_id = launch_id
                    inst = self.new_row(s, new_id, launch_id, vm, S.TERMINATING,
                                        f"reconciler: {reason}")
                open_billing_interval(s, inst, vm.created_at or self.now)
        except (InvalidTransition, IntegrityError) as exc:
            act.error = f"skipped, changed concurrently: {short_error(exc)}"
            self.report.add(act)
            return
        # 2. the cloud call (idempotent; not waited for: the next pass confirms and closes)
        try:
            done = self.cloud.terminate(vm.provider_instance_id, vm.zone,
                                        launch_id=vm.launch_id, wait=False)
        except CloudNotFound:
            done = True
        except CloudError as exc:
            self.log_failure(act, "reconcile.reap", f"terminate failed: {short_error(exc)}")
            return
        # 3. the outcome
        with self.unit(act, "reconcile.reap", {
                "vm_created_at": _iso(vm.created_at), "terminate_done": done,
                "terminate_ms": int((time.perf_counter() - t0) * 1000)}) as s:
            if done:
                self.finish_gone(s, act.instance_id, reason="reaped: VM deleted")

    def close_interval(self, action: CloseInterval) -> None:
        """The VM is confirmed gone: close its interval at the observed time, end the row."""
        row = action.row
        act = self.entry("close_interval", row=row, reason=action.reason)
        if self.dry:
            self.report.add(act)
            return
        cleanup: str | None = None
        if row.provider_instance_id and row.zone:
            # Deleting a VM that is gone is a no-op for the VM but removes the volumes a
            # Scaleway terminate only detached (they are billed). Best effort.
            try:
                if not self.cloud.terminate(row.provider_instance_id, row.zone,
                                            launch_id=row.launch_id, wait=False):
                    cleanup = "volume cleanup still in progress"
            except CloudError as exc:
                cleanup = f"volume cleanup failed: {short_error(exc)}"
        with self.unit(act, "reconcile.close_interval",
                       {"from": row.state.value, "cleanup": cleanup or "done"}) as s:
            self.finish_gone(s, str(row.id), reason=f"reconciler: {action.reason}")
        if cleanup:
            self.report.errors.append(f"{row.provider_instance_id}: {cleanup}")

    def finish_gone(self, s: Session, instance_id: str | None, *, reason: str) -> None:
        """Close the row's interval now and end it (``failed``/``vm_lost`` before ready)."""
        assert instance_id is not None
        inst = s.get(Instance, uuid.UUID(instance_id))
        assert inst is not None
        close_billing_interval(s, inst, self.now)
        state = inst.state
        if state in FINAL:
            return
        if state in PRE_READY:
            transition(s, inst.id, S.FAILED, expected_from=state, at=self.now,
                       error_code="vm_lost", error_message=reason, reason=reason,
                       actor=COMPONENT)
            return
        transition(s, inst.id, S.TERMINATED, expected_from=state, at=self.now, reason=reason,
                   actor=COMPONENT)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
