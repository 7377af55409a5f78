"""FinOps benchmark on a real Postgres: summary, series, chargeback latency; usage ingest rate.

Creates its own database (``inventiv_finops_bench_<random>``) on the server named by
``INVENTIV_BENCH_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``),
migrates it, generates 1,000 instances with churn over 365 days (~100k billing intervals) and
10 million usage records' worth of hourly aggregates (bulk COPY), derives the cost spans through
the real sync path, then measures the service functions the API routes call (reads only: the
background job derives the data). Baselines, in the same run, the naive per-minute cost rows the
seed project used: for 10 % of the fleet over 30 days (one window, same subset as ours), and
for the summary: its eight windows summed from per-minute rows of 10 % of the fleet over the
whole year, against our summary of the WHOLE fleet.

Usage ingest: 200k records validated as the internal route does, written by
:func:`finops.ingest.insert_usage_rows` behind the route's key/org checks (``proposed``), and
20k through today's ``insert_usage`` (``current``); two writers, 10 % of the batches re-sent
(spool retries), then rolled up: records/s, lost and doubled. The database is dropped at the
end.

    python benchmarks/finops_bench.py [--json] [--small] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scratch_db import scratch_database  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from control_api import bootstrap, migrate  # noqa: E402
from control_api.services import finops as svc  # noqa: E402
from core.db import make_engine, make_sessionmaker, session_scope  # noqa: E402
from finops.chargeback import chargeback  # noqa: E402
from finops.costs import window_costs_units  # noqa: E402
from finops.ledger import to_us, units_to_eur  # noqa: E402
from finops.spans import sync_spans  # noqa: E402
from finops.usage import dims_key  # noqa: E402
from finops.windows import TimeRange, month_start, resolve_range  # noqa: E402

NOW = datetime(2025, 12, 15, 13, 37, 21, 123456, tzinfo=UTC)
TYPES = [("L4-1-24G", "0.75"), ("L4-2-24G", "1.50"), ("L40S-1-48G", "1.40"),
         ("H100-1-80G", "2.73"), ("H100-2-80G", "5.46"), ("H100-SXM-8-80G", "23.028")]
ZONES = ["fr-par-2", "pl-waw-2"]


def log(msg: str) -> None:
    sys.stderr.write(f"[finops-bench] {msg}\n")
    sys.stderr.flush()


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * (len(s) - 1))))
    return round(s[k], 3)


def timed(fn: Callable[[], Any], runs: int) -> list[float]:
    fn()  # warm-up (plans, caches)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def copy_rows(engine: Any, table: str, cols: list[str], rows: list[tuple[Any, ...]]) -> None:
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        raw.commit()
    finally:
        raw.close()


def generate(engine: Any, sessions: Any, n_instances: int, days: int, usage_records: int,
             rng: random.Random) -> dict[str, Any]:
    with session_scope(sessions) as s:
        bootstrap.seed_catalog(s, bootstrap.load_catalog())
        # A mid-year price change on two types: intervals crossing it are split.
        for name, new in (("H100-1-80G", "2.50"), ("L4-1-24G", "0.80")):
            s.execute(text(
                "INSERT INTO instance_type_prices (id, instance_type_id, effective_from, "
                "hourly_eur) SELECT :id, id, :eff, :eur FROM instance_types "
                "WHERE provider_code = 'scaleway' AND name = :n"),
                {"id": uuid.uuid4(), "eff": NOW - timedelta(days=days // 2), "eur": new, "n": name})
    deployments = [(uuid.uuid4(), f"model-{k}") for k in range(10)]
    orgs = [(uuid.uuid4(), f"org-{k}") for k in range(20)]
    keys = [(uuid.uuid4(), orgs[k % len(orgs)][0]) for k in range(100)]
    copy_rows(engine, "deployments", ["id", "name", "spec", "version", "status", "created_at",
                                      "updated_at"],
              [(d, n, json.dumps({"autoscaling": {"min_replicas": 1},
                                  "instance_type": "L4-1-24G"}), 1, "running", NOW, NOW)
               for d, n in deployments])
    copy_rows(engine, "orgs", ["id", "name", "created_at"], [(o, n, NOW) for o, n in orgs])
    copy_rows(engine, "api_keys", ["id", "org_id", "name", "prefix", "key_hash", "created_at"],
              [(k, o, f"key-{i}", "ia-bench", uuid.uuid4().hex * 2, NOW)
               for i, (k, o) in enumerate(keys)])
    start = NOW - timedelta(days=days)
    inst_rows, iv_rows = [], []
    for i in range(n_instances):
        iid = uuid.uuid4()
        itype = TYPES[i % len(TYPES)][0]
        zone = ZONES[i % 2]
        dep = deployments[i % len(deployments)][0] if i % 7 else None
        inst_rows.append((iid, f"bench-{i}", "bench", "scaleway", zone, itype, dep, "ready", NOW,
                          1, NOW, NOW))
        t = start + timedelta(seconds=rng.uniform(0, 3600))
        while t < NOW:
            # ~3.5 days up, ~10 minutes down: ~100 intervals per instance over a year.
            up = timedelta(seconds=rng.expovariate(1 / (3.5 * 86400 * days / 365)))
            end = t + up
            iv_rows.append((iid, "scaleway", zone, itype, dep, t, end if end < NOW else None))
            t = end + timedelta(seconds=rng.expovariate(1 / 600))
    copy_rows(engine, "instances", ["id", "launch_id", "cluster_name", "provider_code",
                                    "zone_code", "instance_type_name", "deployment_id", "state",
                                    "state_entered_at", "version", "created_at", "updated_at"],
              inst_rows)
    copy_rows(engine, "billing_intervals", ["instance_id", "provider_code", "zone_code",
                                            "instance_type_name", "deployment_id", "started_at",
                                            "ended_at"], iv_rows)
    # Usage: hourly aggregates summing to `usage_records` requests (each hour, each deployment,
    # a few keys), plus a tail of raw, not yet rolled-up records in the last hours.
    hours = days * 24
    per_hour_groups = 5
    rows_needed = hours * len(deployments) * per_hour_groups
    per_row = max(1, usage_records // rows_needed)
    uh = []
    h0 = NOW.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours)
    for h in range(hours):
        hour = h0 + timedelta(hours=h)
        for _d, dname in deployments:
            for g in range(per_hour_groups):
                key, org = keys[(h + g * 17 + hash(dname)) % len(keys)]
                req = per_row
                pt, ct = req * rng.randint(100, 900), req * rng.randint(50, 400)
                uh.append((hour, dims_key(key, org, None, dname, dname) + f"|{g}", key, org,
                           None, dname, dname, req, pt, ct))
    copy_rows(engine, "usage_hourly", ["hour", "dims", "api_key_id", "org_id", "user_id",
                                       "model", "deployment", "requests", "prompt_tokens",
                                       "completion_tokens"], uh)
    raw = []
    for k in range(5000):
        key, org = keys[k % len(keys)]
        dname = deployments[k % len(deployments)][1]
        raw.append((f"bench-{k}", key, org, dname, dname, rng.randint(10, 900),
                    rng.randint(10, 400), "ok", False,
                    NOW - timedelta(seconds=rng.uniform(0, 6 * 3600)), False))
    copy_rows(engine, "usage_records", ["request_id", "api_key_id", "org_id", "model",
                                        "deployment", "prompt_tokens", "completion_tokens",
                                        "status", "streamed", "at", "rolled_up"], raw)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    return {"instances": len(inst_rows), "intervals": len(iv_rows),
            "usage_hourly_rows": len(uh), "usage_records_worth": len(uh) * per_row + len(raw),
            "instance_ids": [r[0] for r in inst_rows]}


def naive_ratio(engine: Any, sessions: Any, instance_ids: list[uuid.UUID], days: int,
                runs: int) -> dict[str, Any]:
    """Per-minute cost rows (the seed project's way) for a subset, summed, versus ours."""
    w_end = NOW.replace(second=0, microsecond=0)
    w_start = w_end - timedelta(days=days)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE naive_cost_minutes (instance_id uuid, minute timestamptz,"
                          " cost_eur numeric(18, 9))"))
        conn.execute(text(
            "INSERT INTO naive_cost_minutes SELECT b.instance_id, m, p.hourly_eur / 60 "
            "FROM billing_intervals b "
            "JOIN instance_types t ON t.provider_code = b.provider_code "
            " AND t.name = b.instance_type_name "
            "JOIN LATERAL (SELECT hourly_eur FROM instance_type_prices "
            " WHERE instance_type_id = t.id ORDER BY effective_from DESC LIMIT 1) p ON true "
            "CROSS JOIN LATERAL generate_series(date_trunc('minute', greatest(b.started_at, :a)),"
            " least(coalesce(b.ended_at, :b), :b) - interval '1 minute', interval '1 minute') m "
            "WHERE b.instance_id = ANY(:ids) AND b.started_at < :b "
            " AND (b.ended_at IS NULL OR b.ended_at > :a)"),
            {"a": w_start, "b": w_end, "ids": instance_ids})
        conn.execute(text("CREATE INDEX ON naive_cost_minutes (minute)"))
        conn.execute(text("ANALYZE naive_cost_minutes"))
        n_rows = conn.execute(text("SELECT count(*) FROM naive_cost_minutes")).scalar_one()
    build_s = time.perf_counter() - t0

    def naive() -> Any:
        with engine.connect() as conn:
            return conn.execute(text("SELECT sum(cost_eur) FROM naive_cost_minutes "
                                     "WHERE minute >= :a AND minute < :b"),
                                {"a": w_start, "b": w_end}).scalar_one()

    def ours() -> Any:
        with sessions() as s:
            return window_costs_units(s, [(to_us(w_start), to_us(w_end))], to_us(NOW),
                                      instance_ids=instance_ids)[0].get(None, 0)

    naive_ms = timed(naive, runs)
    ours_ms = timed(ours, runs)
    return {"naive_subset_instances": len(instance_ids), "naive_window_days": days,
            "naive_rows": int(n_rows), "naive_build_s": round(build_s, 2),
            "naive_p50_ms": pct(naive_ms, 50), "ours_same_subset_p50_ms": pct(ours_ms, 50),
            "naive_over_ours_ratio": round(pct(naive_ms, 50) / max(pct(ours_ms, 50), 1e-6), 1),
            "naive_total_eur": str(naive()), "ours_total_eur": str(units_to_eur(ours()))}


