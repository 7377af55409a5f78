"""`inventiv deploy -f FILE` and `inventiv deployments list|show|delete`.

``deploy`` sends the YAML text itself (``{"yaml": ...}``), so validation errors come back with
the field and the line of the file. It prints the commit each ``hf:`` revision was pinned to
and the warnings (a revision left unpinned, a fit not checked); a refusal because no GPU fits
lists each candidate with its numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import typer

from cli.config import make_client
from cli.output import (
    JsonOpt,
    fail,
    handles_errors,
    info,
    print_fields,
    print_json,
    print_table,
    warn,
)
from control_api.client.api import ControlApiError

app = typer.Typer(help="Model deployments (applied to Ray Serve by the control API).",
                  no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Deployment name (or id).")]
HEADERS = ["name", "version", "status", "model", "accelerator", "replicas", "message"]


def _row(d: dict[str, Any]) -> tuple[object, ...]:
    spec = d.get("spec") or {}
    auto = spec.get("autoscaling") or {}
    return (d["name"], d["version"], d["status"], (spec.get("model") or {}).get("name"),
            (spec.get("placement") or {}).get("accelerator_type") or "cpu",
            f"{auto.get('min_replicas')}..{auto.get('max_replicas')}", d.get("status_message"))


def _raise_with_details(exc: ControlApiError) -> NoReturn:
    """Invalid files: one line per issue (field, line, message) rather than one long line."""
    if exc.code == "invalid_deployment" and isinstance(exc.details, list) and exc.details:
        lines = []
        for d in exc.details:
            where = f" (line {d.get('line')})" if d.get("line") is not None else ""
            lines.append(f"  {d.get('field') or '<root>'}{where}: {d.get('message')}")
        raise fail(exc.code, "invalid deployment file:\n" + "\n".join(lines)) from None
    if exc.code == "no_gpu_fits" and isinstance(exc.details, dict):
        _print_fit(exc.details)
    raise exc


def _print_fit(fit: dict[str, Any]) -> None:
    """The memory estimate of one replica and each candidate GPU (GB per GPU)."""
    info(f"Fit: needs {fit.get('need_gb')} GB per GPU = weights {fit.get('weights_gb')} + KV "
         f"cache {fit.get('kv_cache_gb')} + overhead {fit.get('overhead_gb')} ({fit.get('dtype')}"
         f", tensor_parallel_size {fit.get('tensor_parallel_size')}, gpu_memory_utilization "
         f"{fit.get('gpu_memory_utilization')})")
    print_table("Candidate GPUs (GB per GPU)", ["gpu", "memory", "usable", "fits"],
                [(c.get("gpu"), c.get("gpu_memory_gb"), c.get("usable_gb"),
                  "yes" if c.get("fits") else "no") for c in fit.get("candidates") or []])


def _pin(d: dict[str, Any]) -> str:
    """``main -> 0123abcd4567`` (pinned), ``main (not pinned)``, or empty (nothing to pin)."""
    src = d.get("source") or {}
    asked = src.get("revision_requested") or "main"
    if src.get("revision"):
        return f"{asked} -> {str(src['revision'])[:12]}"
    if str(src.get("requested") or "").startswith("hf:") or any(
            w.startswith("revision not pinned") for w in src.get("warnings") or []):
        return f"{asked} (not pinned)"
    return ""


@handles_errors
def deploy(
    file: Annotated[Path, typer.Option("-f", "--file", exists=True, dir_okay=False,
                                       readable=True, help="Deployment YAML file.")],
    json_out: JsonOpt = False,
) -> None:
    """Store (create or update by name) the deployments of a YAML file; the control API
    applies them to Ray Serve."""
    text = file.read_text(encoding="utf-8")
    with make_client() as client:
        try:
            result = client.request("POST", "/api/deployments", json={"yaml": text})
        except ControlApiError as exc:
            _raise_with_details(exc)
    items = result["items"]
    if json_out:
        print_json(result)
        return
    print_table(None, ["name", "version", "change", "status", "revision", "message"],
                [(d["name"], d["version"], d["change"], d["status"], _pin(d),
                  d.get("status_message")) for d in items])
    for d in items:
        for w in (d.get("source") or {}).get("warnings") or []:
            warn(f"warning: {d['name']}: {w}")


@app.command("list")
@handles_errors
def list_deployments(
    include_deleted: Annotated[bool, typer.Option("--deleted",
                                                  help="Include deleted ones.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """List deployments visible to you."""
    with make_client() as client:
        result = client.request("GET", "/api/deployments",
                                params={"include_deleted": include_deleted or None})
    if json_out:
        print_json(result)
        return
    print_table("Deployments", HEADERS, [_row(d) for d in result["items"]],
                empty="no deployment")


def _one(method: str, name: str) -> Any:
    """``METHOD /api/deployments/{name}``: the deployment the control API answers with."""
    with make_client() as client:
        return client.request(method, f"/api/deployments/{quote(name, safe='')}")


@app.command("show")
@handles_errors
def show(name: NameArg, json_out: JsonOpt = False) -> None:
    """Show one deployment and its stored spec."""
    d = _one("GET", name)
    if json_out:
        print_json(d)
        return
    print_fields(f"Deployment {d['name']}", [
        ("id", d["id"]), ("version", d["version"]), ("status", d["status"]),
        ("message", d.get("status_message")), ("created", d["created_at"]),
        ("updated", d["updated_at"]), ("deleted", d.get("deleted_at")),
        *((key, value) for key, value in (d.get("spec") or {}).items() if key != "name"),
        *_source_fields(d.get("source")),
    ])
    fit = (d.get("source") or {}).get("fit")
    if fit:
        _print_fit(fit)
    if d.get("weights"):
        print_table("Weights", ["node", "state", "done", "total", "progress", "revision",
                                "error"],
                    [(w["node_id"], w["state"], _size(w["bytes_done"]), _size(w["bytes_total"]),
                      f"{100 * w['bytes_done'] / w['bytes_total']:.0f}%"
                      if w["bytes_total"] else "", w.get("revision"),
                      f"{w['error']['code']}: {w['error']['message']}" if w.get("error")
                      else "") for w in d["weights"]])


def _source_fields(src: dict[str, Any] | None) -> list[tuple[str, Any]]:
    if not src:
        return []
    return [("source requested", src.get("requested")),
            ("revision requested", src.get("revision_requested")),
            ("revision pinned", src.get("revision") or "not pinned"),
            *(("warning", w) for w in src.get("warnings") or [])]


def _size(n: int) -> str:
    """Bytes as the download shows them (decimal units, like the Hub's file sizes)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


@app.command("delete")
@handles_errors
def delete(name: NameArg, json_out: JsonOpt = False) -> None:
    """Delete a deployment (removed from Serve by the control API)."""
    d = _one("DELETE", name)
    if json_out:
        print_json(d)
        return
    print_fields(None, [("name", d["name"]), ("status", d["status"]),
                        ("message", d.get("status_message"))])
