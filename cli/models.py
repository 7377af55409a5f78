"""`inventiv models …`: local model artefacts (the tiny chat model built offline)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from cli.output import JsonOpt, fail, info, print_json

app = typer.Typer(help="Local model artefacts.", no_args_is_help=True)


@app.callback()
def models() -> None:
    """Local model artefacts (a group even with one command: `inventiv models build-tiny`)."""


@app.command("build-tiny")
def build_tiny(
    directory: Annotated[Path, typer.Argument(help="Where to write the model (created).")],
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty directory.")]
    = False,
    json_out: JsonOpt = False,
) -> None:
    """Build the tiny Llama chat model offline (reproducible: same files on every build)."""
    # Imported here: torch and transformers take seconds to import, other commands need neither.
    from serve_apps.tiny_model import build_tiny_model, file_hashes

    if directory.exists() and any(directory.iterdir()) and not force:
        raise fail("not_empty", f"{directory} is not empty (use --force to overwrite)")
    started = time.monotonic()
    build_tiny_model(directory)
    hashes = file_hashes(directory)
    if json_out:
        print_json({"path": str(directory.resolve()), "files": hashes,
                    "seconds": round(time.monotonic() - started, 1)})
        return
    info(f"tiny model written to {directory.resolve()} in {time.monotonic() - started:.1f} s")
    for name, digest in hashes.items():
        info(f"  {digest[:16]}  {name}")
