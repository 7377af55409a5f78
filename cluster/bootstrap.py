"""Cloud-init for a worker VM: join the Ray head over the private network with token auth.

The user data is built as a Python dict and dumped as ``#cloud-config`` YAML -- never by
concatenating shell. Nothing runs through a shell: the node is a systemd unit whose ``ExecStart``
is an argv quoted for systemd (``"``, ``\\``, ``%`` and ``$`` escaped), and ``runcmd`` entries are
argv lists. The cluster token is written to a root-only file (0600) and passed to Ray by path
(``RAY_AUTH_TOKEN_PATH``), so it appears in neither the unit, the process environment nor logs.

Two ways to run the node, same flags:
- ``docker``: ``docker run --network host [--gpus all] <worker image> ray start ...`` (Scaleway's
  GPU OS image ships Docker and the NVIDIA container toolkit);
- ``host``: ``<ray executable> start ...`` from a Ray installed on the image.
Either way: ``RAY_AUTH_MODE=token``, ``RAY_CLOUD_INSTANCE_ID=<launch id or server id>``,
``RAY_NODE_TYPE_NAME=<node type>``, ``ray start --address=<head private ip:port> --block`` with
the node type's ``--num-gpus``/``--num-cpus``/``--resources``. No ``package_upgrade`` (it can
break the NVIDIA driver of the GPU image).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from cluster.errors import ClusterError

UNIT_NAME = "inventiv-ray-node.service"
DEFAULT_TOKEN_PATH = "/etc/inventiv/ray_token"  # noqa: S105 (a path, not a secret)
CONTAINER_TOKEN_PATH = "/run/secrets/ray_token"  # noqa: S105 (a path)

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                      r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_RESOURCE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}$")
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")
_ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")
_PATH_RE = re.compile(r"^/[A-Za-z0-9._/-]{1,200}$")
_RESERVED_ENV = frozenset({"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                           "RAY_CLOUD_INSTANCE_ID", "RAY_NODE_TYPE_NAME"})


class BootstrapError(ClusterError, ValueError):
    """The node's bootstrap parameters are invalid (nothing is rendered)."""


@dataclass(frozen=True)
class NodeBootstrap:
    """Everything a worker VM needs to join the cluster."""

    head_address: str  # "<head private ip or name>:<port>"
    cloud_instance_id: str  # what the node provider reports for this VM (launch id by default)
    node_type: str
    ray_token: str
    num_gpus: int | None = None
    num_cpus: int | None = None
    resources: Mapping[str, float] = field(default_factory=dict)
    worker_image: str | None = None  # docker mode when set, host mode otherwise
    ray_executable: str = "/opt/inventiv/venv/bin/ray"
    token_path: str = DEFAULT_TOKEN_PATH
    env: Mapping[str, str] = field(default_factory=dict)
    ssh_authorized_keys: Sequence[str] = ()
    shm_size_gb: int = 8

    def validate(self) -> None:
        """Raise :class:`BootstrapError` on anything that should not reach a VM."""
        host, sep, port = self.head_address.rpartition(":")
        if not sep or not _HOST_RE.match(host) or not port.isdigit() or \
                not 0 < int(port) < 65536:
            raise BootstrapError(f"head_address must be host:port, got {self.head_address!r}")
        for label, value in (("cloud_instance_id", self.cloud_instance_id),
                             ("node_type", self.node_type)):
            if not _ID_RE.match(value):
                raise BootstrapError(f"{label} has unsupported characters: {value!r}")
        if not self.ray_token or any(c in self.ray_token for c in "\r\n\0") or \
                len(self.ray_token) > 4096:
            raise BootstrapError("ray_token must be a non-empty single line")
        for label, count in (("num_gpus", self.num_gpus), ("num_cpus", self.num_cpus)):
            if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                      or count < 0):
                raise BootstrapError(f"{label} must be a non-negative integer")
        for name, amount in self.resources.items():
            if not _RESOURCE_RE.match(name) or name in ("CPU", "GPU", "memory"):
                raise BootstrapError(f"invalid custom resource name {name!r}")
            if isinstance(amount, bool) or not isinstance(amount, int | float) or \
                    not math.isfinite(amount) or amount < 0:
                raise BootstrapError(f"resource {name!r} needs a non-negative number")
        if self.worker_image is not None and not _IMAGE_RE.match(self.worker_image):
            raise BootstrapError(f"invalid worker image {self.worker_image!r}")
        for label, path in (("ray_executable", self.ray_executable),
                            ("token_path", self.token_path)):
            if not _PATH_RE.match(path) or ".." in path:
                raise BootstrapError(f"{label} must be an absolute path, got {path!r}")
        for key, value in self.env.items():
            if not _ENV_NAME_RE.match(key) or key in _RESERVED_ENV:
                raise BootstrapError(f"env name {key!r} is invalid or reserved")
            if any(c in str(value) for c in "\r\n\0"):
                raise BootstrapError(f"env {key} must be a single line")
        for key in self.ssh_authorized_keys:
            if any(c in key for c in "\r\n\0"):
                raise BootstrapError("ssh keys must be single lines")
        if self.shm_size_gb < 1:
            raise BootstrapError("shm_size_gb must be positive")

    def ray_start_args(self, ray: str = "ray") -> list[str]:
        """``ray start`` argv (no shell): join the head, block, advertise the node's resources."""
        args = [ray, "start", f"--address={self.head_address}", "--block",
                "--disable-usage-stats"]
        if self.num_cpus is not None:
            args.append(f"--num-cpus={self.num_cpus}")
        if self.num_gpus is not None:
            args.append(f"--num-gpus={self.num_gpus}")
        if self.resources:
            args.append("--resources=" + json.dumps(dict(sorted(self.resources.items())),
                                                    separators=(",", ":")))
        return args

    def node_env(self, token_path: str) -> dict[str, str]:
        """The node's environment (the token travels by path, never by value)."""
        env = {str(k): str(v) for k, v in sorted(self.env.items())}
        env.update({
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": token_path,
            "RAY_CLOUD_INSTANCE_ID": self.cloud_instance_id,
            "RAY_NODE_TYPE_NAME": self.node_type,
        })
        return env


