"""The laptop cluster in one command: ``inventiv up`` / ``inventiv down`` (orchestration only).

``up`` starts, in order, and returns once everything serves:

1. the control API (``inventiv api serve``) as a detached process group, on SQLite in the state
   dir (or ``INVENTIV_DATABASE_URL``), with a generated service token (0600 file) and the Serve
   settings (``INVENTIV_RAY_DASHBOARD_URL``, ``INVENTIV_RAY_AUTH_TOKEN_FILE``,
   ``INVENTIV_SERVE_*``), so it applies deployments to Serve itself;
2. a Ray head with token auth and the ``local`` cloud autoscaler
   (:func:`cluster.clouds.local_head.up_local`),
   whose node provider reports every node's lifecycle to that control API (FinOps sees the nodes);
3. the deployment files, stored THROUGH the control API (the same call as ``inventiv deploy -f``),
   which PUTs them to Serve's REST API; ``up`` waits until the Serve application is RUNNING and
   the OpenAI endpoint answers ``/v1/models`` with the key;
4. an API key of org ``default`` (kept 0600 in the state dir and reused), and the CLI logged in
   as the bootstrap admin (the credentials file ``inventiv login`` writes).

Everything lives under one state dir (default ``~/.inventiv/laptop``, mode 0700)::

    laptop.json          ports, URLs, the control API's pid (what ``down`` stops)
    control-api.log      the control API's output (the admin password is printed there once)
    service_token        the data plane's bootstrap service token (0600)
    api_key.json         the printed API key (0600)
    data/                INVENTIV_DATA_DIR: inventiv.db, jwt_secret, admin_password (0600)
    cluster.yaml         the effective cluster file (ports and control API filled in)
    cluster/             the cluster's state: ray_token, node table, node logs (nodes/*.log)
    serve-spool/         the ingress's usage spool

Every process ``up`` starts carries a marker in its environment (``INVENTIV_LAPTOP_STATE_DIR``
for the control API; the local cloud's marker for Ray), so ``down`` finds and stops them even
after a crash, and never touches another cluster (no ``ray stop``). Processes are looked at
through :mod:`core.procs` (psutil), so ``down`` and ``status`` work where ``/proc`` does not exist
(macOS).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

import configs
from core import procs

DEFAULT_STATE_DIR = Path("~/.inventiv/laptop")
DEFAULT_CLUSTER_FILE = configs.path("clusters", "local.yaml")
DEFAULT_DEPLOYMENTS_FILE = configs.path("deployments", "local.yaml")
MARKER_ENV = "INVENTIV_LAPTOP_STATE_DIR"
STATE_FILE = "laptop.json"
API_LOG = "control-api.log"
SERVICE_TOKEN_FILE = "service_token"  # noqa: S105 (a file name)
API_KEY_FILE = "api_key.json"
CLUSTER_FILE = "cluster.yaml"
CLUSTER_DIR = "cluster"
DATA_DIR = "data"
SPOOL_DIR = "serve-spool"
APP_NAME = "inventiv"
ADMIN_USERNAME = "admin"
KEY_NAME = "laptop"

Say = Callable[[str], None]


class LaptopError(RuntimeError):
    """``up``/``down`` cannot proceed; ``code`` is stable, the message says what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ------------------------------------------------------------------------------ data


@dataclass
class UpOptions:
    """What ``inventiv up`` was asked for."""

    state_dir: Path = DEFAULT_STATE_DIR
    host: str = "127.0.0.1"
    api_port: int = 8080
    serve_port: int = 8000
    dashboard_port: int = 8265
    cluster_file: Path = DEFAULT_CLUSTER_FILE
    deployment_files: Sequence[Path] = (DEFAULT_DEPLOYMENTS_FILE,)
    org: str = "default"
    timeout_s: float = 900.0
    update_interval_s: int | None = None