def _insert_proposed(session: Session, records: list[Any]) -> tuple[int, int]:
    """``insert_usage`` with its write replaced by :func:`finops.ingest.insert_usage_rows`
    (the change proposed for ``control_api.services.internal``): same key/org checks."""
    from sqlalchemy import select

    from control_api.services.internal import _attribution_problem
    from core.models import ApiKey
    from finops.ingest import insert_usage_rows

    key_ids = list({r.api_key_id for r in records if r.api_key_id is not None})
    key_orgs = dict(session.execute(select(ApiKey.id, ApiKey.org_id)
                                    .where(ApiKey.id.in_(key_ids))).tuples().all())
    rows = []
    for r in records:
        if _attribution_problem(r, key_orgs) is None:
            row = r.model_dump()
            if r.api_key_id is not None:
                row["org_id"] = key_orgs[r.api_key_id]
            rows.append(row)
    inserted = len(insert_usage_rows(session, rows))
    return inserted, len(records) - inserted


def _insert_current(session: Session, records: list[Any]) -> tuple[int, int]:
    from control_api.services.internal import insert_usage

    res = insert_usage(session, records)
    return res.inserted, res.duplicates


def ingest_bench(sessions: Any, keys: list[tuple[uuid.UUID, uuid.UUID]], n: int, tag: str,
                 insert: Callable[[Session, list[Any]], tuple[int, int]], batch: int = 1000,
                 writers: int = 2, resend_every: int = 10) -> dict[str, Any]:
    """Usage ingest from JSON dicts (validated as the internal route does), ``writers``
    concurrent writers, every ``resend_every``-th batch sent twice (a spool retry); then folded
    by the rollup. Counts lost and doubled records."""
    from concurrent.futures import ThreadPoolExecutor

    from core.wire import UsageRequest
    from finops.usage import rollup_usage

    base = NOW - timedelta(hours=2)
    model = f"ingest-{tag}"
    batches = []
    for b in range(0, n, batch):
        recs = []
        for k in range(b, min(n, b + batch)):
            key, org = keys[k % len(keys)]
            recs.append({"request_id": f"{model}-{k}", "api_key_id": str(key),
                         "org_id": str(org), "model": model, "deployment": model,
                         "prompt_tokens": 10 + k % 7, "completion_tokens": 5 + k % 3,
                         "status": "completed",
                         "at": (base + timedelta(microseconds=k * 997)).isoformat()})
        batches.append(recs)
    sends = [b for i, b in enumerate(batches) for _ in range(2 if i % resend_every == 0 else 1)]
    inserted = duplicates = 0

    def send(recs: list[dict[str, Any]]) -> tuple[int, int]:
        req = UsageRequest.model_validate({"records": recs})
        with session_scope(sessions) as s:
            return insert(s, list(req.records))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        for ins, dup in pool.map(send, sends):
            inserted += ins
            duplicates += dup
    elapsed = time.perf_counter() - t0
    with session_scope(sessions) as s:
        stored = s.execute(text("SELECT count(*), count(DISTINCT request_id), "
                                "coalesce(sum(prompt_tokens + completion_tokens), 0) "
                                "FROM usage_records WHERE model = :m"), {"m": model}).one()
        rollup_usage(s)
    with session_scope(sessions) as s:
        hourly = s.execute(text("SELECT coalesce(sum(requests), 0), coalesce(sum("
                                "prompt_tokens + completion_tokens), 0) FROM usage_hourly "
                                "WHERE model = :m"), {"m": model}).one()
    want_tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for b in batches for r in b)
    p = f"ingest_{tag}_"
    return {p + "records": n, p + "batches_sent": len(sends), p + "writers": writers,
            p + "s": round(elapsed, 3), p + "records_per_s": round(n / elapsed),
            p + "inserted": inserted, p + "duplicates_ignored": duplicates,
            p + "lost": n - int(stored[1]), p + "doubled": int(stored[0]) - int(stored[1]),
            p + "tokens_exact": int(stored[2]) == want_tokens,
            p + "rollup_exact": (int(hourly[0]), int(hourly[1])) == (n, want_tokens)}


