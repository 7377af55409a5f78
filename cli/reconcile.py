"""`inventiv reconcile`: run one reconcile pass in the control API (or a dry run) and show the
report. The pass runs where the clouds are configured -- the control API -- so this command goes
through ``POST /api/reconcile/run`` (platform admin)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.config import make_client
from cli.output import JsonOpt, handles_errors, info, print_json, print_table, warn

app = typer.Typer(help="Compare cloud VMs, Ray nodes and the database; adopt or reap orphans.",
                  invoke_without_command=True)


@app.callback()
@handles_errors
def reconcile(
    dry_run: Annotated[bool, typer.Option("--dry-run",
                                          help="Report what would be done; change nothing.")]
    = False,
    cluster: Annotated[str | None, typer.Option("--cluster", help="Only this cluster.")]
    = None,
    last: Annotated[bool, typer.Option("--last", help="Show the last report; run nothing.")]
    = False,
    json_out: JsonOpt = False,
) -> None:
    """Run one reconcile pass now and print its report."""
    with make_client() as client:
        if last:
            report = client.request("GET", "/api/reconcile/last")
        else:
            body: dict[str, Any] = {"dry_run": dry_run}
            if cluster:
                body["cluster"] = cluster
            report = client.request("POST", "/api/reconcile/run", json=body)
    if json_out:
        print_json(report)
        return
    render(report)


def render(report: dict[str, Any]) -> None:
    """Human view of a report."""
    if report.get("skipped"):
        warn(f"skipped: {report['skipped']} (another reconciler is running)")
        return
    print_table("Clusters", ["cluster", "provider", "listing", "VMs", "rows", "Ray",
                             "API calls", "error"],
                [(c["cluster"], c["provider"], c["listing"], c["listed"], c["rows"], c["ray"],
                  c["api_calls"], c["error"]) for c in report.get("clusters", [])],
                empty="no cluster configured")
    rows = []
    for kind in ("adopted", "reaped", "closed_intervals", "failed_stuck", "advanced", "recorded",
                 "deferred"):
        for a in report.get(kind, []):
            rows.append((kind, a["cluster"], a["provider_instance_id"], a["launch_id"],
                         "yes" if a["applied"] else "no", a["reason"], a["error"]))
    print_table("Actions" + (" (dry run)" if report.get("dry_run") else ""),
                ["action", "cluster", "VM", "launch id", "applied", "reason", "error"], rows,
                empty="nothing to do")
    for err in report.get("errors", []):
        warn(err)
    counts = report.get("counts", {})
    info(f"{report.get('duration_ms', 0)} ms, {report.get('api_calls', 0)} cloud API calls; "
         + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
