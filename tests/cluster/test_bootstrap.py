"""Cloud-init rendering: data dumped as YAML, token file 0600, systemd argv safely quoted."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from cluster.bootstrap import (
    UNIT_NAME,
    BootstrapError,
    NodeBootstrap,
    build_cloud_config,
    describe,
    render_cloud_init,
    systemd_quote,
)

TOKEN = "ray-cluster-token-0123456789abcdef"


def node(**kw: object) -> NodeBootstrap:
    base: dict[str, object] = {"head_address": "10.42.0.2:6379", "cloud_instance_id": "launch-7",
                               "node_type": "gpu-l4", "ray_token": TOKEN, "num_gpus": 1,
                               "resources": {"accelerator_type:L4": 1}}
    base.update(kw)
    return NodeBootstrap(**base)  # type: ignore[arg-type]


def systemd_split(line: str, exec_line: bool = False) -> list[str]:
    """Unquote an ExecStart/Environment value the way systemd does (for our quoting subset).

    On exec lines systemd expands ``$VAR``/``${VAR}`` and turns ``$$`` into ``$``: a lone ``$``
    left in an argument would be expanded, so it fails here.
    """
    if exec_line:
        for i, ch in enumerate(line):
            if ch == "$" and (line[i - 1:i] != "$" and line[i + 1:i + 2] != "$"):
                raise AssertionError(f"unescaped $ would be expanded by systemd: {line!r}")
        line = line.replace("$$", "$")
    out: list[str] = []
    i = 0
    while i < len(line):
        if line[i] == " ":
            i += 1
            continue
        buf = []
        if line[i] == '"':
            i += 1
            while line[i] != '"':
                if line[i] == "\\":
                    i += 1
                buf.append(line[i])
                i += 1
            i += 1
        else:
            while i < len(line) and line[i] != " ":
                buf.append(line[i])
                i += 1
        word = "".join(buf).replace("%%", "%")
        out.append(word)
    return out


def parsed(n: NodeBootstrap) -> dict:
    text = render_cloud_init(n)
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert data == build_cloud_config(n)
    return data


def unit_of(data: dict) -> str:
    return next(f["content"] for f in data["write_files"] if f["path"].endswith(UNIT_NAME))


def directive(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(key + "=")]


def test_token_file_is_root_only_and_holds_exactly_the_token() -> None:
    data = parsed(node())
    token_file = data["write_files"][0]
    assert token_file == {"path": "/etc/inventiv/ray_token", "content": TOKEN,
                          "owner": "root:root", "permissions": "0600"}
    # The token is referenced by path, never inlined elsewhere.
    assert TOKEN not in unit_of(data)
    assert TOKEN not in json.dumps(describe(node()))


def test_no_package_upgrade_and_runcmd_is_argv_lists() -> None:
    data = parsed(node())
    assert data["package_upgrade"] is False and data["package_update"] is False
    assert data["runcmd"] == [["systemctl", "daemon-reload"],
                              ["systemctl", "enable", "--now", UNIT_NAME]]


def test_host_mode_unit_sets_ray_env_and_joins_the_head() -> None:
    unit = unit_of(parsed(node(num_cpus=8)))
    env = dict(systemd_split(v)[0].split("=", 1) for v in directive(unit, "Environment"))
    assert env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/etc/inventiv/ray_token",
                   "RAY_CLOUD_INSTANCE_ID": "launch-7", "RAY_NODE_TYPE_NAME": "gpu-l4"}
    (exec_start,) = directive(unit, "ExecStart")
    argv = systemd_split(exec_start, exec_line=True)
    assert argv[:4] == ["/opt/inventiv/venv/bin/ray", "start", "--address=10.42.0.2:6379",
                        "--block"]
    assert "--num-gpus=1" in argv and "--num-cpus=8" in argv
    resources = next(a for a in argv if a.startswith("--resources="))
    assert json.loads(resources.split("=", 1)[1]) == {"accelerator_type:L4": 1}
    assert "Restart=always" in unit


def test_docker_mode_runs_the_worker_image_with_gpus() -> None:
    unit = unit_of(parsed(node(worker_image="rg.fr-par.scw.cloud/inventiv/worker:1.2")))
    (exec_start,) = directive(unit, "ExecStart")
    argv = systemd_split(exec_start, exec_line=True)
    assert argv[:2] == ["/usr/bin/docker", "run"]
    assert ["--network", "host"] == argv[argv.index("--network"):argv.index("--network") + 2]
    assert "--gpus" in argv
    envs = [argv[i + 1] for i, a in enumerate(argv) if a == "--env"]
    assert "RAY_AUTH_MODE=token" in envs and "RAY_CLOUD_INSTANCE_ID=launch-7" in envs
    assert "RAY_NODE_TYPE_NAME=gpu-l4" in envs
    assert "RAY_AUTH_TOKEN_PATH=/run/secrets/ray_token" in envs
    assert "/etc/inventiv/ray_token:/run/secrets/ray_token:ro" in argv
    image_at = argv.index("rg.fr-par.scw.cloud/inventiv/worker:1.2")
    assert argv[image_at + 1:image_at + 5] == ["ray", "start", "--address=10.42.0.2:6379",
                                               "--block"]
    assert directive(unit, "Environment") == []  # nothing leaks to the docker CLI's env
    cpu_unit = unit_of(parsed(node(worker_image="w:1", num_gpus=0, resources={})))
    assert "--gpus" not in cpu_unit


@pytest.mark.parametrize("tricky", ['a"b', "back\\slash", "50%", "$HOME", "sp ace", "';rm -rf /"])
def test_systemd_quoting_roundtrips(tricky: str) -> None:
    assert systemd_split(systemd_quote(tricky), exec_line=True) == [tricky]
    assert systemd_split(systemd_quote(tricky, exec_line=False)) == [tricky]


def test_dollar_in_an_exec_argument_is_not_expanded() -> None:
    unit = unit_of(parsed(node(worker_image="w:1", env={"PRICE": "$5 and ${HOME}"})))
    (exec_start,) = directive(unit, "ExecStart")
    assert "--env" in systemd_split(exec_start, exec_line=True)
    assert "PRICE=$5 and ${HOME}" in systemd_split(exec_start, exec_line=True)
    with pytest.raises(AssertionError):
        systemd_split('"a" "$HOME"', exec_line=True)  # the helper does catch a lone $


def test_extra_env_values_are_quoted_not_interpreted() -> None:
    unit = unit_of(parsed(node(env={"HF_HUB_OFFLINE": "1", "WEIRD": 'x"; echo $PATH %n'})))
    env = dict(systemd_split(v)[0].split("=", 1) for v in directive(unit, "Environment"))
    assert env["WEIRD"] == 'x"; echo $PATH %n' and env["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("bad", [
    {"node_type": "gpu; rm -rf /"},
    {"cloud_instance_id": "$(id)"},
    {"head_address": "10.0.0.2"},
    {"head_address": "10.0.0.2:99999"},
    {"head_address": "evil host:6379"},
    {"ray_token": ""},
    {"ray_token": "abc\nruncmd: [reboot]"},
    {"resources": {'a"b': 1}},
    {"resources": {"GPU": 1}},
    {"resources": {"x": -1}},
    {"resources": {"x": float("nan")}},
    {"num_gpus": -1},
    {"num_gpus": True},
    {"worker_image": "img; reboot"},
    {"env": {"RAY_AUTH_TOKEN": "leak"}},
    {"env": {"lower": "x"}},
    {"env": {"X": "two\nlines"}},
    {"token_path": "relative/path"},
    {"token_path": "/etc/../root/x"},
    {"ssh_authorized_keys": ["ssh-ed25519 AAA\nruncmd"]},
])
def test_invalid_input_is_refused(bad: dict) -> None:
    with pytest.raises(BootstrapError):
        render_cloud_init(node(**bad))


def test_yaml_injection_through_values_is_inert() -> None:
    """Values that look like YAML stay strings inside their own keys."""
    data = parsed(node(env={"NOTE": "key: value\t- [x]"}, ssh_authorized_keys=["ssh-ed25519 A: b"]))
    assert set(data) == {"package_update", "package_upgrade", "write_files", "runcmd",
                         "ssh_authorized_keys"}
    assert data["ssh_authorized_keys"] == ["ssh-ed25519 A: b"]


def test_rendering_logs_nothing_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("test").info("bootstrap %s", describe(node()))
    render_cloud_init(node())
    assert TOKEN not in caplog.text
