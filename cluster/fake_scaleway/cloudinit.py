"""The part of cloud-init the booting fake runs: the modules our user data emits, nothing more.

:func:`parse_user_data` turns ``#cloud-config`` YAML into a :class:`BootPlan` (``write_files``,
``runcmd``; ``package_update``/``package_upgrade`` accepted only as ``false``). Any other module
is a :class:`BootError`, so a user data that would do something the box cannot check fails loudly
instead of being skipped. :func:`parse_unit` reads the systemd unit keys we render
(``Environment``, ``EnvironmentFile``, ``ExecStartPre``, ``ExecStart``, ``Restart``,
``RestartSec``) with systemd's quoting rules (C-style quotes, ``%%`` and ``$$``).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml

SUPPORTED = frozenset({"write_files", "runcmd", "package_update", "package_upgrade"})
_SERVICE_KEYS = frozenset({"Type", "Restart", "RestartSec", "Environment", "EnvironmentFile",
                           "ExecStartPre", "ExecStart", "TimeoutStartSec", "User",
                           "WorkingDirectory"})


class BootError(Exception):
    """The VM cannot boot this user data; the message says which module or key."""


@dataclass(frozen=True)
class WriteFile:
    path: str
    content: str
    permissions: int = 0o644


@dataclass(frozen=True)
class BootPlan:
    """What cloud-init would do on first boot, in order: write the files, run the commands."""

    write_files: tuple[WriteFile, ...] = ()
    runcmd: tuple[tuple[str, ...] | str, ...] = ()


@dataclass
class Unit:
    """A systemd service as we render it."""

    name: str
    exec_start: list[str]
    exec_start_pre: list[tuple[bool, list[str]]] = field(default_factory=list)  # (ignore_fail)
    environment: dict[str, str] = field(default_factory=dict)
    environment_files: list[tuple[bool, str]] = field(default_factory=list)  # (optional, path)
    restart: str = "no"
    restart_sec: float = 0.1
    working_directory: str | None = None


def parse_user_data(raw: bytes | str) -> BootPlan:
    """Validate and plan a ``#cloud-config`` user data (a :class:`BootError` if unsupported)."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    if not text.startswith("#cloud-config"):
        raise BootError("user data is not #cloud-config (scripts and MIME parts unsupported)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BootError(f"user data is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise BootError("cloud-config must be a mapping")
    unknown = sorted(set(data) - SUPPORTED)
    if unknown:
        raise BootError(f"unsupported cloud-init module(s): {', '.join(unknown)}")
    for key in ("package_update", "package_upgrade"):
        if data.get(key, False) is not False:
            raise BootError(f"{key}: true is not supported by the box (no package mirror)")
    files: list[WriteFile] = []
    for idx, entry in enumerate(data.get("write_files") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise BootError(f"write_files[{idx}] needs a path")
        extra = set(entry) - {"path", "content", "owner", "permissions", "encoding"}
        if extra or entry.get("encoding") not in (None, "text/plain"):
            raise BootError(f"write_files[{idx}]: unsupported keys {sorted(extra)}")
        if entry.get("owner", "root:root") != "root:root":
            raise BootError(f"write_files[{idx}]: only root:root owner is supported")
        path = entry["path"]
        if not path.startswith("/") or ".." in path.split("/"):
            raise BootError(f"write_files[{idx}]: path must be absolute")
        try:
            perms = int(str(entry.get("permissions", "0644")), 8)
        except ValueError:
            raise BootError(f"write_files[{idx}]: bad permissions") from None
        files.append(WriteFile(path, str(entry.get("content", "")), perms))
    cmds: list[tuple[str, ...] | str] = []
    for idx, cmd in enumerate(data.get("runcmd") or []):
        if isinstance(cmd, str):
            cmds.append(cmd)
        elif isinstance(cmd, list) and cmd and all(isinstance(a, str) for a in cmd):
            cmds.append(tuple(cmd))
        else:
            raise BootError(f"runcmd[{idx}] must be a string or a list of strings")
    return BootPlan(tuple(files), tuple(cmds))


def _unquote_value(value: str, *, exec_line: bool) -> list[str]:
    """Split a unit value into words, as systemd does for the quoting we emit."""
    try:
        words = shlex.split(value, posix=True)
    except ValueError as exc:
        raise BootError(f"bad quoting in unit line: {exc}") from None
    out = []
    for word in words:
        word = word.replace("%%", "%")
        if exec_line:
            word = word.replace("$$", "$")
        out.append(word)
    return out


def parse_unit(name: str, text: str) -> Unit:
    """Read a ``[Service]`` unit (keys we do not render are a :class:`BootError`)."""
    section = ""
    unit = Unit(name=name, exec_start=[])
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise BootError(f"{name}:{lineno}: not a key=value line")
        if section != "Service":
            continue
        if key not in _SERVICE_KEYS:
            raise BootError(f"{name}:{lineno}: unsupported [Service] key {key}")
        if key == "Environment":
            for word in _unquote_value(value, exec_line=False):
                k, eq, v = word.partition("=")
                if not eq:
                    raise BootError(f"{name}:{lineno}: Environment needs KEY=value")
                unit.environment[k] = v
        elif key == "EnvironmentFile":
            optional = value.startswith("-")
            unit.environment_files.append((optional, value.lstrip("-")))
        elif key in ("ExecStart", "ExecStartPre"):
            ignore = value.startswith("-")
            argv = _unquote_value(value.lstrip("-"), exec_line=True)
            if not argv or not argv[0].startswith("/"):
                raise BootError(f"{name}:{lineno}: {key} needs an absolute executable")
            if key == "ExecStart":
                unit.exec_start = argv
            else:
                unit.exec_start_pre.append((ignore, argv))
        elif key == "Restart":
            if value not in ("no", "always", "on-failure"):
                raise BootError(f"{name}:{lineno}: Restart={value} unsupported")
            unit.restart = value
        elif key == "RestartSec":
            try:
                unit.restart_sec = float(value.rstrip("s"))
            except ValueError:
                raise BootError(f"{name}:{lineno}: bad RestartSec") from None
        elif key == "WorkingDirectory":
            unit.working_directory = value
        elif key == "User" and value != "root":
            raise BootError(f"{name}:{lineno}: only User=root is supported")
    if not unit.exec_start:
        raise BootError(f"{name}: no ExecStart")
    return unit


def read_env_file(text: str) -> dict[str, str]:
    """``KEY=value`` lines (systemd ``EnvironmentFile``; quotes around the value removed)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            out[key.strip()] = value
    return out


def describe_plan(plan: BootPlan) -> dict[str, Any]:
    """A loggable summary: paths and commands, never file contents."""
    return {"write_files": [f.path for f in plan.write_files],
            "runcmd": [list(c) if isinstance(c, tuple) else c for c in plan.runcmd]}


__all__ = ["BootError", "BootPlan", "Unit", "WriteFile", "describe_plan", "parse_unit",
           "parse_user_data", "read_env_file"]
