"""The reconciler deletes the cluster's detached SBS volumes even when no provider calls anymore
(a VM deleted behind everyone's back leaves its SBS root volume billed)."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from tests.cluster.conftest import ScwEnv
from tests.control_api.reconcile.helpers import launch, reconciler, seed_catalog


def test_detached_volumes_of_the_cluster_are_reaped_and_nothing_else(
        db: sessionmaker[Session], scw: ScwEnv) -> None:
    seed_catalog(db)
    cloud = scw.cloud()
    gone = launch(cloud, "l-gone")
    kept = launch(cloud, "l-kept")
    other = launch(cloud, "l-other", cluster="c2")
    # Two VMs deleted outside the provider (console, API): their SBS volumes stay, detached.
    for vm in (gone, other):
        scw.state.server_action(vm.zone, vm.provider_instance_id, "terminate")
    scw.state.tick()
    detached = {v["id"]: v for v in scw.volumes() if v["server_id"] is None}
    assert len(detached) == 2
    ours = next(vid for vid, v in detached.items() if "l-gone" in v["name"])

    report = reconciler(db, scw, cloud).run_once()

    assert report.reaped_volumes == [ours]
    left = {v["id"]: v for v in scw.volumes()}
    assert ours not in left
    assert any("l-other" in v["name"] for v in left.values())  # another cluster's: kept
    assert any(v["server_id"] == kept.provider_instance_id for v in left.values())
    # Level-triggered: the next pass has nothing left to reap; dry runs never delete.
    assert reconciler(db, scw, cloud).run_once().reaped_volumes == []
    scw.state.server_action(kept.zone, kept.provider_instance_id, "terminate")
    scw.state.tick()
    assert reconciler(db, scw, cloud).run_once(dry_run=True).reaped_volumes == []
    assert any("l-kept" in v["name"] for v in scw.volumes())
