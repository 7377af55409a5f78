"""A small typed client of Ray Serve's REST API on the Ray dashboard (token-authenticated).

``PUT /api/serve/applications/`` applies a declarative config: the applications it lists are
deployed or updated, every other application on the cluster is deleted. ``GET`` returns the
instance details (``applications: {name: {deployed_app_config, status, message, ...}}``).
``DELETE`` shuts Serve down. The functions at the end read that GET answer (live replicas,
whether a config is what Serve runs, the application's status), without I/O.

Errors are mapped to :class:`ServeUnreachable` (connection refused, timeout: retry later),
:class:`ServeAuthError` (401/403: the Ray auth token is missing or wrong) and
:class:`ServeRejected` (any other non-2xx: Serve refused the config). The Ray auth token is read
from its file on every request, so a rotated token is picked up without a restart; it is never
logged nor put in an error message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from control_api.errors import ControlPlaneError
from control_api.settings import Settings
from core.serve_names import serve_application

APPLICATIONS_PATH = "/api/serve/applications/"
DEFAULT_DASHBOARD_URL = "http://127.0.0.1:8265"
# The builder Serve imports on the cluster: ``app_builder(args) -> Application``.
DEFAULT_IMPORT_PATH = "serve_apps.builder:app_builder"


class ServeError(ControlPlaneError):
    """Base of the Serve REST client's errors; ``reason`` is short and secret-free."""

    kind = "error"

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class ServeUnreachable(ServeError):
    """The dashboard did not answer (down, wrong URL, timeout)."""

    kind = "unreachable"


class ServeAuthError(ServeError):
    """401/403: the Ray auth token is missing or wrong."""

    kind = "auth"


class ServeRejected(ServeError):
    """Serve answered with an error (invalid config, controller unavailable...)."""

    kind = "rejected"


@dataclass(frozen=True)
class ServeTarget:
    """What the control API deploys: one Serve application holding every deployment.

    ``ingress_options`` are the ``serve_apps.builder.IngressOptions`` fields other than the
    spec (control API URL, service token *file*, spool dir...)."""

    app_name: str = "inventiv"
    import_path: str = DEFAULT_IMPORT_PATH
    route_prefix: str = "/"
    http_host: str = "0.0.0.0"  # noqa: S104 - Serve's own default; the ingress checks keys
    http_port: int = 8000
    ingress_options: dict[str, Any] = field(default_factory=dict)
    runtime_env: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServeConfig:
    """Where the Serve REST API is and how to authenticate (from :class:`Settings`)."""

    dashboard_url: str
    token_file: str | None
    timeout_s: float
    target: ServeTarget
    token: str | None = field(default=None, repr=False)


def serve_config(settings: Settings) -> ServeConfig | None:
    """The Serve settings (``Settings.ray_dashboard_url`` and ``serve_*``); ``None`` when no
    dashboard URL is set (no Serve configured: writes stay "pending").

    Environment names (prefix ``INVENTIV_``): ``RAY_DASHBOARD_URL``, ``RAY_AUTH_TOKEN_FILE``
    (or ``RAY_AUTH_TOKEN``), ``SERVE_TIMEOUT_SECONDS`` (10), ``SERVE_APP_NAME`` (inventiv),
    ``SERVE_IMPORT_PATH``, ``SERVE_HTTP_HOST`` (0.0.0.0), ``SERVE_HTTP_PORT`` (8000), and the
    ingress options ``SERVE_CONTROL_API_URL``, ``SERVE_SERVICE_TOKEN_FILE``, ``SERVE_SPOOL_DIR``,
    ``SERVE_CORS_ALLOW_ORIGINS`` (a JSON list).
    """
    if not settings.ray_dashboard_url:
        return None
    options: dict[str, Any] = {
        key: value for key, value in (
            ("control_api_url", settings.serve_control_api_url),
            ("service_token_file", settings.serve_service_token_file),
            ("spool_dir", settings.serve_spool_dir),
        ) if value
    }
    if settings.key_checksum_secret_file is not None:
        # The ingress refuses forged keys without a lookup once it has the checksum secret;
        # only a file the operator names (it must exist on the ingress's nodes too).
        options["key_checksum_secret_file"] = str(settings.key_checksum_secret_file)
    if settings.serve_cors_allow_origins:
        options["cors_allow_origins"] = list(settings.serve_cors_allow_origins)
    target = ServeTarget(app_name=settings.serve_app_name,
                         import_path=settings.serve_import_path,
                         http_host=settings.serve_http_host,
                         http_port=settings.serve_http_port,
                         ingress_options=options)
    return ServeConfig(
        dashboard_url=settings.ray_dashboard_url,
        token_file=str(settings.ray_auth_token_file) if settings.ray_auth_token_file else None,
        timeout_s=settings.serve_timeout_seconds, target=target,
        token=settings.ray_auth_token.get_secret_value() if settings.ray_auth_token else None)


def serve_config_from_env() -> ServeConfig | None:
    """:func:`serve_config` of the settings read from the environment now."""
    return serve_config(Settings())


def _reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host unreachable"
    return type(exc).__name__


