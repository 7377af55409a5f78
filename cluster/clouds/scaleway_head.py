"""The Scaleway cloud's Ray head: a CPU VM booted by its cloud-init.

``up`` creates the head VM through the adapter (:mod:`cluster.clouds.scaleway`: CPU type, public
IP only for the HTTPS front door, security group, private network) with a cloud-init that writes
the token, the rendered Ray YAML, the SCW credentials for the autoscaler (0600 files) and a
systemd unit running ``python -m cluster.head exec-head``, which resolves the head's private
address and execs ``ray start --head`` bound to it (:func:`exec_head`: Ray ports stay on the
private network). The last ``runcmd`` step (``python -m cluster.head forget-user-data``)
deletes the VM's own user data through the API once the files are written, so the SCW
credentials do not stay readable from the API for the VM's life. ``down`` terminates every VM
tagged with the cluster, workers first.

Everything the head VM runs is rendered here (:func:`render_head_cloud_init`), in one place.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cluster.bootstrap import systemd_quote
from cluster.cluster_config import HEAD_NODE_TYPE, ClusterFile, dump_ray_config, render_ray_config
from cluster.head import (
    TOKEN_FILE,
    HeadError,
    HeadInfo,
    Progress,
    StatusReport,
    ensure_token,
    head_argv,
)
from core.clouds import LaunchRequest

SCW_TOKEN_PATH = "/etc/inventiv/ray_token"  # noqa: S105 (a path)
SCW_SERVICE_TOKEN_PATH = "/etc/inventiv/service_token"  # noqa: S105 (a path)
SCW_ENV_PATH = "/etc/inventiv/scw.env"
SCW_RAY_YAML = "/etc/inventiv/ray-autoscaler.yaml"
SCW_HEAD_JSON = "/etc/inventiv/head.json"
SCW_STATE_DIR = "/var/lib/inventiv/cluster"
HEAD_UNIT = "inventiv-ray-head.service"
# The head VM's entry point, as its unit runs it (kept stable: units already deployed run it).
EXEC_HEAD_MODULE = "cluster.head"
FORGET_USER_DATA = "forget-user-data"
USER_DATA_KEY = "cloud-init"
# The control plane beside the Ray head (when the cluster file names a database / a front door).
API_UNIT = "inventiv-control-api.service"
FRONT_DOOR_UNIT = "inventiv-front-door.service"
SCW_DATABASE_URL_PATH = "/etc/inventiv/database_url"
SCW_ADMIN_PASSWORD_PATH = "/etc/inventiv/admin_password"  # noqa: S105 (a path)
SCW_API_DATA_DIR = "/var/lib/inventiv/api"
SCW_CADDYFILE = "/etc/inventiv/Caddyfile"
SCW_CADDY_DIR = "/var/lib/inventiv/caddy"
SCW_TLS_CERT = "/etc/inventiv/tls/cert.pem"
SCW_TLS_KEY = "/etc/inventiv/tls/key.pem"
API_PORT = 8080
SERVE_PORT = 8000
ADMIN_PASSWORD_FILE = "admin_password"  # noqa: S105 (a file name in the state dir)
SCW_ENV_KEYS = ("SCW_ACCESS_KEY", "SCW_SECRET_KEY", "SCW_DEFAULT_PROJECT_ID",
                "SCW_DEFAULT_ORGANIZATION_ID", "SCW_API_URL")


@dataclass
class ScalewayDownReport:
    """What ``down`` terminated."""

    vms_terminated: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ScalewayHead:
    """The Scaleway head of one cluster file, behind :class:`cluster.head.Head`.

    ``cloud`` is the adapter to use (default: one configured from the cluster file, built on
    first use so that nothing talks to Scaleway before a command needs it).
    """

    def __init__(self, cluster: ClusterFile, *, cloud: Any | None = None) -> None:
        self.cluster = cluster
        self._cloud = cloud

    @property
    def cloud(self) -> Any:
        if self._cloud is None:
            self._cloud = scaleway_cloud_for(self.cluster)
        return self._cloud

    def up(self, *, state_dir: Path | None = None, update_interval_s: int | None = None,
           on_progress: Progress | None = None) -> HeadInfo:
        # update_interval_s is not used: the VM's unit takes the cluster file's interval.
        # Against the booting fake, the head reaches the API where the fake says VMs do.
        return up_scaleway(self.cluster, cloud=self.cloud, state_dir=state_dir,
                           on_progress=on_progress,
                           head_api_url=os.environ.get("INVENTIV_BOX_API_URL") or None)

    def down(self, *, state_dir: Path | None = None,
             on_progress: Progress | None = None) -> ScalewayDownReport:
        return ScalewayDownReport(down_scaleway(self.cluster, cloud=self.cloud,
                                                on_progress=on_progress))

    def status(self, *, state_dir: Path | None = None) -> StatusReport:
        return status_scaleway(self.cluster, cloud=self.cloud, state_dir=state_dir)


def scaleway_head_address(cluster: ClusterFile) -> str:
    """``host:port`` workers join: explicit, or ``<cluster>-head.<private network>.internal``."""
    if cluster.head.address:
        return cluster.head.address
    assert cluster.scaleway is not None and cluster.scaleway.private_network_name
    return f"{cluster.cluster_name}-head.{cluster.scaleway.private_network_name}.internal:" \
           f"{cluster.head.port or 6379}"


@dataclass(frozen=True)
class HeadControlPlane:
    """The secrets the head's control plane needs on its first boot (each lands in a 0600
    file; the user data carrying them is deleted by the head once booted)."""

    database_url: str | None = None  # with its password
    admin_password: str | None = None
    tls_cert_pem: str | None = None  # own certificate (the box's); None: ACME
    tls_key_pem: str | None = None

    def __repr__(self) -> str:  # never a secret in a traceback or a log line
        return (f"HeadControlPlane(database={'set' if self.database_url else None}, "
                f"own_certificate={self.tls_cert_pem is not None})")


def _unit(description: str, exec_argv: list[str], env: Mapping[str, str], *,
          environment_file: str | None = None, restart_sec: int = 5) -> str:
    """A systemd service: ``Restart=always``, every value quoted for systemd."""
    exec_start = " ".join([exec_argv[0], *(systemd_quote(a) for a in exec_argv[1:])])
    return "\n".join([
        "[Unit]", f"Description={description}",
        "After=network-online.target", "Wants=network-online.target", "",
        "[Service]", "Type=simple", "Restart=always", f"RestartSec={restart_sec}",
        *([f"EnvironmentFile={environment_file}"] if environment_file else []),
        *(f"Environment={systemd_quote(f'{k}={v}', exec_line=False)}" for k, v in env.items()),
        f"ExecStart={exec_start}", "", "[Install]", "WantedBy=multi-user.target", ""])


def render_caddyfile(cluster: ClusterFile, *, upstream_host: str, own_certificate: bool) -> str:
    """The front door: TLS on 443 only, ``/v1/*`` to Serve, everything else (``/api/*``, the
    console, ``/healthz``/``/readyz``) to the control API. No admin endpoint, no :80 listener:
    with its own certificate, automatic HTTPS is off; with ACME, the TLS-ALPN challenge on 443
    is the only one (the head's security group opens nothing else)."""
    door = cluster.front_door
    assert door is not None
    lines = ["{", "\tadmin off"]
    if own_certificate:
        lines.append("\tauto_https off")
    else:
        lines.append("\tauto_https disable_redirects")
        if door.acme_email:
            lines.append(f"\temail {door.acme_email}")
    lines += ["}", f"https://{door.domain}:443 {{"]
    if own_certificate:
        lines.append(f"\ttls {SCW_TLS_CERT} {SCW_TLS_KEY}")
    else:
        lines += ["\ttls {", "\t\tissuer acme {"]
        if door.acme_directory:
            lines.append(f"\t\t\tdir {door.acme_directory}")
        lines += ["\t\t\tdisable_http_challenge", "\t\t}", "\t}"]
    lines += ["\thandle /v1/* {", f"\t\treverse_proxy {upstream_host}:{SERVE_PORT}", "\t}",
              "\thandle {", f"\t\treverse_proxy {upstream_host}:{API_PORT}", "\t}", "}", ""]
    return "\n".join(lines)


def control_plane_files(cluster: ClusterFile, plane: HeadControlPlane, *, host: str
                        ) -> tuple[list[dict[str, Any]], list[str]]:
    """The files and units of the control API and the front door (only those the cluster file
    asks for): ``(write_files entries, unit names to start)``."""
    files: list[dict[str, Any]] = []
    units: list[str] = []

    def secret(path: str, content: str) -> None:
        files.append({"path": path, "content": content, "owner": "root:root",
                      "permissions": "0600"})

    if plane.database_url:
        secret(SCW_DATABASE_URL_PATH, plane.database_url)
        env = {"INVENTIV_DATABASE_URL_FILE": SCW_DATABASE_URL_PATH,
               "INVENTIV_DATA_DIR": SCW_API_DATA_DIR,
               "INVENTIV_RAY_AUTH_TOKEN_FILE": SCW_TOKEN_PATH,
               "INVENTIV_SERVE_HTTP_PORT": str(SERVE_PORT),
               "INVENTIV_SERVE_CONTROL_API_URL": f"http://{host}:{API_PORT}",
               # The front door is the only proxy whose X-Forwarded-For counts.
               "INVENTIV_TRUSTED_PROXIES": "127.0.0.1",
               "HOME": SCW_API_DATA_DIR}
        if plane.admin_password:
            secret(SCW_ADMIN_PASSWORD_PATH, plane.admin_password)
            env["INVENTIV_ADMIN_PASSWORD_FILE"] = SCW_ADMIN_PASSWORD_PATH
        if cluster.head.include_dashboard:
            env["INVENTIV_RAY_DASHBOARD_URL"] = \
                f"http://127.0.0.1:{cluster.head.dashboard_port or 8265}"
        # Bound to the private address (the head's private DNS name), never the public one.
        argv = [cluster.head.python_executable, "-m", "cli.main", "api", "serve", "--host",
                host, "--port", str(API_PORT)]
        files.append({"path": f"/etc/systemd/system/{API_UNIT}",
                      "content": _unit("Inventiv control API", argv, env, restart_sec=2),
                      "owner": "root:root", "permissions": "0644"})
        units.append(API_UNIT)
    if cluster.front_door is not None:
        own = plane.tls_cert_pem is not None and plane.tls_key_pem is not None
        if own:
            files.append({"path": SCW_TLS_CERT, "content": plane.tls_cert_pem,
                          "owner": "root:root", "permissions": "0644"})
            secret(SCW_TLS_KEY, plane.tls_key_pem or "")
        files.append({"path": SCW_CADDYFILE, "owner": "root:root", "permissions": "0644",
                      "content": render_caddyfile(cluster, upstream_host=host,
                                                  own_certificate=own)})
        env = {"HOME": SCW_CADDY_DIR, "XDG_DATA_HOME": SCW_CADDY_DIR,
               "XDG_CONFIG_HOME": SCW_CADDY_DIR}
        argv = [cluster.front_door.caddy_executable, "run", "--config", SCW_CADDYFILE,
                "--adapter", "caddyfile"]
        files.append({"path": f"/etc/systemd/system/{FRONT_DOOR_UNIT}",
                      "content": _unit("Inventiv TLS front door (Caddy)", argv, env,
                                       restart_sec=2),
                      "owner": "root:root", "permissions": "0644"})
        units.append(FRONT_DOOR_UNIT)
    return files, units


def render_head_cloud_init(cluster: ClusterFile, *, head_instance_id: str, ray_token: str,
                           scw_env: Mapping[str, str], service_token: str | None = None,
                           control_plane: HeadControlPlane | None = None) -> str:
    """The head VM's ``#cloud-config``: secrets in 0600 files, the head as a systemd unit."""
    from cluster.bootstrap import dump_cloud_config  # the same YAML dumper as workers

    address = scaleway_head_address(cluster)
    ray_config = render_ray_config(
        cluster, head_address=address, head_instance_id=head_instance_id,
        token_path=SCW_TOKEN_PATH, state_dir=SCW_STATE_DIR,
        service_token_file=SCW_SERVICE_TOKEN_PATH if service_token else None)
    host = address.rsplit(":", 1)[0]
    argv = head_argv(ray_executable=cluster.head.ray_executable, port=cluster.head.port or 6379,
                     dashboard_port=cluster.head.dashboard_port or 8265,
                     dashboard_host="127.0.0.1", include_dashboard=cluster.head.include_dashboard,
                     ray_client_server_port=cluster.head.ray_client_server_port or 10001,
                     dashboard_agent_listen_port=cluster.head.dashboard_agent_listen_port,
                     temp_dir=cluster.head.temp_dir, ray_config_path=SCW_RAY_YAML)
    scw = cluster.scaleway
    assert scw is not None
    zones = [cluster.head.zone] if cluster.head.zone else list(scw.zones[:1])
    exec_config = {"argv": argv, "resolve_host": host, "resolve_timeout_s": 300,
                   # What ``forget-user-data`` needs to find this VM and delete its user data.
                   "cluster_name": cluster.cluster_name, "launch_id": head_instance_id,
                   "zones": zones, "scw_env_file": SCW_ENV_PATH}
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": SCW_TOKEN_PATH,
           "RAY_CLOUD_INSTANCE_ID": head_instance_id, "RAY_NODE_TYPE_NAME": HEAD_NODE_TYPE,
           "RAY_enable_autoscaler_v2": "1",
           "AUTOSCALER_UPDATE_INTERVAL_S": str(cluster.autoscaler.update_interval_s),
           "RAY_USAGE_STATS_ENABLED": "0"}
    exec_start = " ".join([cluster.head.python_executable,
                           *(systemd_quote(a) for a in ("-m", EXEC_HEAD_MODULE, "exec-head",
                                                        SCW_HEAD_JSON))])
    unit = "\n".join([
        "[Unit]", "Description=Inventiv Ray head (autoscaler v2)",
        "After=network-online.target", "Wants=network-online.target", "",
        "[Service]", "Type=simple", "Restart=always", "RestartSec=5",
        f"EnvironmentFile={SCW_ENV_PATH}",
        *(f"Environment={systemd_quote(f'{k}={v}', exec_line=False)}" for k, v in env.items()),
        f"ExecStart={exec_start}", "", "[Install]", "WantedBy=multi-user.target", ""])
    env_file = "".join(f"{k}={v}\n" for k, v in scw_env.items() if k in SCW_ENV_KEYS and v)
    files: list[dict[str, Any]] = [
        {"path": SCW_TOKEN_PATH, "content": ray_token, "owner": "root:root",
         "permissions": "0600"},
        {"path": SCW_ENV_PATH, "content": env_file, "owner": "root:root",
         "permissions": "0600"},
        {"path": SCW_RAY_YAML, "content": dump_ray_config(ray_config), "owner": "root:root",
         "permissions": "0644"},
        {"path": SCW_HEAD_JSON, "content": json.dumps(exec_config, indent=1),
         "owner": "root:root", "permissions": "0644"},
        {"path": f"/etc/systemd/system/{HEAD_UNIT}", "content": unit, "owner": "root:root",
         "permissions": "0644"},
    ]
    if service_token:
        files.insert(1, {"path": SCW_SERVICE_TOKEN_PATH, "content": service_token,
                         "owner": "root:root", "permissions": "0600"})
    plane_files, plane_units = control_plane_files(cluster, control_plane or HeadControlPlane(),
                                                   host=host)
    files += plane_files
    dirs = [SCW_STATE_DIR] + ([SCW_API_DATA_DIR] if API_UNIT in plane_units else []) + \
        ([SCW_CADDY_DIR] if FRONT_DOOR_UNIT in plane_units else [])
    config = {"package_update": False, "package_upgrade": False, "write_files": files,
              "runcmd": [["mkdir", "-p", *dirs], ["systemctl", "daemon-reload"],
                         ["systemctl", "enable", "--now", HEAD_UNIT],
                         *(["systemctl", "enable", "--now", u] for u in plane_units),
                         # Last: the files are written, so the API copy of the secrets goes.
                         [cluster.head.python_executable, "-m", EXEC_HEAD_MODULE,
                          FORGET_USER_DATA, SCW_HEAD_JSON]]}
    return dump_cloud_config(config)


def scaleway_cloud_for(cluster: ClusterFile) -> Any:
    """The Scaleway adapter configured from the cluster file (credentials from ``SCW_*``)."""
    from cluster.clouds.scaleway import ScalewayCloud, ScalewayConfig

    scw = cluster.scaleway
    assert scw is not None
    return ScalewayCloud(ScalewayConfig(zones=tuple(scw.zones), project_id=scw.project_id,
                                        boot_timeout_s=scw.boot_timeout_s,
                                        capacity_block_s=scw.capacity_block_s))


def database_url_with_password(cluster: ClusterFile, environ: Mapping[str, str]) -> str | None:
    """The cluster file's database URL with the password from its variable (None: no control
    API on the head). :class:`HeadError` names the variable when it is unset."""
    spec = cluster.control_api
    if not spec.database_url:
        return None
    password = environ.get(spec.database_password_env, "")
    if not password:
        raise HeadError(f"control_api.database_url is set: export {spec.database_password_env} "
                        "with the database password")
    scheme, rest = spec.database_url.split("://", 1)
    netloc, slash, path = rest.partition("/")
    user, at, host = netloc.rpartition("@")
    if not at:
        raise HeadError("control_api.database_url must name its user (user@host)")
    return f"{scheme}://{user}:{quote(password, safe='')}@{host}{slash}{path}"


def head_control_plane(cluster: ClusterFile, state: Path,
                       environ: Mapping[str, str]) -> HeadControlPlane:
    """What the head's control plane gets on first boot: the database URL (password from the
    environment), the bootstrap admin's password (generated once into the state dir, 0600:
    the operator's only copy) and, with ``front_door.tls_cert_file``, its own certificate."""
    url = database_url_with_password(cluster, environ)
    admin = ensure_token(state / ADMIN_PASSWORD_FILE) if url else None
    cert = key = None
    door = cluster.front_door
    if door is not None and door.tls_cert_file and door.tls_key_file:
        try:
            cert = Path(door.tls_cert_file).expanduser().read_text()
            key = Path(door.tls_key_file).expanduser().read_text()
        except OSError as exc:
            raise HeadError(f"front_door: cannot read the certificate or key "
                            f"({exc.filename}: {exc.strerror})") from None
    return HeadControlPlane(database_url=url, admin_password=admin, tls_cert_pem=cert,
                            tls_key_pem=key)


def up_scaleway(cluster: ClusterFile, *, cloud: Any | None = None,
                state_dir: Path | None = None,
                on_progress: Progress | None = None, head_api_url: str | None = None,
                environ: Mapping[str, str] | None = None) -> HeadInfo:
    """Create the head VM (idempotent: an existing head VM of the cluster is returned).

    ``head_api_url``: the Scaleway API as the head VM reaches it, when not the one this process
    uses (the box: ``INVENTIV_BOX_API_URL``). ``environ``: where the database password is read
    (default: this process's environment)."""
    say = on_progress or (lambda _m: None)
    scw = cluster.scaleway
    assert scw is not None
    cloud = cloud or scaleway_cloud_for(cluster)
    state = (state_dir or cluster.resolved_state_dir()).expanduser().resolve()
    state.mkdir(parents=True, exist_ok=True)
    token_path = state / TOKEN_FILE
    token = ensure_token(token_path)
    address = scaleway_head_address(cluster)
    existing = [i for i in cloud.list_instances(cluster.cluster_name)
                if i.node_type == HEAD_NODE_TYPE]
    if existing:
        inst = existing[0]
        say(f"head VM already exists: {inst.provider_instance_id} ({inst.raw_state})")
        head_id = inst.launch_id or inst.provider_instance_id
    else:
        head_id = str(uuid.uuid4())
        client = cloud.client
        scw_env = {"SCW_ACCESS_KEY": client.access_key or "",
                   "SCW_SECRET_KEY": client.secret_key or "",
                   "SCW_DEFAULT_PROJECT_ID": scw.project_id or client.default_project_id or "",
                   "SCW_API_URL": head_api_url or client.api_url or ""}
        service_token = None
        if cluster.control_api.service_token_file:
            service_token = Path(cluster.control_api.service_token_file).expanduser() \
                .read_text().strip()
        plane = head_control_plane(cluster, state, os.environ if environ is None else environ)
        user_data = render_head_cloud_init(cluster, head_instance_id=head_id, ray_token=token,
                                           scw_env=scw_env, service_token=service_token,
                                           control_plane=plane)
        zones = (cluster.head.zone,) if cluster.head.zone else tuple(scw.zones[:1])
        request = LaunchRequest(
            launch_id=head_id, cluster_name=cluster.cluster_name, node_type=HEAD_NODE_TYPE,
            instance_type=cluster.head.instance_type or "", image=cluster.head.image or "",
            zones=zones, root_volume_gb=cluster.head.root_volume_gb, user_data=user_data,
            name=f"{cluster.cluster_name}-head", public_ip=True,
            private_network_id=scw.private_network_id,
            security_group_id=cluster.head.security_group_id)
        say(f"creating the head VM ({cluster.head.instance_type} in {zones[0]})")
        inst = cloud.create(request)
    info = HeadInfo(cluster_name=cluster.cluster_name, cloud="scaleway",
                    head_instance_id=head_id, gcs_address=address, dashboard_url=None,
                    token_path=str(token_path), ray_config_path=SCW_RAY_YAML,
                    state_dir=str(state), provider_instance_id=inst.provider_instance_id,
                    public_ip=inst.public_ip,
                    public_url=f"https://{cluster.front_door.domain}"
                    if cluster.front_door else None)
    info.save()
    say(f"head VM {inst.provider_instance_id} is {inst.raw_state}; public IP "
        f"{inst.public_ip or '-'}; workers join {address}")
    return info


def down_scaleway(cluster: ClusterFile, *, cloud: Any | None = None,
                  on_progress: Progress | None = None) -> int:
    """Terminate every VM tagged with the cluster (workers first, then the head)."""
    say = on_progress or (lambda _m: None)
    cloud = cloud or scaleway_cloud_for(cluster)
    instances = cloud.list_instances(cluster.cluster_name)
    instances.sort(key=lambda i: i.node_type == HEAD_NODE_TYPE)
    for inst in instances:
        say(f"terminating {inst.provider_instance_id} ({inst.node_type})")
        cloud.terminate(inst.provider_instance_id, inst.zone, launch_id=inst.launch_id)
    return len(instances)


def status_scaleway(cluster: ClusterFile, *, cloud: Any | None = None,
                    state_dir: Path | None = None) -> StatusReport:
    """The cluster's VMs (the Ray nodes are not asked: the GCS is on the private network)."""
    cloud = cloud or scaleway_cloud_for(cluster)
    instances = cloud.list_instances(cluster.cluster_name)
    head = HeadInfo.load((state_dir or cluster.resolved_state_dir()).expanduser())
    return StatusReport(head=head, instances=instances, ray_nodes=[], ray_error=None)


# ------------------------------------------------------------------------------ on the head VM


def exec_head(config_path: str, *, resolve: Callable[[str], str] = socket.gethostbyname,
              execv: Callable[[str, list[str]], Any] = os.execv,
              sleep: Callable[[float], None] = time.sleep) -> None:
    """On the head VM: resolve our private address, then exec ``ray start --head`` bound to it."""
    config = json.loads(Path(config_path).read_text())
    argv = list(config["argv"])
    host = config.get("resolve_host")
    if host:
        deadline = time.monotonic() + float(config.get("resolve_timeout_s", 300))
        while True:
            try:
                ip = resolve(host)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    raise
                sleep(2)
        argv.append(f"--node-ip-address={ip}")
    execv(argv[0], argv)


def read_env_file(path: str | Path) -> dict[str, str]:
    """``KEY=value`` lines of a systemd ``EnvironmentFile`` (only ``SCW_*`` keys are kept)."""
    out: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in SCW_ENV_KEYS:
            out[key.strip()] = value.strip()
    return out


def forget_own_user_data(config_path: str, *, cloud: Any | None = None,
                         attempts: int = 30, sleep: Callable[[float], None] = time.sleep,
                         say: Callable[[str], None] = lambda m: print(m, file=sys.stderr)
                         ) -> str:
    """On the head VM, once booted: delete this VM's ``cloud-init`` user data through the API,
    so the operator's credentials it carried do not stay readable there for the VM's life (the
    files cloud-init wrote stay, 0600). Finds the VM by its launch tag; checks the key is gone.
    Returns the VM id. Retries (the API or the network may not be ready yet)."""
    config = json.loads(Path(config_path).read_text())
    if cloud is None:
        from cluster.clouds.scaleway import ScalewayCloud, ScalewayConfig

        os.environ.update(read_env_file(config["scw_env_file"]))
        cloud = ScalewayCloud(ScalewayConfig(zones=tuple(config["zones"])))
    from core.clouds import CloudError

    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            inst = cloud.find_by_launch_id(config["cluster_name"], config["launch_id"],
                                           tuple(config["zones"]))
            if inst is None:
                raise RuntimeError(f"no VM tagged with launch {config['launch_id']}")
            cloud.delete_user_data(inst.provider_instance_id, inst.zone, USER_DATA_KEY)
            if USER_DATA_KEY in cloud.user_data_keys(inst.provider_instance_id, inst.zone):
                raise RuntimeError("user data still present after delete")
            say(f"user data of {inst.provider_instance_id} deleted")
            return str(inst.provider_instance_id)
        except (CloudError, RuntimeError) as exc:
            last = exc
            say(f"forget-user-data attempt {attempt}/{attempts} failed: "
                f"{type(exc).__name__}: {getattr(exc, 'code', '')}")
            if attempt < attempts:
                sleep(min(30.0, 2.0 * attempt))
    raise SystemExit(f"could not delete the head's user data: {type(last).__name__}")


def main(argv: list[str] | None = None) -> None:
    """``python -m cluster.head exec-head|forget-user-data <config.json>`` (the head VM's unit
    and the last step of its cloud-init)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("exec-head", FORGET_USER_DATA):
        sys.stderr.write(f"usage: python -m {EXEC_HEAD_MODULE} exec-head|{FORGET_USER_DATA} "
                         "<config.json>\n")
        raise SystemExit(2)
    if args[0] == FORGET_USER_DATA:
        forget_own_user_data(args[1])
        return
    exec_head(args[1])
