"""Every third-party module our packages import comes from a distribution pyproject declares.

The imports are read from the source (AST: module-level, function-level, ``TYPE_CHECKING`` and
``try`` blocks alike), each top-level module is mapped to the distributions that provide it in
this venv (``importlib.metadata.packages_distributions``), and one of them must be declared: in
``[project].dependencies``, or, for code that runs only beside an engine (vLLM, torch, the
tokenizers), in an engine extra (every optional extra but ``dev``). Relying on a transitive
dependency (``scaleway_core`` through ``scaleway``, ``starlette`` through ``fastapi``) fails here.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections import defaultdict
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
OUR_PACKAGES = ("core", "configs", "control_api", "cluster", "serve_apps", "autoscaler", "finops",
                "cli")
DEV_EXTRAS = frozenset({"dev"})


def normalize(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(group: str | None = None) -> list[Requirement]:
    project = PYPROJECT["project"]
    specs = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return [Requirement(s) for s in specs]


def declared_runtime() -> set[str]:
    return {normalize(r.name) for r in requirements()}


def declared_engine_extras() -> dict[str, set[str]]:
    extras = PYPROJECT["project"]["optional-dependencies"]
    return {name: {normalize(r.name) for r in requirements(name)}
            for name in extras if name not in DEV_EXTRAS}


def third_party_imports() -> dict[str, list[str]]:
    """Top-level module -> ``file:line`` of each import of it in our packages."""
    ours = set(OUR_PACKAGES)
    found: dict[str, list[str]] = defaultdict(list)
    for pkg in OUR_PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top in ours or top in sys.stdlib_module_names or top == "__future__":
                        continue
                    found[top].append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return dict(found)


def test_the_scan_sees_imports_of_every_kind() -> None:
    imports = third_party_imports()
    # Module level (psutil in core/procs.py) and function level (torch, imported lazily by
    # serve_apps/tiny_model.py) alike; stdlib and our own packages are not third-party.
    assert {"psutil", "sqlalchemy", "fastapi", "typer", "ray", "torch"} <= set(imports)
    assert not {"os", "json", "typing", "core", "configs"} & set(imports)


def test_every_third_party_import_is_a_declared_distribution() -> None:
    providers = metadata.packages_distributions()
    runtime = declared_runtime()
    extras = declared_engine_extras()
    problems: list[str] = []
    for module, where in sorted(third_party_imports().items()):
        dists = {normalize(d) for d in providers.get(module, [])}
        if not dists:
            problems.append(f"{module} (imported at {where[0]}) is not installed here: "
                            "no distribution to check")
            continue
        if dists & runtime:
            continue
        in_extras = sorted(name for name, reqs in extras.items() if dists & reqs)
        if in_extras:
            continue
        problems.append(f"{module} ({', '.join(sorted(dists))}) is imported at "
                        f"{', '.join(where[:3])} but not declared in [project].dependencies "
                        "or an engine extra")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("group", [None, *PYPROJECT["project"]["optional-dependencies"]])
def test_declared_versions_hold_in_this_venv(group: str | None) -> None:
    """The pins say what the venv runs (a requirement not installed here is skipped: the
    ``gpu`` extra's CUDA vLLM, for one)."""
    problems: list[str] = []
    for req in requirements(group):
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            if group is None:
                problems.append(f"{req} is not installed")
            continue
        if not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req}: installed {version}")
    assert not problems, problems