def systemd_quote(arg: str, *, exec_line: bool = True) -> str:
    """Quote one argument for a systemd ``ExecStart=`` (or, ``exec_line=False``,
    ``Environment=``) line: C-style quoting, ``%`` specifiers disabled, and on exec lines ``$``
    (variable expansion) disabled too."""
    if any(c in arg for c in "\r\n\0"):
        raise BootstrapError("systemd arguments must be single lines")
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if exec_line:
        escaped = escaped.replace("$", "$$")
    return f'"{escaped}"'


def _exec_line(argv: Sequence[str]) -> str:
    # The executable is a validated absolute path, left bare so systemd prefixes ("-") work.
    if not _PATH_RE.match(argv[0]):
        raise BootstrapError(f"executable must be an absolute path, got {argv[0]!r}")
    return " ".join([argv[0], *(systemd_quote(a) for a in argv[1:])])


def render_unit(node: NodeBootstrap) -> str:
    """The systemd unit that runs the Ray node (restarted if it exits)."""
    if node.worker_image:
        env = node.node_env(CONTAINER_TOKEN_PATH)
        argv = ["/usr/bin/docker", "run", "--rm", "--name", "inventiv-ray-node",
                "--network", "host", f"--shm-size={node.shm_size_gb}g",
                "--volume", f"{node.token_path}:{CONTAINER_TOKEN_PATH}:ro"]
        if node.num_gpus:
            argv += ["--gpus", "all"]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        argv.append(node.worker_image)
        argv += node.ray_start_args("ray")
        service_env: dict[str, str] = {}
        pre = [["/usr/bin/docker", "pull", node.worker_image],
               ["-/usr/bin/docker", "rm", "-f", "inventiv-ray-node"]]  # "-": may not exist
        after = "docker.service network-online.target"
    else:
        service_env = node.node_env(node.token_path)
        argv = node.ray_start_args(node.ray_executable)
        pre = []
        after = "network-online.target"
    lines = [
        "[Unit]",
        "Description=Inventiv Ray worker node",
        f"After={after}",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        "Restart=always",
        "RestartSec=5",
        "TimeoutStartSec=1800",
    ]
    lines += [f"Environment={systemd_quote(f'{k}={v}', exec_line=False)}"
              for k, v in service_env.items()]
    for cmd in pre:
        prefix = "-" if cmd[0].startswith("-") else ""
        lines.append(f"ExecStartPre={prefix}{_exec_line([cmd[0].lstrip('-'), *cmd[1:]])}")
    lines.append(f"ExecStart={_exec_line(argv)}")
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def build_cloud_config(node: NodeBootstrap) -> dict[str, Any]:
    """The cloud-config as a dict (validated first)."""
    node.validate()
    config: dict[str, Any] = {
        # Never upgrade packages on the GPU image: it can break the NVIDIA driver.
        "package_update": False,
        "package_upgrade": False,
        "write_files": [
            {"path": node.token_path, "content": node.ray_token, "owner": "root:root",
             "permissions": "0600"},
            {"path": f"/etc/systemd/system/{UNIT_NAME}", "content": render_unit(node),
             "owner": "root:root", "permissions": "0644"},
        ],
        "runcmd": [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", UNIT_NAME],
        ],
    }
    if node.ssh_authorized_keys:
        config["ssh_authorized_keys"] = list(node.ssh_authorized_keys)
    return config


class _CloudConfigDumper(yaml.SafeDumper):
    """Safe YAML with multi-line strings (the unit file) as readable literal blocks."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_CloudConfigDumper.add_representer(str, _str_representer)


def dump_cloud_config(config: dict[str, Any]) -> str:
    """Render a cloud-config mapping as ``#cloud-config`` YAML (the one dumper we use)."""
    body = yaml.dump(config, Dumper=_CloudConfigDumper, sort_keys=False,
                     default_flow_style=False, width=4096)
    return "#cloud-config\n" + body


def render_cloud_init(node: NodeBootstrap) -> str:
    """The ``#cloud-config`` user data for a worker VM."""
    return dump_cloud_config(build_cloud_config(node))


def describe(node: NodeBootstrap) -> dict[str, Any]:
    """A loggable summary (no token)."""
    return {"head_address": node.head_address, "cloud_instance_id": node.cloud_instance_id,
            "node_type": node.node_type, "num_gpus": node.num_gpus,
            "resources": dict(node.resources), "worker_image": node.worker_image}


__all__ = ["BootstrapError", "NodeBootstrap", "UNIT_NAME", "build_cloud_config", "describe",
           "render_cloud_init", "render_unit", "systemd_quote"]