@dataclass
class LaptopState:
    """``laptop.json``: what is running, on which ports (written by ``up``, read by ``down``)."""

    host: str
    api_port: int
    serve_port: int
    dashboard_port: int
    cluster_name: str
    api_pid: int | None = None
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def openai_base_url(self) -> str:
        return f"http://{self.host}:{self.serve_port}/v1"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.host}:{self.dashboard_port}"

    def save(self, state_dir: Path) -> None:
        _write_private(state_dir / STATE_FILE, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, state_dir: Path) -> LaptopState | None:
        try:
            data = json.loads((state_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class UpResult:
    """What ``up`` prints: the endpoints, the key, where things are."""

    openai_base_url: str
    openai_api_key: str = field(repr=False)
    api_url: str
    docs_url: str
    dashboard_url: str
    state_dir: str
    api_key_file: str
    admin_username: str
    admin_password_file: str | None
    ray_token_file: str
    control_api_log: str
    node_logs: str
    models: list[str]
    reused: bool

    def env(self) -> dict[str, str]:
        """The variables a shell (or the ``openai`` client) needs."""
        return {"OPENAI_BASE_URL": self.openai_base_url, "OPENAI_API_KEY": self.openai_api_key,
                "INVENTIV_API_URL": self.api_url}


@dataclass
class DownResult:
    """What ``down`` stopped."""

    state_dir: str
    control_api_stopped: bool = False
    head_stopped: bool = False
    nodes_stopped: int = 0
    stray_processes_killed: int = 0
    lifecycle_reported: int = 0
    purged: bool = False


# ------------------------------------------------------------------------------ small helpers


def resolve_state_dir(state_dir: Path | str) -> Path:
    return Path(os.path.expandvars(str(state_dir))).expanduser().resolve()


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` with mode 0600 from creation, replacing the file atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ensure_secret_file(path: Path) -> str:
    """A random secret kept in ``path`` (created once, 0600); refused if others can read it."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    if path.stat().st_mode & 0o077:
        raise LaptopError("insecure_file", f"{path} is readable by other users; chmod 600 it")
    return path.read_text().strip()


def port_in_use(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be bound now (someone listens, or it is reserved)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn and Ray bind: connections of a server just stopped (TIME_WAIT) do not
        # count, a listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(host: str, wanted: Mapping[str, int]) -> None:
    """Refuse clearly (which port, which option) when a port we would bind is taken."""
    taken = [(name, port) for name, port in wanted.items() if port_in_use(host, port)]
    if taken:
        parts = ", ".join(f"{name} port {port} (--{name}-port)" for name, port in taken)
        raise LaptopError("port_in_use", f"already in use on {host}: {parts}; stop what uses "
                                         "it or choose another port")


def find_marked_processes(state_dir: Path) -> list[int]:
    """Live processes whose environment carries this laptop state dir's marker."""
    return [p.pid for p in procs.find_marked(MARKER_ENV, str(state_dir))]


def stop_process_group(pid: int, grace_s: float = 10.0) -> bool:
    """SIGTERM the group led by ``pid``, SIGKILL what is left after ``grace_s``; ``True`` if
    it ran."""
    stopped = procs.stop_group(pid, grace_s)
    # Reap it when it is our child (tests start and stop in one process).
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    return stopped


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# ------------------------------------------------------------------------------ control API


def control_api_env(state: Path, st: LaptopState, base: Mapping[str, str] | None = None
                    ) -> dict[str, str]:
    """The control API's environment: SQLite in the state dir (unless
    ``INVENTIV_DATABASE_URL``), the service token file, and the Serve settings."""
    env = dict(base if base is not None else os.environ)
    # Ours, explicitly: an inherited token or auth mode must not change what this API trusts.
    for name in ("INVENTIV_SERVICE_TOKEN", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                 "RAY_AUTH_MODE", "RAY_ADDRESS"):
        env.pop(name, None)
    env.setdefault("INVENTIV_COOKIE_SECURE", "false")  # plain http://127.0.0.1
    env.update({
        MARKER_ENV: str(state),
        "INVENTIV_DATA_DIR": str(state / DATA_DIR),
        "INVENTIV_SERVICE_TOKEN_FILE": str(state / SERVICE_TOKEN_FILE),
        "INVENTIV_RAY_DASHBOARD_URL": st.dashboard_url,
        "INVENTIV_RAY_AUTH_TOKEN_FILE": str(state / CLUSTER_DIR / "ray_token"),
        "INVENTIV_SERVE_APP_NAME": APP_NAME,
        "INVENTIV_SERVE_HTTP_HOST": st.host,
        "INVENTIV_SERVE_HTTP_PORT": str(st.serve_port),
        "INVENTIV_SERVE_CONTROL_API_URL": st.api_url,
        "INVENTIV_SERVE_SERVICE_TOKEN_FILE": str(state / SERVICE_TOKEN_FILE),
        "INVENTIV_SERVE_SPOOL_DIR": str(state / SPOOL_DIR),
        # Re-apply the stored deployments soon after a restart of the cluster (`down`, `up`).
        "INVENTIV_SERVE_SYNC_SECONDS": "10",
        # Spans, usage rollups and budget state (the only writer of FinOps reads): a laptop's
        # walk-through shows its cost per model within seconds, not a minute.
        "INVENTIV_FINOPS_REFRESH_SECONDS": "10",
    })
    return env


def start_control_api(state: Path, st: LaptopState) -> int:
    """``inventiv api serve`` in its own session (log in the state dir); returns its pid."""
    from cluster.head import PACKAGES_DIR

    log_path = state / API_LOG
    argv = [sys.executable, "-m", "cli.main", "api", "serve", "--host", st.host,
            "--port", str(st.api_port)]
    with open(log_path, "ab") as log_file:
        # cwd: `-m` puts it first on sys.path, so the API imports the packages this CLI runs
        # (the checkout or the installed wheel), never a same-named folder of the user's cwd.
        proc = subprocess.Popen(argv, env=control_api_env(state, st), stdout=log_file,  # noqa: S603
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(PACKAGES_DIR), start_new_session=True, close_fds=True)
    return proc.pid


def api_healthy(url: str, timeout_s: float = 2.0) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def wait_control_api(url: str, pid: int, log_path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if api_healthy(url):
            return
        if not procs.alive(pid):
            raise LaptopError("control_api_failed", f"the control API exited; {log_path}:\n"
                                                    f"{_tail(log_path)}")
        time.sleep(0.3)
    raise LaptopError("control_api_failed", f"the control API did not answer {url}/readyz in "
                                            f"{timeout_s:.0f}s; log: {log_path}")


def admin_password(state: Path) -> str:
    """The bootstrap admin's password: configured in the environment, else the file
    ``inventiv api serve`` keeps in its data dir."""
    if os.environ.get("INVENTIV_ADMIN_PASSWORD"):
        return os.environ["INVENTIV_ADMIN_PASSWORD"]
    for candidate in (os.environ.get("INVENTIV_ADMIN_PASSWORD_FILE"),
                      str(state / DATA_DIR / "admin_password")):
        if candidate and Path(candidate).expanduser().is_file():
            return Path(candidate).expanduser().read_text().strip()
    raise LaptopError("admin_password_unknown",
                      "the database has users but no admin password file is in "
                      f"{state / DATA_DIR}: set INVENTIV_ADMIN_PASSWORD")


# ------------------------------------------------------------------------------ cluster


def effective_cluster(cluster_file: Path, state: Path, st: LaptopState) -> Any:
    """The cluster file with the laptop's state dir, dashboard port and control API filled in,
    saved as ``<state>/cluster.yaml`` (what ``down`` reads)."""
    from cluster.cluster_config import ClusterConfigError, load_cluster, parse_cluster

    try:
        data = load_cluster(cluster_file).model_dump(mode="json", exclude_none=True)
    except ClusterConfigError as exc:
        raise LaptopError("invalid_cluster_file", str(exc)) from None
    if data["cloud"] != "local":
        raise LaptopError("invalid_cluster_file",
                          f"{cluster_file}: `inventiv up` runs the local cloud only (use "
                          "`inventiv cluster up` for Scaleway)")
    data["state_dir"] = str(state / CLUSTER_DIR)
    data["head"]["dashboard_port"] = st.dashboard_port
    data["head"]["dashboard_host"] = st.host
    data["head"]["include_dashboard"] = True  # Serve's REST API lives on the dashboard
    data["control_api"] = {"url": st.api_url,
                           "service_token_file": str(state / SERVICE_TOKEN_FILE)}
    path = state / CLUSTER_FILE
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return parse_cluster(data, source=str(path))


def _load_effective_cluster(state: Path) -> Any | None:
    from cluster.cluster_config import ClusterConfigError, load_cluster

    path = state / CLUSTER_FILE
    if not path.exists():
        return None
    try:
        return load_cluster(path)
    except ClusterConfigError:
        return None


def worker_instances(cluster: Any, state: Path) -> list[Any]:
    """The cluster's live worker nodes (the local cloud's table)."""
    from cluster.clouds.local_head import local_cloud_for
    from cluster.cluster_config import HEAD_NODE_TYPE

    cloud = local_cloud_for(cluster, state / CLUSTER_DIR)
    return [i for i in cloud.list_instances(cluster.cluster_name)
            if i.node_type != HEAD_NODE_TYPE]


# ------------------------------------------------------------------------------ Serve


def serve_client(state: Path, st: LaptopState) -> Any:
    from control_api.serve_client import ServeClient

    return ServeClient(st.dashboard_url, token_file=state / CLUSTER_DIR / "ray_token",
                       timeout_s=10)


def wait_dashboard(client: Any, timeout_s: float) -> None:
    from control_api.serve_client import ServeError

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            client.get_applications()
            return
        except ServeError as exc:
            last = exc.reason
        time.sleep(0.5)
    raise LaptopError("dashboard_unreachable",
                      f"Serve's REST API on {client.dashboard_url} did not answer: {last}")


def serve_progress(details: dict[str, Any]) -> tuple[str | None, str]:
    """Serve's app status and a one-line summary of its deployments' replicas."""
    app = (details.get("applications") or {}).get(APP_NAME)
    if not isinstance(app, dict):
        return None, "Serve application not created yet"
    parts = []
    for name, dep in sorted((app.get("deployments") or {}).items()):
        replicas = dep.get("replicas") or []
        states: dict[str, int] = {}
        for r in replicas:
            states[r.get("state", "?")] = states.get(r.get("state", "?"), 0) + 1
        shown = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) or "0 replicas"
        parts.append(f"{name}: {dep.get('status', '?').lower()} ({shown})")
    return str(app.get("status")), "; ".join(parts) or str(app.get("status"))


def wait_serve_running(client: Any, cluster: Any, state: Path, timeout_s: float, say: Say,
                       *, poll_s: float = 2.0) -> None:
    """Poll Serve (and the node table) until the app is RUNNING; fail on DEPLOY_FAILED."""
    from control_api.serve_client import ServeError

    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    last_line = ""
    while True:
        try:
            details = client.get_applications()
            status, summary = serve_progress(details)
        except ServeError as exc:
            status, summary = None, f"Serve REST: {exc.reason}"
        nodes = worker_instances(cluster, state)
        line = f"{len(nodes)} node(s) launched; {summary}"
        if line != last_line:
            say(f"[{time.monotonic() - started:5.0f}s] {line}")
            last_line = line
        if status == "RUNNING":
            return
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            app = (details.get("applications") or {}).get(APP_NAME) or {}
            message = str(app.get("message") or "")[-1500:]
            raise LaptopError("serve_failed", f"the Serve application is {status}: {message}")
        if time.monotonic() >= deadline:
            raise LaptopError("serve_timeout",
                              f"the Serve application was not RUNNING after {timeout_s:.0f}s "
                              f"(last: {summary})")
        time.sleep(poll_s)


def wait_openai(base_url: str, key: str, timeout_s: float) -> list[str]:
    """Wait until ``GET /v1/models`` answers with the key (proxy up, key verified)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"{base_url}/models", headers={"Authorization": f"Bearer {key}"},
                             timeout=10)
            if resp.status_code == 200:
                return [m["id"] for m in resp.json().get("data", [])]
            last = f"HTTP {resp.status_code}: {resp.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(1)
    raise LaptopError("openai_endpoint_failed",
                      f"{base_url}/models did not answer 200 in {timeout_s:.0f}s ({last})")


# ------------------------------------------------------------------------------ API key, login


def ensure_api_key(client: Any, state: Path, org_name: str) -> str:
    """The laptop key of ``org_name``: the one in ``api_key.json`` while it is valid, else a
    new one (saved 0600)."""
    from control_api.client.api import ControlApiError

    path = state / API_KEY_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = None
    if isinstance(saved, dict) and saved.get("id") and saved.get("key"):
        try:
            key = client.get_api_key(saved["id"])
            if key.revoked_at is None and (key.expires_at is None
                                           or key.expires_at > datetime.now(UTC)):
                return str(saved["key"])
        except ControlApiError as exc:
            if exc.status != 404:
                raise
    org = client.find_org(org_name)
    created = client.create_api_key(KEY_NAME, org_id=org.id)
    _write_private(path, json.dumps({"id": str(created.id), "key": created.key,
                                     "org": org.name, "org_id": str(org.id),
                                     "name": created.name}, indent=1) + "\n")
    return str(created.key)


def login_cli(client: Any, url: str, password: str) -> None:
    """Log the CLI in as the admin, exactly as ``inventiv login`` does."""
    from cli.config import Credentials, save_credentials

    result = client.login(ADMIN_USERNAME, password)
    save_credentials(Credentials(url=url, token=result.access_token,
                                 username=result.user.username,
                                 expires_at=result.expires_at.isoformat()
                                 if result.expires_at else None))


def deploy_files(client: Any, files: Sequence[Path], say: Say) -> None:
    """``inventiv deploy -f`` for each file: stored by the control API, applied to Serve."""
    from control_api.client.api import ControlApiError

    for path in files:
        try:
            result = client.request("POST", "/api/deployments",
                                    json={"yaml": path.read_text(encoding="utf-8")})
        except OSError as exc:
            raise LaptopError("invalid_deployment", f"{path}: {exc.strerror or exc}") from None
        except ControlApiError as exc:
            detail = ""
            if isinstance(exc.details, list):
                detail = "; ".join(f"{d.get('field')} (line {d.get('line')}): {d.get('message')}"
                                   for d in exc.details)
            raise LaptopError(exc.code, f"{path}: {exc.message} {detail}".strip()) from None
        for item in result["items"]:
            say(f"deployment {item['name']}: {item['change']}, {item['status']}"
                + (f" ({item['status_message']})" if item.get("status_message") else ""))
            if item["status"] == "failed":
                raise LaptopError("deploy_failed", f"{item['name']}: {item['status_message']}")


# ------------------------------------------------------------------------------ up


def up(opts: UpOptions, say: Say | None = None) -> UpResult:
    """Start (or find running) the control API, the Ray head and the Serve app; return the
    endpoints and key once the OpenAI endpoint answers. Idempotent."""
    from cluster.clouds.local_head import up_local
    from cluster.errors import ClusterError
    from cluster.head import ensure_token
    from control_api.client.api import ControlApiClient, ControlApiError
    from core.clouds import CloudError
    from serve_apps.tiny_model import cached_tiny_model

    say = say or (lambda _m: None)
    state = resolve_state_dir(opts.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    for f in opts.deployment_files:
        if not Path(f).is_file():
            raise LaptopError("invalid_deployment", f"{f}: no such file")

    previous = LaptopState.load(state)
    api_running = previous is not None and procs.alive(previous.api_pid) and \
        api_healthy(previous.api_url)
    if api_running:
        assert previous is not None
        st = previous
        if (opts.api_port, opts.serve_port, opts.dashboard_port) != \
                (st.api_port, st.serve_port, st.dashboard_port):
            say("already running: keeping its ports (run `inventiv down` to change them)")
    else:
        st = LaptopState(host=opts.host, api_port=opts.api_port, serve_port=opts.serve_port,
                         dashboard_port=opts.dashboard_port, cluster_name="")
    cluster = effective_cluster(Path(opts.cluster_file), state, st)
    st.cluster_name = cluster.cluster_name
    head_running = bool(worker_or_head_running(cluster, state))
    wanted: dict[str, int] = {}
    if not api_running:
        wanted["api"] = st.api_port
    if not head_running:
        wanted.update({"serve": st.serve_port, "dashboard": st.dashboard_port})
    check_ports(st.host, wanted)

    ensure_secret_file(state / SERVICE_TOKEN_FILE)
    # The Ray token is created before the control API starts: the API reads it to call Serve.
    ensure_token(state / CLUSTER_DIR / "ray_token")
    (state / SPOOL_DIR).mkdir(exist_ok=True)

    if api_running:
        say(f"control API already running on {st.api_url} (pid {st.api_pid})")
    else:
        say(f"starting the control API on {st.api_url} (log: {state / API_LOG})")
        st.api_pid = start_control_api(state, st)
        st.save(state)
        wait_control_api(st.api_url, st.api_pid, state / API_LOG)
        say("control API ready")
    st.save(state)

    # The Serve app resolves `builtin:tiny-llama` to this cache: build it here, with progress,
    # rather than inside Serve's app builder.
    say("tiny model: built offline on the first run (10-25 s), then cached")
    say(f"tiny model: {cached_tiny_model()}")

    try:
        up_local(cluster, state_dir=state / CLUSTER_DIR,
                 update_interval_s=opts.update_interval_s, on_progress=say)
    except (ClusterError, CloudError, OSError) as exc:
        raise LaptopError("cluster_up_failed", f"{exc} (node logs: "
                                               f"{state / CLUSTER_DIR / 'nodes'})") from None

    serve = serve_client(state, st)
    try:
        wait_dashboard(serve, timeout_s=60)
        with ControlApiClient(st.api_url, timeout=60) as client:
            password = admin_password(state)
            try:
                client.login(ADMIN_USERNAME, password)
            except ControlApiError as exc:
                raise LaptopError("admin_login_failed",
                                  f"cannot log in as {ADMIN_USERNAME}: {exc.message} (set "
                                  "INVENTIV_ADMIN_PASSWORD if you changed the password)") from None
            deploy_files(client, list(opts.deployment_files), say)
            key = ensure_api_key(client, state, opts.org)
            login_cli(client, st.api_url, password)
        if not head_running:
            say("waiting for the Serve application (its replicas need autoscaled local nodes: "
                "2-4 minutes on 2 idle cores)")
        wait_serve_running(serve, cluster, state, opts.timeout_s, say)
    except LaptopError as exc:
        exc.message += (f"\nlogs: control API {state / API_LOG}; Ray nodes "
                        f"{state / CLUSTER_DIR / 'nodes'}; Ray session logs under the head's "
                        "temp dir (inventiv status)")
        raise
    finally:
        serve.close()
    models = wait_openai(st.openai_base_url, key, timeout_s=120)
    password_file = state / DATA_DIR / "admin_password"
    return UpResult(
        openai_base_url=st.openai_base_url, openai_api_key=key, api_url=st.api_url,
        docs_url=f"{st.api_url}/api/docs", dashboard_url=st.dashboard_url, state_dir=str(state),
        api_key_file=str(state / API_KEY_FILE), admin_username=ADMIN_USERNAME,
        admin_password_file=str(password_file) if password_file.exists() else None,
        ray_token_file=str(state / CLUSTER_DIR / "ray_token"),
        control_api_log=str(state / API_LOG), node_logs=str(state / CLUSTER_DIR / "nodes"),
        models=models, reused=api_running and head_running)


def worker_or_head_running(cluster: Any, state: Path) -> list[Any]:
    """The cluster's live instances (head included)."""
    from cluster.clouds.local_head import local_cloud_for

    if not (state / CLUSTER_DIR).exists():
        return []
    return local_cloud_for(cluster, state / CLUSTER_DIR).list_instances(cluster.cluster_name)


# ------------------------------------------------------------------------------ down


def _report_terminated(state: Path, st: LaptopState | None, cluster: Any,
                       instances: Sequence[Any]) -> int:
    """Tell the control API the nodes are gone (the autoscaler that would have is stopped
    first), so their cost intervals close; best effort."""
    if st is None or not instances or not api_healthy(st.api_url):
        return 0
    from control_api.client.internal import InternalClient

    try:
        token = (state / SERVICE_TOKEN_FILE).read_text().strip()
    except OSError:
        return 0
    now = datetime.now(UTC).isoformat()
    events = [{"event_id": f"{i.launch_id}:terminated", "launch_id": i.launch_id,
               "cluster_name": cluster.cluster_name, "provider": "local",
               "instance_type": i.instance_type, "zone": i.zone, "node_type": i.node_type,
               "provider_instance_id": i.provider_instance_id, "state": "terminated",
               "at": now, "cloud_exists": False, "reason": "inventiv down"}
              for i in instances if i.launch_id]
    try:
        with InternalClient(st.api_url, token, spool_dir=state / "down-spool",
                            max_retries=1) as client:
            sent = client.send_lifecycle_events(events)
        return sent.result.applied + sent.result.duplicates
    except Exception:  # noqa: BLE001 - reporting must never stop `down`
        return 0
    finally:
        shutil.rmtree(state / "down-spool", ignore_errors=True)


def down(state_dir: Path | str, *, purge: bool = False, say: Say | None = None) -> DownResult:
    """Stop the Ray cluster (head first, then every node) and the control API; keep the data
    (database, keys) unless ``purge``. Idempotent."""
    from cluster.clouds.local_head import down_local
    from cluster.errors import ClusterError
    from cluster.head import HeadInfo

    say = say or (lambda _m: None)
    state = resolve_state_dir(state_dir)
    result = DownResult(state_dir=str(state))
    if not state.exists():
        say(f"nothing to stop: {state} does not exist")
        return result
    st = LaptopState.load(state)
    cluster = _load_effective_cluster(state)
    if cluster is not None:
        head = HeadInfo.load(state / CLUSTER_DIR)
        nodes = worker_instances(cluster, state)
        try:
            report = down_local(cluster, state_dir=state / CLUSTER_DIR, on_progress=say)
        except ClusterError as exc:
            raise LaptopError("cluster_down_failed", str(exc)) from None
        result.head_stopped = report.head_stopped
        result.nodes_stopped = report.nodes_stopped
        result.stray_processes_killed += report.stray_groups_killed
        result.lifecycle_reported = _report_terminated(state, st, cluster, nodes)
        if head is not None and head.temp_dir and head.temp_dir.startswith("/tmp/ia-"):  # noqa: S108
            shutil.rmtree(head.temp_dir, ignore_errors=True)
    if st is not None and st.api_pid and procs.alive(st.api_pid):
        say(f"stopping the control API (pid {st.api_pid})")
        result.control_api_stopped = stop_process_group(st.api_pid)
    for pid in find_marked_processes(state):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            result.stray_processes_killed += 1
    if st is not None:
        st.api_pid = None
        st.save(state)
    if purge:
        shutil.rmtree(state, ignore_errors=True)
        result.purged = True
    return result


# ------------------------------------------------------------------------------ status


def status(state_dir: Path | str) -> dict[str, Any]:
    """What runs: the control API, the head, the nodes, Serve's application status."""
    from cluster.head import HeadInfo
    from control_api.serve_client import ServeError

    state = resolve_state_dir(state_dir)
    st = LaptopState.load(state)
    out: dict[str, Any] = {"state_dir": str(state), "running": False}
    if st is None:
        return out
    cluster = _load_effective_cluster(state)
    instances = worker_or_head_running(cluster, state) if cluster is not None else []
    head = HeadInfo.load(state / CLUSTER_DIR)
    api_up = procs.alive(st.api_pid) and api_healthy(st.api_url)
    out.update({
        "running": api_up or bool(instances),
        "control_api": {"url": st.api_url, "pid": st.api_pid, "healthy": api_up,
                        "log": str(state / API_LOG)},
        "openai_base_url": st.openai_base_url, "dashboard_url": st.dashboard_url,
        "head": {"gcs_address": head.gcs_address, "temp_dir": head.temp_dir}
        if head is not None else None,
        "nodes": [{"id": i.provider_instance_id, "node_type": i.node_type,
                   "instance_type": i.instance_type, "state": i.state.value}
                  for i in instances],
        "serve": None,
    })
    if instances:
        client = serve_client(state, st)
        try:
            status_, summary = serve_progress(client.get_applications())
            out["serve"] = {"status": status_, "summary": summary}
        except ServeError as exc:
            out["serve"] = {"status": None, "summary": exc.reason}
        finally:
            client.close()
    return out