class ServeClient:
    """Synchronous client of the Serve REST API. ``token_file`` holds the Ray auth token."""

    def __init__(self, dashboard_url: str = DEFAULT_DASHBOARD_URL, *,
                 token_file: str | Path | None = None, token: str | None = None,
                 timeout_s: float = 10.0, target: ServeTarget | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.dashboard_url = dashboard_url.rstrip("/")
        self._token_file = Path(token_file) if token_file else None
        self._token = token
        self.target = target or ServeTarget()
        self._http = httpx.Client(base_url=self.dashboard_url, timeout=timeout_s,
                                  transport=transport,
                                  headers={"Accept": "application/json",
                                           "User-Agent": "inventiv-control-api"})

    @classmethod
    def from_config(cls, config: ServeConfig) -> ServeClient:
        return cls(config.dashboard_url, token_file=config.token_file, token=config.token,
                   timeout_s=config.timeout_s, target=config.target)

    def __enter__(self) -> ServeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:  # never show the token
        return f"ServeClient({self.dashboard_url!r})"

    def _auth_headers(self) -> dict[str, str]:
        token = self._token
        if self._token_file is not None:
            try:
                token = self._token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ServeAuthError(f"cannot read the Ray auth token file: "
                                     f"{exc.strerror or type(exc).__name__}") from None
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _request(self, method: str, *, json: Any = None) -> httpx.Response:
        headers = self._auth_headers()
        try:
            response = self._http.request(method, APPLICATIONS_PATH, json=json, headers=headers)
        except httpx.TransportError as exc:
            raise ServeUnreachable(f"{self.dashboard_url}: {_reason(exc)}") from None
        if response.status_code in (401, 403):
            raise ServeAuthError(f"the Ray dashboard refused the auth token "
                                 f"(HTTP {response.status_code})", status=response.status_code)
        if response.status_code >= 400:
            text = response.text.strip().replace("\n", " ")
            raise ServeRejected(f"Serve answered HTTP {response.status_code}: {text[:500]}",
                                status=response.status_code)
        return response

    def get_applications(self) -> dict[str, Any]:
        """Serve's instance details; ``applications`` maps app names to their details."""
        response = self._request("GET")
        try:
            data = response.json()
        except ValueError:
            raise ServeRejected("the dashboard did not answer JSON",
                                status=response.status_code) from None
        if not isinstance(data, dict):
            raise ServeRejected("unexpected answer from the dashboard")
        return data

    def put_applications(self, config: dict[str, Any]) -> None:
        """Apply a declarative config (the whole set of applications)."""
        self._request("PUT", json=config)

    def delete_applications(self) -> None:
        """Shut Serve down (every application)."""
        self._request("DELETE")


def client_from_settings(settings: Settings) -> ServeClient | None:
    """A client from the settings, or ``None`` when Serve is not configured."""
    config = serve_config(settings)
    return ServeClient.from_config(config) if config is not None else None


# ---------------------------------------------------------------- reading Serve's GET answer

# Replica states that count as existing capacity (everything but STOPPING).
LIVE_REPLICA_STATES = {"STARTING", "UPDATING", "RECOVERING", "RUNNING", "PENDING_MIGRATION"}

# Serve's application status -> ours, once Serve accepted the config.
SERVE_STATUS = {"RUNNING": "running", "DEPLOYING": "applied", "NOT_STARTED": "applied",
                "DEPLOY_FAILED": "unhealthy", "UNHEALTHY": "unhealthy"}


def live_replica_count(details: dict[str, Any] | None, app_name: str,
                       deployment: str) -> int | None:
    """Live replicas of a Serve deployment per Serve's status; None when Serve does not say."""
    app = serve_application(details, app_name)
    dep = ((app or {}).get("deployments") or {}).get(deployment)
    if not isinstance(dep, dict) or not isinstance(dep.get("replicas"), list):
        return None
    return sum(1 for r in dep["replicas"]
               if isinstance(r, dict) and r.get("state") in LIVE_REPLICA_STATES)


def _deployed_state(details: dict[str, Any], app_name: str) -> Any:
    app = serve_application(details, app_name)
    if app is None:
        return None
    cfg = app.get("deployed_app_config") or {}
    return {"import_path": cfg.get("import_path"), "args": cfg.get("args"),
            "deployments": {d.get("name"): d.get("autoscaling_config")
                            for d in cfg.get("deployments") or [] if isinstance(d, dict)}}


def runs_config(details: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether Serve runs exactly the applications of a declarative ``config``, with the same
    import paths, arguments and per-deployment autoscaling configs."""
    if set(details.get("applications") or {}) != {a["name"] for a in config["applications"]}:
        return False
    for app in config["applications"]:
        want = {"import_path": app["import_path"], "args": app["args"],
                "deployments": {d["name"]: d["autoscaling_config"] for d in app["deployments"]}}
        if _deployed_state(details, app["name"]) != want:
            return False
    return True


def app_status(details: dict[str, Any], app_name: str) -> tuple[str, str | None] | None:
    """Our status of an application per Serve (:data:`SERVE_STATUS`) and, when unhealthy,
    Serve's message (shortened); None when Serve does not run it or says nothing we map."""
    app = serve_application(details, app_name)
    if app is None:
        return None
    ours = SERVE_STATUS.get(str(app.get("status") or ""))
    if ours is None:
        return None
    return ours, _short(str(app.get("message") or "")) if ours == "unhealthy" else None


def _short(text: str, limit: int = 2000) -> str | None:
    """Serve's messages are often tracebacks: keep the first line and the end (the error)."""
    text = text.strip()
    if len(text) <= limit:
        return text or None
    first = text.splitlines()[0][:200]
    return f"{first} ... {text[-(limit - len(first) - 5):]}"
