"""Console benchmark on a real Postgres: server time of every console page and of the API calls
the page's script makes, with 1,000 instances × 365 days of history and 100k action logs.

Reuses :func:`finops_bench.generate` (1,000 instances with churn over 365 days, ~100k billing
intervals, hourly usage) and derives the cost spans through the real sync path, adds 100k action
logs and a state history per instance, then drives the real app in process (Starlette's
TestClient, so ASGI, routing, auth, serialisation are included) signed in as the platform admin.
Per page: the median and p95 over ``--runs`` of the slowest request the page makes, and of
all its requests together (they run in parallel in a browser, so the slowest one bounds the
page). Baseline in the same run: ``GET /api/auth/me`` (auth + one query). The target is
< 300 ms per request (``within_target``).

    python benchmarks/console_bench.py [--json] [--small] [--runs N] [--profile] [--only P,..]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finops_bench import NOW, copy_rows, generate  # noqa: E402
from scratch_db import scratch_database  # noqa: E402
from sqlalchemy import text  # noqa: E402

from control_api import migrate  # noqa: E402
from control_api.settings import Settings  # noqa: E402
from core.db import make_engine, make_sessionmaker, session_scope  # noqa: E402
from finops.spans import sync_spans  # noqa: E402

TARGET_MS = 300.0
PASSWORD = "console-bench-password"  # noqa: S105 - a throwaway database


def log(msg: str) -> None:
    sys.stderr.write(f"[console-bench] {msg}\n")
    sys.stderr.flush()


def pages(instance_id: uuid.UUID) -> dict[str, list[str]]:
    """Each page: its shell, then the API calls its script makes on load."""
    return {
        "costs": ["/costs", "/api/finops/summary", "/api/finops/series?window=day&bucket=hour",
                  "/api/finops/forecast",
                  "/api/finops/costs?window=month&group_by=instance_type",
                  "/api/finops/unit-costs?window=month", "/api/finops/chargeback?window=month",
                  "/api/finops/budgets"],
        "costs-365d": ["/api/finops/series?window=365d&bucket=day",
                       "/api/finops/costs?window=365d&group_by=deployment"],
        # The costs page's other choices: each chart window (with the bucket the page asks
        # for) and each breakdown group, over the longest window the page offers.
        "costs-choices": ["/api/finops/series?window=hour&bucket=minute",
                          "/api/finops/series?window=7d&bucket=hour",
                          "/api/finops/series?window=30d&bucket=day",
                          "/api/finops/series?window=month&bucket=day",
                          "/api/finops/costs?window=365d&group_by=provider",
                          "/api/finops/costs?window=365d&group_by=zone",
                          "/api/finops/costs?window=365d&group_by=instance_type",
                          "/api/finops/costs?window=30d&group_by=org"],
        "costs-365d-org": ["/api/finops/costs?window=365d&group_by=org"],
        "instances": ["/instances", "/api/instances?limit=50",
                      "/api/instances?limit=50&state=ready&provider=scaleway"],
        "instance": [f"/instances/{instance_id}", f"/api/instances/{instance_id}",
                     f"/api/action-logs?instance_id={instance_id}&limit=100"],
        "logs": ["/logs", "/api/action-logs?limit=50",
                 "/api/action-logs?limit=50&status=failure&type=instance.transition"],
        "deployments": ["/deployments", "/api/deployments"],
        "keys": ["/keys", "/api/api-keys", "/api/deployments"],
        "catalog": ["/catalog", "/api/catalog/instance-types"],
        "profile": ["/profile", "/api/sessions"],
        "playground": ["/playground"],
        "people": ["/people", "/api/orgs", "/api/users"],
    }


def add_history(engine: Any, ids: list[uuid.UUID], n_logs: int, rng: random.Random) -> None:
    hist = []
    for iid in ids:
        t = NOW - timedelta(days=365)
        for a, b in (("requested", "provisioning"), ("provisioning", "booting"),
                     ("booting", "joining"), ("joining", "ready")):
            t += timedelta(minutes=rng.randint(1, 5))
            hist.append((iid, a, b, t, "bench"))
    copy_rows(engine, "instance_state_history",
              ["instance_id", "from_state", "to_state", "at", "actor"], hist)
    logs = []
    for k in range(n_logs):
        logs.append(("instance.transition", "node_provider",
                     "failure" if k % 20 == 0 else "success", ids[k % len(ids)],
                     NOW - timedelta(seconds=rng.uniform(0, 365 * 86400))))
    copy_rows(engine, "action_logs", ["type", "component", "status", "instance_id",
                                      "created_at"], logs)


def measure(client: Any, paths: list[str], runs: int) -> dict[str, Any]:
    for p in paths:  # warm-up; every path must answer 200
        r = client.get(p)
        if r.status_code != 200:
            raise RuntimeError(f"{p}: {r.status_code} {r.text[:300]}")
    slowest, total = [], []
    per: dict[str, list[float]] = {p: [] for p in paths}
    for _ in range(runs):
        times = []
        for p in paths:
            t0 = time.perf_counter()
            client.get(p)
            ms = (time.perf_counter() - t0) * 1000
            per[p].append(ms)
            times.append(ms)
        slowest.append(max(times))
        total.append(sum(times))
    q = statistics.quantiles
    return {
        "slowest_request_ms_p50": round(statistics.median(slowest), 1),
        "slowest_request_ms_p95": round(q(slowest, n=20)[-1] if len(slowest) > 1 else slowest[0],
                                        1),
        "all_requests_ms_p50": round(statistics.median(total), 1),
        "per_request_ms_p50": {p: round(statistics.median(v), 1) for p, v in per.items()},
        "per_request_ms_p95": {p: round(q(v, n=20)[-1] if len(v) > 1 else v[0], 1)
                               for p, v in per.items()},
    }


def profile_unit_costs(sessions: Any, top: int = 15) -> dict[str, Any]:
    """cProfile of what ``GET /api/finops/unit-costs?window=month`` computes for an admin
    (``finops.unitcost.unit_costs`` over month to date, called here in this thread: the test
    client serves requests on another thread, out of the profiler's sight): where its time
    goes, by cumulative time, so the slow call names the function to fix."""
    import cProfile
    import pstats

    from finops.ledger import to_us
    from finops.unitcost import unit_costs
    from finops.windows import TimeRange, month_start

    prof = cProfile.Profile()
    with sessions() as s:
        t0 = time.perf_counter()
        prof.enable()
        unit_costs(s, TimeRange(month_start(NOW), NOW), to_us(NOW))
        prof.disable()
        total_ms = (time.perf_counter() - t0) * 1000
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if any(part in file for part in ("/finops/", "/control_api/", "/core/", "sqlalchemy")):
            rows.append({"function": f"{Path(file).parent.name}/{Path(file).name}:{line} {fn}",
                         "calls": nc, "cumulative_ms": round(ct * 1000, 1),
                         "own_ms": round(tt * 1000, 1)})
    rows.sort(key=lambda r: -r["cumulative_ms"])
    return {"call": "finops.unitcost.unit_costs(month to date)",
            "profiled_ms": round(total_ms, 1), "top": rows[:top]}


def run(small: bool, runs: int, profile: bool = False,
        only: list[str] | None = None) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from control_api.app import create_app

    rng = random.Random(7)  # noqa: S311 - synthetic data
    n_instances, days, usage, n_logs = (100, 60, 100_000, 10_000) if small else (
        1000, 365, 2_000_000, 100_000)
    result: dict[str, Any] = {"backend": "postgresql", "small": small, "runs": runs,
                              "target_ms": TARGET_MS}
    with scratch_database("inventiv_console_bench") as url:
        engine = make_engine(url)
        try:
            migrate.upgrade(engine)
            sessions = make_sessionmaker(engine)
            t0 = time.perf_counter()
            info = generate(engine, sessions, n_instances, days, usage, rng)
            ids = info.pop("instance_ids")
            add_history(engine, ids, n_logs, rng)
            with session_scope(sessions) as s:
                sync_spans(s, batch=20000)
            with engine.begin() as conn:
                conn.execute(text("ANALYZE"))
            result.update(info, action_logs=n_logs,
                          generate_s=round(time.perf_counter() - t0, 1))
            log(f"generated {info} in {result['generate_s']} s")
            settings = Settings(
                database_url=url, data_dir=Path(tempfile.mkdtemp(prefix="console-bench-")),
                admin_password=PASSWORD,  # type: ignore[arg-type]
                jwt_secret="console-bench-" + "x" * 40,  # type: ignore[arg-type]
                cookie_secure=False, run_migrations=False, background_jobs=False,
                argon2_time_cost=1, argon2_memory_cost=8192)
            app = create_app(settings)
            app.state.finops_clock = lambda: NOW
            with TestClient(app) as client:
                r = client.post("/api/auth/login", json={"username": "admin",
                                                         "password": PASSWORD})
                r.raise_for_status()  # the session cookie stays on the client, as in a browser
                base = measure(client, ["/api/auth/me"], runs)
                result["baseline_auth_me_ms_p50"] = base["slowest_request_ms_p50"]
                out = {}
                for name, paths in pages(ids[0]).items():
                    if only and name not in only:
                        continue
                    out[name] = measure(client, paths, runs)
                    out[name]["ratio_vs_baseline"] = round(
                        out[name]["slowest_request_ms_p50"]
                        / max(result["baseline_auth_me_ms_p50"], 0.01), 1)
                    log(f"{name}: {out[name]['slowest_request_ms_p50']} ms (slowest request)")
                result["pages"] = out
                if profile:
                    result["profile"] = profile_unit_costs(sessions)
                result["within_target"] = all(p["slowest_request_ms_p50"] < TARGET_MS
                                              for p in out.values())
            app.state.engine.dispose()
        finally:
            engine.dispose()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    ap.add_argument("--small", action="store_true", help="100 instances × 60 days")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile the unit-costs computation (top functions in the JSON)")
    ap.add_argument("--only", default="",
                    help="comma-separated page names to measure (default: every page)")
    args = ap.parse_args()
    result = run(args.small, args.runs, args.profile,
                 [p for p in args.only.split(",") if p] or None)
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
