"""Helpers shared by the reconciler tests: catalog seeding, intent rows, a clock shared by the
fake Scaleway API, the adapter and the reconciler, and DB snapshots."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cluster.clouds.scaleway import ScalewayCloud
from control_api import bootstrap
from control_api.lifecycle import deadline_for, open_billing_interval
from control_api.reconcile import Reconciler, ReconcileSettings
from core.clouds import CloudInstance, LaunchRequest
from core.models import (
    ActionLog,
    BillingInterval,
    Instance,
    InstanceState,
    InstanceStateHistory,
)
from tests.cluster.conftest import ScwEnv

CLUSTER = "c1"
IMAGE = "ubuntu_noble"
TYPE = "DEV1-S"
SETTINGS = ReconcileSettings(adopt_grace=timedelta(minutes=2), reap_grace=timedelta(minutes=15),
                             terminate_retry=timedelta(minutes=2))


def seed_catalog(db: sessionmaker[Session]) -> None:
    """Providers, zones and types (the ``db`` fixture truncates everything)."""
    with db.begin() as s:
        bootstrap.seed_catalog(s, bootstrap.load_catalog())


def fake_clock(scw: ScwEnv) -> Callable[[], datetime]:
    """The fake's clock as UTC datetimes (the same instants the fake reports as creation)."""
    return lambda: datetime.fromisoformat(scw.state.iso(scw.clock.now()) or "")


def reconciler(db: sessionmaker[Session], scw: ScwEnv, cloud: ScalewayCloud | None = None, *,
               ray: Callable[[str], set[str] | None] | None = None,
               settings: ReconcileSettings = SETTINGS, cluster: str = CLUSTER) -> Reconciler:
    return Reconciler(db, {cluster: cloud or scw.cloud()},
                      ray_nodes=ray or (lambda _c: None), clock=fake_clock(scw),
                      settings=settings)


def launch(cloud: ScalewayCloud, launch_id: str, cluster: str = CLUSTER,
           node_type: str = "cpu") -> CloudInstance:
    """Create a VM through the adapter (running when it returns)."""
    return cloud.create(LaunchRequest(launch_id=launch_id, cluster_name=cluster,
                                      node_type=node_type, instance_type=TYPE, image=IMAGE,
                                      zones=("fr-par-2",)))


def intent(db: sessionmaker[Session], launch_id: str, at: datetime, *,
           state: InstanceState = InstanceState.REQUESTED, vm: CloudInstance | None = None,
           cluster: str = CLUSTER, billed: bool = False) -> uuid.UUID:
    """An instance row as the provider would have written it (optionally with its VM)."""
    with db.begin() as s:
        inst = Instance(launch_id=launch_id, cluster_name=cluster, provider_code="scaleway",
                        instance_type_name=TYPE, node_type="cpu", state=state,
                        state_entered_at=at, state_deadline_at=deadline_for(state, at),
                        created_at=at, updated_at=at)
        if vm is not None:
            inst.provider_instance_id = vm.provider_instance_id
            inst.zone_code = vm.zone
            inst.public_ip = vm.public_ip
        s.add(inst)
        s.flush()
        s.add(InstanceStateHistory(instance_id=inst.id, from_state=None, to_state=state, at=at,
                                   actor="test"))
        if billed:
            assert vm is not None
            open_billing_interval(s, inst, vm.created_at or at)
        return inst.id


def row(db: sessionmaker[Session], **where: Any) -> Instance:
    with db() as s:
        inst = s.scalars(select(Instance).filter_by(**where)).one()
        s.expunge(inst)
        return inst


def rows(db: sessionmaker[Session]) -> list[Instance]:
    with db() as s:
        out = list(s.scalars(select(Instance).order_by(Instance.created_at)))
        for i in out:
            s.expunge(i)
        return out


def intervals(db: sessionmaker[Session], instance_id: uuid.UUID) -> list[BillingInterval]:
    with db() as s:
        out = list(s.scalars(select(BillingInterval).where(
            BillingInterval.instance_id == instance_id).order_by(BillingInterval.id)))
        for i in out:
            s.expunge(i)
        return out


def logs(db: sessionmaker[Session], type_prefix: str = "reconcile.") -> list[ActionLog]:
    with db() as s:
        out = list(s.scalars(select(ActionLog).where(ActionLog.type.like(f"{type_prefix}%"))
                             .order_by(ActionLog.id)))
        for i in out:
            s.expunge(i)
        return out


def snapshot(db: sessionmaker[Session]) -> dict[str, Any]:
    """Everything a pass could change, comparable with ``==``."""
    with db() as s:
        return {
            "instances": sorted(
                (str(i.id), i.launch_id, i.state.value, i.provider_instance_id, i.zone_code,
                 i.public_ip, i.error_code, i.version)
                for i in s.scalars(select(Instance))),
            "intervals": sorted(
                (str(b.instance_id), b.started_at.isoformat(),
                 b.ended_at.isoformat() if b.ended_at else None)
                for b in s.scalars(select(BillingInterval))),
            "history": s.scalar(select(func.count()).select_from(InstanceStateHistory)),
            "logs": s.scalar(select(func.count()).select_from(ActionLog)),
        }
