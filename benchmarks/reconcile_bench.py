"""A full reconcile pass over 1,000 VMs on the fake Scaleway API (paginated), DB on Postgres.

The cluster's 1,000 VMs are spread over two zones (100 per page), in a project that also holds
another cluster's VMs; the database (its own Postgres database, created and dropped here) has
the 1,000 matching ``ready`` rows with open cost intervals, so the steady-state pass -- the
common case -- compares everything and writes nothing but its pass log. Real SDK, real HTTP.

Baseline, in the same run: a naive reconcile that asks the cloud about each row (``get`` per
VM) and reads each row on its own. Also measured: a dry-run pass deciding 1,000 orphans.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from scaleway_core.client import Client
from scratch_db import scratch_database
from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from cluster.clouds.scaleway import ScalewayCloud, ScalewayConfig
from cluster.fake_scaleway import (
    FAKE_ACCESS_KEY,
    FAKE_PROJECT_ID,
    FAKE_SECRET_KEY,
    FakeState,
    serve_in_thread,
)
from control_api import bootstrap, migrate
from control_api.reconcile import Reconciler, ReconcileSettings
from core.clouds import NotFound, cluster_tag
from core.db import make_engine, make_sessionmaker
from core.models import BillingInterval, Instance, InstanceState

ZONES = ("fr-par-2", "pl-waw-2")
CLUSTER = "bench"


def _cloud(url: str) -> ScalewayCloud:
    client = Client(access_key=FAKE_ACCESS_KEY, secret_key=FAKE_SECRET_KEY, api_url=url,
                    default_project_id=FAKE_PROJECT_ID, default_zone=ZONES[0],
                    default_region="fr-par")
    return ScalewayCloud(ScalewayConfig(zones=ZONES), client=client)


def _seed(state: FakeState, maker: sessionmaker[Session], vms: int, others: int,
          now: datetime) -> set[str]:
    ids: list[tuple[str, str]] = []
    per_zone = [vms // len(ZONES) + (1 if i < vms % len(ZONES) else 0)
                for i in range(len(ZONES))]
    for zone, count in zip(ZONES, per_zone, strict=True):
        tags = [cluster_tag(CLUSTER), f"inventiv-launch=l-{zone}-{{i}}",
                "inventiv-node-type=gpu-l4"]
        ids.extend((sid, zone) for sid in state.seed_servers(zone, count, tags=tags,
                                                             commercial_type="L4-1-24G"))
        state.seed_servers(zone, others // len(ZONES), tags=[cluster_tag("someone-else")])
    launches: set[str] = set()
    with state.lock:
        by_id = {s.id: s for s in state.servers.values()}
    rows, intervals = [], []
    for sid, zone in ids:
        server = by_id[sid]
        lid = next(t.split("=", 1)[1] for t in server.tags if t.startswith("inventiv-launch="))
        launches.add(lid)
        iid = uuid.uuid4()
        rows.append({"id": iid, "launch_id": lid, "cluster_name": CLUSTER,
                     "provider_code": "scaleway", "zone_code": zone,
                     "instance_type_name": "L4-1-24G", "node_type": "gpu-l4",
                     "provider_instance_id": sid, "public_ip": server.public_ip,
                     "state": InstanceState.READY, "state_entered_at": now, "created_at": now,
                     "updated_at": now, "version": 1})
        intervals.append({"instance_id": iid, "provider_code": "scaleway", "zone_code": zone,
                          "instance_type_name": "L4-1-24G", "started_at": now})
    with maker.begin() as s:
        s.execute(insert(Instance), rows)
        s.execute(insert(BillingInterval), intervals)
    return launches


def _naive_pass(maker: sessionmaker[Session], cloud: ScalewayCloud) -> int:
    """The baseline: one ``get`` per live row, one row read at a time. Returns the gone count."""
    gone = 0
    with maker() as s:
        ids = list(s.scalars(select(Instance.id).where(
            Instance.cluster_name == CLUSTER, Instance.state == InstanceState.READY)))
    for iid in ids:
        with maker() as s:
            inst = s.get(Instance, iid)
            assert inst is not None and inst.provider_instance_id and inst.zone_code
            try:
                cloud.get(inst.provider_instance_id, inst.zone_code)
            except NotFound:
                gone += 1
    return gone


def _timed(fn: Callable[[], Any], cloud: ScalewayCloud) -> tuple[float, int, Any]:
    before = sum(cloud.stats.values())
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, sum(cloud.stats.values()) - before, out


def run(vms: int, others: int, passes: int, baseline_passes: int) -> dict[str, Any]:
    """Create a database, seed fake + DB, time the passes, drop the database."""
    with scratch_database("inventiv_bench") as url:
        return _run_in(url, vms, others, passes, baseline_passes)


def _run_in(url: str, vms: int, others: int, passes: int,
            baseline_passes: int) -> dict[str, Any]:
    engine = make_engine(url)
    state = FakeState()
    fake = serve_in_thread(state)
    try:
        migrate.upgrade(engine)
        maker = make_sessionmaker(engine)
        with maker.begin() as s:
            bootstrap.seed_catalog(s, bootstrap.load_catalog())
        now = datetime.fromisoformat(state.iso(state.clock.now()) or "")
        launches = _seed(state, maker, vms, others, now)
        cloud = _cloud(fake.url)
        clock = [now + timedelta(hours=1)]
        rec = Reconciler(maker, {CLUSTER: cloud}, ray_nodes=lambda _c: launches,
                         clock=lambda: clock[0], settings=ReconcileSettings())
        rec.run_once()  # warm-up: connection pools, imports
        walls, calls = [], []
        for _ in range(passes):
            wall, n, report = _timed(rec.run_once, cloud)
            counts = report.counts()
            assert report.clusters[0].listed == vms, report.clusters
            assert not any(counts[k] for k in ("adopted", "reaped", "closed_intervals",
                                               "failed_stuck", "recorded", "errors")), counts
            walls.append(wall)
            calls.append(n)
        base_walls, base_calls = [], []
        for _ in range(baseline_passes):
            wall, n, gone = _timed(lambda: _naive_pass(maker, cloud), cloud)
            assert gone == 0
            base_walls.append(wall)
            base_calls.append(n)
        # 1,000 orphans (rows gone): what a dry run decides, without acting.
        with maker.begin() as s:
            s.execute(text("DELETE FROM billing_intervals"))
            s.execute(text("DELETE FROM instances"))
        orphan_wall, orphan_calls, orphan_report = _timed(
            lambda: rec.run_once(dry_run=True), cloud)
        assert len(orphan_report.adopted) == vms, orphan_report.counts()
    finally:
        fake.stop()
        engine.dispose()
    p50, base_p50 = statistics.median(walls), statistics.median(base_walls)
    return {
        "benchmark": "reconcile_pass", "vms": vms, "other_cluster_vms": others,
        "zones": list(ZONES), "per_page": ScalewayConfig().per_page, "db": "postgresql",
        "passes": passes,
        "wall_s_p50": round(p50, 4), "wall_s_max": round(max(walls), 4),
        "api_calls_per_pass": calls[0], "api_calls_per_pass_max": max(calls),
        "vms_per_s": round(vms / p50, 1),
        "baseline": {"kind": "naive get per VM + row read per VM", "passes": baseline_passes,
                     "wall_s_p50": round(base_p50, 4),
                     "api_calls_per_pass": base_calls[0]},
        "speedup_vs_baseline": round(base_p50 / p50, 1),
        "api_call_ratio_vs_baseline": round(base_calls[0] / max(calls[0], 1), 1),
        "dry_run_1000_orphans": {"wall_s": round(orphan_wall, 4), "api_calls": orphan_calls,
                                 "would_adopt": len(orphan_report.adopted)},
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    """CLI: ``python benchmarks/reconcile_bench.py``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--others", type=int, default=200)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--baseline-passes", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="JSON output (the default)")
    args = parser.parse_args()
    print(json.dumps(run(args.vms, args.others, args.passes, args.baseline_passes)))


if __name__ == "__main__":
    main()