def naive_summary_ratio(engine: Any, sessions: Any, instance_ids: list[uuid.UUID], days: int,
                        summary_p50_ms: float, runs: int) -> dict[str, Any]:
    """The summary's windows summed from per-minute rows (the seed project's way) for a subset
    of the fleet over the whole period, versus our summary of the WHOLE fleet and versus our
    same windows over the same subset."""
    from finops.windows import WINDOWS

    w_end = NOW.replace(second=0, microsecond=0)
    w_start = w_end - timedelta(days=days)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text("CREATE UNLOGGED TABLE naive_summary_minutes (instance_id uuid, "
                          "minute timestamptz, cost_eur numeric(18, 9))"))
        conn.execute(text(
            "INSERT INTO naive_summary_minutes SELECT b.instance_id, m, p.hourly_eur / 60 "
            "FROM billing_intervals b "
            "JOIN instance_types t ON t.provider_code = b.provider_code "
            " AND t.name = b.instance_type_name "
            "JOIN LATERAL (SELECT hourly_eur FROM instance_type_prices "
            " WHERE instance_type_id = t.id ORDER BY effective_from DESC LIMIT 1) p ON true "
            "CROSS JOIN LATERAL generate_series(date_trunc('minute', greatest(b.started_at, :a)),"
            " least(coalesce(b.ended_at, :b), :b) - interval '1 minute', interval '1 minute') m "
            "WHERE b.instance_id = ANY(:ids) AND b.started_at < :b "
            " AND (b.ended_at IS NULL OR b.ended_at > :a)"),
            {"a": w_start, "b": w_end, "ids": instance_ids})
        conn.execute(text("CREATE INDEX ON naive_summary_minutes (minute)"))
        conn.execute(text("ANALYZE naive_summary_minutes"))
        n_rows = conn.execute(text("SELECT count(*) FROM naive_summary_minutes")).scalar_one()
    build_s = time.perf_counter() - t0
    ms = month_start(NOW)
    wins = [(w_end - WINDOWS[n], w_end) for n in WINDOWS] + [(ms, w_end)]
    cols = ", ".join(f"sum(cost_eur) FILTER (WHERE minute >= :a{k} AND minute < :b{k})"
                     for k in range(len(wins)))
    params: dict[str, Any] = {"lo": min(a for a, _ in wins)}
    for k, (a, b) in enumerate(wins):
        params[f"a{k}"], params[f"b{k}"] = a, b

    def naive() -> Any:
        with engine.connect() as conn:
            return conn.execute(text(f"SELECT {cols} FROM naive_summary_minutes "  # noqa: S608
                                     "WHERE minute >= :lo"), params).one()

    def ours_subset() -> Any:
        with sessions() as s:
            return window_costs_units(s, [(to_us(a), to_us(b)) for a, b in wins], to_us(NOW),
                                      instance_ids=instance_ids)

    naive_ms = timed(naive, runs)
    ours_ms = timed(ours_subset, runs)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE naive_summary_minutes"))
    n50, o50 = pct(naive_ms, 50), pct(ours_ms, 50)
    return {"naive_summary_subset_instances": len(instance_ids),
            "naive_summary_days": days, "naive_summary_rows": int(n_rows),
            "naive_summary_build_s": round(build_s, 1), "naive_summary_p50_ms": n50,
            "ours_summary_windows_same_subset_p50_ms": o50,
            "naive_summary_over_ours_same_subset_ratio": round(n50 / max(o50, 1e-6), 1),
            "naive_summary_over_our_full_summary_ratio": round(n50 / max(summary_p50_ms, 1e-6),
                                                               1)}


