"""core.ray_private is the only importer of Ray's private APIs, and every name it serves exists
on the pinned Ray (a Ray upgrade fails here first, not in a replica)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import core.ray_private as rp

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("configs", "core", "finops", "autoscaler", "control_api", "cluster", "serve_apps",
            "cli")
PRIVATE = ("ray._raylet", "ray._private", "ray.serve._private", "ray.llm._internal",
           "ray.core.generated")


def _imports(path: Path) -> list[str]:
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append(node.module)
    return out


def test_no_private_ray_import_outside_core_ray_private() -> None:
    offenders = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            if path == REPO / "core" / "ray_private.py":
                continue
            for name in _imports(path):
                if name.startswith(PRIVATE):
                    offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert offenders == []


@pytest.mark.parametrize("name", sorted(rp._LAZY))
def test_every_lazy_name_resolves_on_the_pinned_ray(name: str) -> None:
    assert getattr(rp, name) is not None


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        rp.NoSuchThing  # noqa: B018


def test_the_gcs_probe_module_is_importable_without_loading_serve_llm() -> None:
    import subprocess
    import sys

    code = ("import sys, core.ray_private; "
            "print(any(m.startswith('ray.llm') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
