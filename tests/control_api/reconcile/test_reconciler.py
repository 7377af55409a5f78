"""The reconciler against the fake Scaleway API (real SDK over HTTP) and a real database (both
backends): each case of the comparison, dry runs, transient errors, the single-runner lock, the
action logs, the routes and the background thread."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from cluster.clouds.registry import clouds_from_config
from control_api.ports import DataPlane
from control_api.reconcile import (
    ADVISORY_LOCK_KEY,
    Reconciler,
    ReconcileSettings,
    start_reconciler_thread,
)
from control_api.routes import reconcile as reconcile_routes
from core.clouds import cluster_tag, launch_tag
from core.models import InstanceState
from tests.cluster.conftest import ScwEnv
from tests.control_api.reconcile.helpers import (
    CLUSTER,
    fake_clock,
    intent,
    intervals,
    launch,
    logs,
    reconciler,
    row,
    rows,
    seed_catalog,
    snapshot,
)

S = InstanceState
MIN = 60.0


@pytest.fixture
def cat(db: sessionmaker[Session]) -> sessionmaker[Session]:
    seed_catalog(db)
    return db


def server_ids(scw: ScwEnv) -> set[str]:
    return {s["id"] for s in scw.servers()}


# ------------------------------------------------------------------------ VM with its row


def test_vm_recorded_before_crash_gets_its_facts_and_cost_interval(
        cat: sessionmaker[Session], scw: ScwEnv) -> None:
    now = fake_clock(scw)
    cloud = scw.cloud()
    # The provider wrote the intent, the cloud answered, the provider died before recording.
    iid = intent(cat, "l-1", now())
    vm = launch(cloud, "l-1")
    scw.clock.advance(30)

    report = reconciler(cat, scw, cloud).run_once()

    inst = row(cat, id=iid)
    assert inst.provider_instance_id == vm.provider_instance_id
    assert inst.zone_code == "fr-par-2" and inst.public_ip == vm.public_ip
    assert inst.state == S.REQUESTED  # Ray's view unknown: the state is not guessed
    [iv] = intervals(cat, iid)
    assert iv.started_at == vm.created_at and iv.ended_at is None
    assert [a.kind for a in report.recorded] == ["record"]
    assert report.clusters[0].listing == "ok" and report.clusters[0].listed == 1
    # Level-triggered and idempotent: a second pass has nothing to do.
    again = reconciler(cat, scw, cloud).run_once()
    assert again.counts()["recorded"] == 0 and len(intervals(cat, iid)) == 1


def test_row_before_ready_whose_node_ray_sees_becomes_ready(
        cat: sessionmaker[Session], scw: ScwEnv) -> None:
    now = fake_clock(scw)
    cloud = scw.cloud()
    vm = launch(cloud, "l-2")
    iid = intent(cat, "l-2", now(), state=S.BOOTING, vm=vm, billed=True)

    report = reconciler(cat, scw, cloud, ray=lambda _c: {"l-2"}).run_once()

    assert row(cat, id=iid).state == S.READY
    assert len(report.advanced) == 1 and not report.reaped
    assert [lg.type for lg in logs(cat)] == ["reconcile.pass", "reconcile.advance"]


# ------------------------------------------------------------------------ orphans


def test_orphan_seen_in_ray_is_adopted_after_the_grace(cat: sessionmaker[Session],
                                                         scw: ScwEnv) -> None:
    cloud = scw.cloud()
    vm = launch(cloud, "l-orphan")  # an intent that was never written
    rec = reconciler(cat, scw, cloud, ray=lambda _c: {vm.provider_instance_id})

    early = rec.run_once()
    assert not rows(cat) and len(early.deferred) == 1
    assert "adopt grace" in early.deferred[0].reason

    scw.clock.advance(3 * MIN)
    report = rec.run_once()
    [inst] = rows(cat)
    assert inst.launch_id == "l-orphan" and inst.state == S.READY
    assert inst.provider_instance_id == vm.provider_instance_id
    assert inst.instance_type_name == "DEV1-S" and inst.node_type == "cpu"
    [iv] = intervals(cat, inst.id)
    assert iv.started_at == vm.created_at and iv.ended_at is None
    assert len(report.adopted) == 1 and report.adopted[0].applied
    assert server_ids(scw) == {vm.provider_instance_id}  # nothing deleted
    adopt = [lg for lg in logs(cat) if lg.type == "reconcile.adopt"]
    assert len(adopt) == 1 and adopt[0].parent_id == report.pass_log_id
    assert adopt[0].instance_id == inst.id and adopt[0].duration_ms is not None


def test_orphan_not_in_ray_is_reaped_with_its_cost_recorded(cat: sessionmaker[Session],
                                                            scw: ScwEnv) -> None:
    cloud = scw.cloud()
    vm = launch(cloud, "l-leak")
    rec = reconciler(cat, scw, cloud, ray=lambda _c: set())

    scw.clock.advance(5 * MIN)
    early = rec.run_once()
    assert not rows(cat) and "reap grace" in early.deferred[0].reason
    assert server_ids(scw) == {vm.provider_instance_id}

    scw.clock.advance(11 * MIN)
    reaped_at = fake_clock(scw)()
    report = rec.run_once()
    assert len(report.reaped) == 1 and report.reaped[0].applied
    assert server_ids(scw) == set()
    [inst] = rows(cat)
    assert inst.state == S.TERMINATING and inst.provider_instance_id == vm.provider_instance_id
    [iv] = intervals(cat, inst.id)
    assert iv.started_at == vm.created_at and iv.ended_at is None  # closed once confirmed gone

    scw.clock.advance(1 * MIN)
    gone_at = fake_clock(scw)()
    second = rec.run_once()
    assert len(second.closed_intervals) == 1
    inst = row(cat, id=inst.id)
    assert inst.state == S.TERMINATED
    [iv] = intervals(cat, inst.id)
    assert iv.ended_at == gone_at and iv.ended_at > reaped_at
    assert scw.volumes() == []  # the detached SBS root volume was deleted too
    assert [lg.type for lg in logs(cat) if lg.type != "reconcile.pass"] == [
        "reconcile.reap", "reconcile.close_interval"]


def test_unknown_ray_view_reaps_only_vms_that_cannot_be_nodes(cat: sessionmaker[Session],
                                                              scw: ScwEnv) -> None:
    cloud = scw.cloud()
    running = launch(cloud, "l-run")
    [stopped_id] = scw.state.seed_servers("fr-par-2", 1, state="stopped", tags=[
        cluster_tag(CLUSTER), launch_tag("l-stopped"), "inventiv-node-type=cpu"])
    scw.clock.advance(30 * MIN)

    report = reconciler(cat, scw, cloud).run_once()

    assert server_ids(scw) == {running.provider_instance_id}
    assert [a.provider_instance_id for a in report.reaped] == [stopped_id]
    assert any("unknown" in a.reason for a in report.deferred)

    # Opting in reaps the running orphan too.
    bold = ReconcileSettings(reap_when_ray_unknown=True)
    reconciler(cat, scw, cloud, settings=bold).run_once()
    assert server_ids(scw) == set()


def test_head_node_is_never_reaped(cat: sessionmaker[Session], scw: ScwEnv) -> None:
    cloud = scw.cloud()
    head = launch(cloud, "l-head", node_type="head")
    scw.clock.advance(60 * MIN)
    report = reconciler(cat, scw, cloud, ray=lambda _c: set()).run_once()
    assert server_ids(scw) == {head.provider_instance_id} and not report.reaped


def test_second_vm_of_a_launch_id_is_reaped_into_its_own_row(cat: sessionmaker[Session],
                                                            scw: ScwEnv) -> None:
    now = fake_clock(scw)
    cloud = scw.cloud()
    vm = launch(cloud, "l-dup")
    iid = intent(cat, "l-dup", now(), state=S.READY, vm=vm, billed=True)
    scw.clock.advance(1)
    [dup] = scw.state.seed_servers("fr-par-2", 1, tags=[
        cluster_tag(CLUSTER), launch_tag("l-dup"), "inventiv-node-type=cpu"])
    scw.clock.advance(20 * MIN)

    report = reconciler(cat, scw, cloud, ray=lambda _c: {"l-dup"}).run_once()

    assert server_ids(scw) == {vm.provider_instance_id}
    assert [a.provider_instance_id for a in report.reaped] == [dup]
    assert row(cat, id=iid).state == S.READY  # the recorded VM's row is untouched
    reaper = row(cat, provider_instance_id=dup)
    assert reaper.launch_id == f"reaped-{dup}" and reaper.state == S.TERMINATING


# ------------------------------------------------------------------------ rows without VM


def test_vm_deleted_by_the_cloud_closes_the_interval_at_the_observed_time(
        cat: sessionmaker[Session], scw: ScwEnv) -> None:
    now = fake_clock(scw)
    cloud = scw.cloud()
    vm = launch(cloud, "l-gone")
    iid = intent(cat, "l-gone", now(), state=S.READY, vm=vm, billed=True)
    scw.clock.advance(10 * MIN)
    cloud.terminate(vm.provider_instance_id, vm.zone, launch_id="l-gone")  # someone else
    scw.clock.advance(2 * MIN)
    observed = now()

    report = reconciler(cat, scw, cloud, ray=lambda _c: set()).run_once()

    inst = row(cat, id=iid)
    assert inst.state == S.TERMINATED
    [iv] = intervals(cat, iid)
    assert iv.ended_at == observed
    assert len(report.closed_intervals) == 1
    assert [c["op"] for c in scw.calls("get_server")][-1:] == ["get_server"]  # confirmed first


def test_requested_row_without_vm_fails_launch_lost_only_past_its_deadline(
        cat: sessionmaker[Session], scw: ScwEnv) -> None:
    now = fake_clock(scw)
    iid = intent(cat, "l-lost", now())  # crashed between "intent written" and "cloud call"
    rec = reconciler(cat, scw)
    scw.clock.advance(4 * MIN)
    rec.run_once()
    assert row(cat, id=iid).state == S.REQUESTED

    scw.clock.advance(2 * MIN)
    report = rec.run_once()
    inst = row(cat, id=iid)
    assert inst.state == S.FAILED and inst.error_code == "launch_lost"
    assert len(report.failed_stuck) == 1
    assert intervals(cat, iid) == []
    # A failed row without a VM costs no cloud call on later passes.
    before = len(scw.calls())
    rec.run_once()
    assert [c["op"] for c in scw.calls()[before:]] == ["list_servers", "list_servers"]


def test_row_stuck_booting_is_failed_and_its_vm_reaped(cat: sessionmaker[Session],
                                                       scw: ScwEnv) -> None:
    now = fake_clock(scw)
    cloud = scw.cloud()
    vm = launch(cloud, "l-stuck")
    iid = intent(cat, "l-stuck", now(), state=S.BOOTING, vm=vm, billed=True)
    rec = reconciler(cat, scw, cloud, ray=lambda _c: set())  # never joined Ray
    scw.clock.advance(19 * MIN)
    rec.run_once()
    assert row(cat, id=iid).state == S.BOOTING

    scw.clock.advance(2 * MIN)
    report = rec.run_once()
    inst = row(cat, id=iid)
    assert inst.error_code == "deadline_exceeded" and inst.state == S.TERMINATING
    assert len(report.failed_stuck) == 1 and len(report.reaped) == 1
    assert server_ids(scw) == set()

    scw.clock.advance(MIN)
    rec.run_once()
    inst = row(cat, id=iid)
    assert inst.state == S.TERMINATED
    [iv] = intervals(cat, iid)
    assert iv.ended_at is not None
    with cat() as s:
        history = [h[0] for h in s.execute(text(
            "SELECT to_state FROM instance_state_history WHERE instance_id = :i ORDER BY id"),
            {"i": iid.hex if cat.kw["bind"].dialect.name == "sqlite" else iid})]
    assert history == ["booting", "failed", "terminating", "terminated"]


# ------------------------------------------------------------------------ dry run


def test_dry_run_reports_every_action_and_changes_nothing(cat: sessionmaker[Session],
                                                          scw: ScwEnv) -> None:
    now = fake_clock(scw)
    cloud = scw.cloud()
    adopt = launch(cloud, "l-adopt")
    reap = launch(cloud, "l-reap")
    gone = launch(cloud, "l-gone")
    intent(cat, "l-gone", now(), state=S.READY, vm=gone, billed=True)
    intent(cat, "l-lost", now())
    cloud.terminate(gone.provider_instance_id, gone.zone)
    scw.clock.advance(30 * MIN)
    before_db, before_cloud = snapshot(cat), server_ids(scw)
    rec = reconciler(cat, scw, cloud, ray=lambda _c: {adopt.provider_instance_id})

    report = rec.run_once(dry_run=True)

    assert snapshot(cat) == before_db and server_ids(scw) == before_cloud
    assert [a.provider_instance_id for a in report.adopted] == [adopt.provider_instance_id]
    assert [a.provider_instance_id for a in report.reaped] == [reap.provider_instance_id]
    assert [a.launch_id for a in report.closed_intervals] == ["l-gone"]
    assert [a.launch_id for a in report.failed_stuck] == ["l-lost"]
    assert not any(a.applied for a in report.adopted + report.reaped + report.failed_stuck)
    assert report.dry_run and rec.last_report is report
    # The same pass for real does what the dry run said.
    real = rec.run_once()
    assert real.counts() | {"deferred": 0} == report.counts() | {"deferred": 0}
    assert server_ids(scw) == {adopt.provider_instance_id}


# ------------------------------------------------------------------------ transient errors


@pytest.mark.parametrize("fault", [
    {"kind": "server_error", "status": 503},
    {"kind": "html_502"},
    {"kind": "transient_state"},
    {"kind": "slow", "delay_s": 0.4},
])
def test_a_failed_listing_is_never_read_as_deletion(cat: sessionmaker[Session], scw: ScwEnv,
                                                    fault: dict[str, Any]) -> None:
    now = fake_clock(scw)
    cloud = scw.cloud(read_timeout_s=0.2, max_attempts=2)
    vm = launch(cloud, "l-live")
    iid = intent(cat, "l-live", now(), state=S.READY, vm=vm, billed=True)
    lost = intent(cat, "l-lost", now())
    orphan = launch(cloud, "l-orphan")
    cloud.terminate(vm.provider_instance_id, vm.zone)  # gone, but the listing will fail
    scw.clock.advance(60 * MIN)
    scw.arm("list_servers", count=-1, zone="pl-waw-2", **fault)  # the 2nd zone fails
    rec = reconciler(cat, scw, cloud, ray=lambda _c: set())

    report = rec.run_once()

    status = report.clusters[0]
    assert status.listing == "failed" and status.deletions_skipped
    assert report.errors and "deletions skipped" in report.errors[0]
    assert row(cat, id=iid).state == S.READY
    assert intervals(cat, iid)[0].ended_at is None
    assert orphan.provider_instance_id in server_ids(scw)  # no reap on a partial view
    assert not report.reaped and not report.closed_intervals and not report.adopted
    # A DB-only fact is still acted on: the intent is past its deadline (no VM is assumed gone).
    assert row(cat, id=lost).error_code == "deadline_exceeded"
    assert [lg.status for lg in logs(cat) if lg.type == "reconcile.pass"] == ["failure"]

    requests_delete = scw.fake.url + "/_fake/faults"
    import requests

    requests.delete(requests_delete, timeout=5)
    healed = rec.run_once()
    assert row(cat, id=iid).state == S.TERMINATED
    assert len(healed.closed_intervals) == 1 and len(healed.reaped) == 1


# ------------------------------------------------------------------------ single runner


def test_only_one_runner_at_a_time(cat: sessionmaker[Session], scw: ScwEnv) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_ray(_cluster: str) -> set[str] | None:
        entered.set()
        release.wait(10)
        return None

    first = reconciler(cat, scw, ray=slow_ray)
    second = reconciler(cat, scw)
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.setdefault("r", first.run_once()))
    worker.start()
    try:
        assert entered.wait(10)
        skipped = second.run_once()
        assert skipped.skipped == "locked" and not skipped.clusters
    finally:
        release.set()
        worker.join(10)
    assert result["r"].skipped is None
    assert second.run_once().skipped is None  # released after the pass


def test_postgres_advisory_lock_held_elsewhere_skips_the_pass(
        cat: sessionmaker[Session], scw: ScwEnv) -> None:
    engine = cat.kw["bind"]
    if engine.dialect.name != "postgresql":
        pytest.skip("advisory locks are Postgres-only")
    # Another process (another API worker) holds the lock on its own connection.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as other:
        assert other.execute(text("SELECT pg_try_advisory_lock(:k)"),
                             {"k": ADVISORY_LOCK_KEY}).scalar()
        assert reconciler(cat, scw).run_once().skipped == "locked"
        other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
    report = reconciler(cat, scw).run_once()
    assert report.skipped is None
    with engine.connect() as conn:  # released: nobody holds it after the pass
        held = conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                 " AND granted")).scalar()
    assert held == 0


# ------------------------------------------------------------------------ routes, thread


def _app_with_reconciler(client: TestClient, rec: Reconciler) -> None:
    app = client.app
    if not any(getattr(r, "path", "").startswith("/api/reconcile")
               for r in app.routes):  # type: ignore[attr-defined]
        app.include_router(reconcile_routes.router)  # type: ignore[attr-defined]
    app.state.reconciler = rec  # type: ignore[attr-defined]


def test_routes_run_and_last_report(client: TestClient, admin_headers: dict[str, str],
                                    factory: Any, scw: ScwEnv) -> None:
    maker = client.app.state.sessionmaker  # type: ignore[attr-defined]
    cloud = scw.cloud()
    launch(cloud, "l-route")
    scw.clock.advance(30 * MIN)
    _app_with_reconciler(client, reconciler(maker, scw, cloud, ray=lambda _c: set()))

    r = client.get("/api/reconcile/last", headers=admin_headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"

    r = client.post("/api/reconcile/run", json={"dry_run": True}, headers=admin_headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dry_run"] is True and body["counts"]["reaped"] == 1
    assert body["clusters"][0]["cluster"] == CLUSTER and body["api_calls"] >= 2
    assert len(scw.servers()) == 1

    r = client.get("/api/reconcile/last", headers=admin_headers)
    assert r.status_code == 200 and r.json()["started_at"] == body["started_at"]

    bad: Any
    for bad in ({"dry_run": "maybe"}, {"dry_run": True, "extra": 1}, {"cluster": ""}, []):
        r = client.post("/api/reconcile/run", json=bad, headers=admin_headers)
        assert r.status_code == 422, (bad, r.text)
    r = client.post("/api/reconcile/run", json={"cluster": "nope"}, headers=admin_headers)
    assert r.status_code == 404

    member = factory.user(factory.org(), "owner")
    assert client.post("/api/reconcile/run", json={}, headers=member.headers).status_code == 403
    assert client.get("/api/reconcile/last", headers=member.headers).status_code == 403
    cookies = dict(client.cookies)
    client.cookies.clear()  # the admin login left a session cookie in the jar
    assert client.post("/api/reconcile/run", json={}).status_code == 401
    client.cookies.update(cookies)

    r = client.post("/api/reconcile/run", json={"cluster": CLUSTER}, headers=admin_headers)
    assert r.status_code == 200 and r.json()["counts"]["reaped"] == 1
    assert scw.servers() == []
    # From the action logs when this process has no report (e.g. after a restart).
    client.app.state.reconciler = None  # type: ignore[attr-defined]
    r = client.get("/api/reconcile/last", headers=admin_headers)
    assert r.status_code == 200 and r.json()["counts"]["reaped"] == 1


def test_route_without_configured_clusters_is_a_conflict(
        client: TestClient, admin_headers: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings are read once, into the app's Settings; the clouds come from the data plane.
    app = client.app
    state = app.state  # type: ignore[attr-defined]
    monkeypatch.setattr(state.settings, "reconcile_clusters", {})
    monkeypatch.setattr(state, "plane", DataPlane(clouds=clouds_from_config))
    if not any(getattr(r, "path", "").startswith("/api/reconcile")
               for r in app.routes):  # type: ignore[attr-defined]
        app.include_router(reconcile_routes.router)  # type: ignore[attr-defined]
    app.state.reconciler = None  # type: ignore[attr-defined]
    r = client.post("/api/reconcile/run", json={}, headers=admin_headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "reconciler_not_configured"
    monkeypatch.setattr(state.settings, "reconcile_clusters", {"c": {"cloud": "aws"}})
    r = client.post("/api/reconcile/run", json={}, headers=admin_headers)
    assert r.status_code == 409


def test_background_thread_runs_passes_until_stopped(cat: sessionmaker[Session],
                                                     scw: ScwEnv) -> None:
    cloud = scw.cloud()
    launch(cloud, "l-bg")
    scw.clock.advance(30 * MIN)
    handle = start_reconciler_thread(cat, {CLUSTER: cloud}, interval_s=0.05,
                                     ray_nodes=lambda _c: set(), clock=fake_clock(scw))
    try:
        deadline = time.monotonic() + 10
        while scw.servers() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        handle.stop()
    assert not handle.thread.is_alive()
    assert scw.servers() == []
    assert handle.reconciler.last_report is not None


def test_reap_brake_limits_deletions_per_pass(cat: sessionmaker[Session], scw: ScwEnv) -> None:
    scw.state.seed_servers("fr-par-2", 5, tags=[cluster_tag(CLUSTER), "inventiv-launch=b-{i}"])
    scw.clock.advance(30 * MIN)
    brake = ReconcileSettings(max_reaps_per_pass=2, reap_grace=timedelta(minutes=15))
    report = reconciler(cat, scw, ray=lambda _c: set(), settings=brake).run_once()
    assert len(report.reaped) == 2 and len(scw.servers()) == 3
    assert sum("brake" in a.reason for a in report.deferred) == 3


def test_cli_reconcile_through_the_live_api(db: sessionmaker[Session], settings: Any,
                                            scw: ScwEnv, tmp_path: Any) -> None:
    import json

    import httpx
    from typer.testing import CliRunner

    from cli.reconcile import app as reconcile_cli
    from control_api.app import create_app
    from tests.cli.conftest import CommitBeforeResponse, ServerThread
    from tests.conftest import ADMIN_PASSWORD

    app = create_app(settings)
    if not any(getattr(r, "path", "").startswith("/api/reconcile") for r in app.routes):
        app.include_router(reconcile_routes.router)
    cloud = scw.cloud()
    vm = launch(cloud, "l-cli")
    scw.clock.advance(30 * MIN)
    app.state.reconciler = reconciler(app.state.sessionmaker, scw, cloud, ray=lambda _c: set())
    with ServerThread(CommitBeforeResponse(app)) as server:
        token = httpx.post(f"{server.url}/api/auth/login", json={
            "username": "admin", "password": ADMIN_PASSWORD}).json()["access_token"]
        env = {"INVENTIV_API_URL": server.url, "INVENTIV_TOKEN": token,
               "INVENTIV_CONFIG_DIR": str(tmp_path), "COLUMNS": "250"}
        runner = CliRunner()
        dry = runner.invoke(reconcile_cli, ["--dry-run", "--json"], env=env)
        assert dry.exit_code == 0, (dry.stdout, dry.stderr)
        body = json.loads(dry.stdout)
        assert body["dry_run"] and body["reaped"][0]["provider_instance_id"] == \
            vm.provider_instance_id
        assert server_ids(scw) == {vm.provider_instance_id}

        human = runner.invoke(reconcile_cli, [], env=env)
        assert human.exit_code == 0, (human.stdout, human.stderr)
        assert "reaped" in human.stdout and vm.provider_instance_id in human.stdout
        assert server_ids(scw) == set()

        last = runner.invoke(reconcile_cli, ["--last", "--json"], env=env)
        assert last.exit_code == 0 and json.loads(last.stdout)["counts"]["reaped"] == 1

        denied = runner.invoke(reconcile_cli, [], env={**env, "INVENTIV_TOKEN": "nope"})
        assert denied.exit_code == 1 and "error:" in denied.stderr