def run(small: bool, runs: int) -> dict[str, Any]:
    rng = random.Random(42)  # noqa: S311 - synthetic data, not security
    n_instances, days, usage = (100, 60, 200_000) if small else (1000, 365, 10_000_000)
    with scratch_database("inventiv_finops_bench") as url:
        return _run_in(url, n_instances, days, usage, rng, small, runs)


def _run_in(url: str, n_instances: int, days: int, usage: int, rng: random.Random,
            small: bool, runs: int) -> dict[str, Any]:
    engine = make_engine(url)
    result: dict[str, Any] = {"backend": "postgresql", "small": small, "runs": runs}
    try:
        migrate.upgrade(engine)
        sessions = make_sessionmaker(engine)
        t0 = time.perf_counter()
        info = generate(engine, sessions, n_instances, days, usage, rng)
        result["generate_s"] = round(time.perf_counter() - t0, 2)
        ids = info.pop("instance_ids")
        result.update(info)
        log(f"generated {info} in {result['generate_s']} s")
        t0 = time.perf_counter()
        with session_scope(sessions) as s:
            synced = sync_spans(s, batch=20000)
        with engine.begin() as conn:
            conn.execute(text("ANALYZE cost_spans"))
            result["cost_spans"] = conn.execute(text("SELECT count(*) FROM cost_spans")
                                                ).scalar_one()
        result["span_sync_s"] = round(time.perf_counter() - t0, 2)
        result["intervals_synced"] = synced
        log(f"synced {synced} intervals in {result['span_sync_s']} s")

        def in_session(fn: Callable[[Session], Any]) -> Callable[[], Any]:
            def call() -> Any:
                with session_scope(sessions) as s:
                    return fn(s)
            return call

        summary = in_session(lambda s: svc.summary(s, NOW))
        series = in_session(lambda s: svc.series(s, NOW, resolve_range(NOW, "30d"), "hour"))

        def cb(s: Session) -> Any:
            return chargeback(s, TimeRange(month_start(NOW), NOW), to_us(NOW))

        sm = timed(summary, runs)
        se = timed(series, max(5, runs // 3))
        ch = timed(in_session(cb), max(5, runs // 3))
        result.update({
            "summary_p50_ms": pct(sm, 50), "summary_p95_ms": pct(sm, 95),
            "series_30d_hourly_p50_ms": pct(se, 50), "series_30d_hourly_p95_ms": pct(se, 95),
            "chargeback_p50_ms": pct(ch, 50), "chargeback_p95_ms": pct(ch, 95),
        })
        s_out = summary()
        result["summary_example"] = {"burn_rate_eur_per_hour": str(s_out.burn_rate_eur_per_hour),
                                     "running_instances": s_out.running_instances,
                                     "month_to_date_eur": str(s_out.month_to_date_eur),
                                     "365d_eur": str(s_out.windows["365d"])}
        log(f"summary p50 {result['summary_p50_ms']} ms")
        subset = ids[: max(10, len(ids) // 10)]
        result.update(naive_ratio(engine, sessions, subset, 7 if small else 30,
                                  max(5, runs // 3)))
        result.update(naive_summary_ratio(engine, sessions, subset, days,
                                          result["summary_p50_ms"], max(5, runs // 4)))
        log(f"naive summary {result['naive_summary_p50_ms']} ms")
        with session_scope(sessions) as s:
            keys = [(k, o) for k, o in s.execute(text("SELECT id, org_id FROM api_keys"))]
        result.update(ingest_bench(sessions, keys, 20_000 if small else 200_000, "proposed",
                                   _insert_proposed))
        log(f"ingest {result['ingest_proposed_records_per_s']} records/s")
        result.update(ingest_bench(sessions, keys, 20_000, "current", _insert_current))
        log(f"ingest today {result['ingest_current_records_per_s']} records/s")
        result["targets"] = {"summary_p50_ms_lt": 20,
                             "naive_summary_over_our_full_summary_ratio_ge": 100,
                             "ingest_records_per_s_ge": 10_000}
        result["target_met"] = (result["summary_p50_ms"] < 20
                                and result["naive_summary_over_our_full_summary_ratio"] >= 100
                                and result["ingest_proposed_records_per_s"] >= 10_000
                                and result["ingest_proposed_lost"] == 0
                                and result["ingest_proposed_doubled"] == 0
                                and result["ingest_proposed_rollup_exact"])
    finally:
        engine.dispose()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    ap.add_argument("--small", action="store_true", help="a quick run on less data")
    ap.add_argument("--runs", type=int, default=40, help="timed runs of the summary")
    args = ap.parse_args()
    t0 = time.perf_counter()
    result = run(args.small, args.runs)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28} {v}")


if __name__ == "__main__":
    main()
