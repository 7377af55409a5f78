"""Listing pass of the reconciler over 1,000 tagged VMs on the fake Scaleway API (paginated).

Measures what one reconcile pass costs on the cloud side: ``ScalewayCloud.list_instances`` for a
cluster whose 1,000 VMs are spread over two zones, in a project that also holds another cluster's
VMs (filtered out by the tag query). Real SDK, real HTTP to the fake in a thread.
Prints JSON: wall time per pass (p50/max) and API calls per pass.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from scaleway_core.client import Client

from cluster.clouds.scaleway import ScalewayCloud, ScalewayConfig
from cluster.fake_scaleway import (
    FAKE_ACCESS_KEY,
    FAKE_PROJECT_ID,
    FAKE_SECRET_KEY,
    FakeState,
    serve_in_thread,
)
from core.clouds import cluster_tag

ZONES = ("fr-par-2", "pl-waw-2")


def run(vms: int, others: int, passes: int) -> dict[str, object]:
    """Seed the fake, run ``passes`` listing passes, return the figures."""
    state = FakeState()
    per_zone = [vms // len(ZONES) + (1 if i < vms % len(ZONES) else 0)
                for i in range(len(ZONES))]
    for zone, count in zip(ZONES, per_zone, strict=True):
        state.seed_servers(zone, count, tags=[cluster_tag("bench"), "inventiv-launch=l-{i}",
                                              "inventiv-node-type=gpu-l4"],
                           commercial_type="L4-1-24G")
        state.seed_servers(zone, others // len(ZONES), tags=[cluster_tag("someone-else")])
    fake = serve_in_thread(state)
    try:
        client = Client(access_key=FAKE_ACCESS_KEY, secret_key=FAKE_SECRET_KEY, api_url=fake.url,
                        default_project_id=FAKE_PROJECT_ID, default_zone=ZONES[0],
                        default_region="fr-par")
        cloud = ScalewayCloud(ScalewayConfig(zones=ZONES), client=client)
        cloud.list_instances("bench")  # warm-up: connection pool, imports
        walls: list[float] = []
        calls: list[int] = []
        for _ in range(passes):
            before = sum(cloud.stats.values())
            t0 = time.perf_counter()
            listed = cloud.list_instances("bench")
            walls.append(time.perf_counter() - t0)
            calls.append(sum(cloud.stats.values()) - before)
            assert len(listed) == vms, len(listed)
    finally:
        fake.stop()
    return {
        "benchmark": "reconcile_listing", "vms": vms, "other_cluster_vms": others,
        "zones": list(ZONES), "per_page": ScalewayConfig().per_page, "passes": passes,
        "wall_s_p50": round(statistics.median(walls), 4), "wall_s_max": round(max(walls), 4),
        "api_calls_per_pass": calls[0], "api_calls_per_pass_max": max(calls),
        "vms_per_s": round(vms / statistics.median(walls), 1),
    }


def main() -> None:
    """CLI: ``python benchmarks/reconcile_listing_bench.py --json``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--others", type=int, default=200)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="JSON output (the default)")
    args = parser.parse_args()
    print(json.dumps(run(args.vms, args.others, args.passes)))


if __name__ == "__main__":
    main()
