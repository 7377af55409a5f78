"""Settings of the control API, from ``INVENTIV_*`` environment variables.

Every secret can also be read from a file named by ``INVENTIV_<NAME>_FILE`` (Docker/K8s secrets).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from platformdirs import user_data_dir
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "INVENTIV_"
# Fields that may come from *_FILE variables.
FILE_FIELDS = ("admin_password", "jwt_secret", "service_token", "database_url", "metrics_token")


def default_data_dir() -> Path:
    """Where the laptop default keeps its SQLite database and generated secrets."""
    return Path(os.environ.get("INVENTIV_DATA_DIR") or user_data_dir("inventiv", "inventiv"))


class Settings(BaseSettings):
    """One settings object for the control API and its CLI."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None
    admin_password: SecretStr | None = None
    admin_username: str = "admin"
    admin_email: str = "admin@localhost"
    jwt_secret: SecretStr | None = None
    jwt_issuer: str = "inventiv"
    jwt_audience: str = "inventiv-api"
    jwt_ttl_seconds: int = Field(default=12 * 3600, gt=0)
    # Session cookie: Secure + __Host- prefix when served over HTTPS; plain for http://localhost.
    cookie_secure: bool = True
    # A service token accepted by the internal endpoints without a database row (bootstrap).
    service_token: SecretStr | None = None
    # Bearer token Prometheus sends to scrape /metrics (INVENTIV_METRICS_TOKEN or _FILE).
    metrics_token: SecretStr | None = None
    # Failed logins: per (account, client address) this many before an exponential backoff
    # (``login_backoff_base_seconds`` doubling per further failure, at most the window), so a
    # flood from one place cannot lock the account out everywhere; per address a hard limit.
    login_max_failures_per_account: int = 5
    login_max_failures_per_ip: int = 20
    login_window_seconds: int = 900
    login_backoff_base_seconds: float = Field(default=1.0, gt=0)
    # Proxies whose X-Forwarded-For is believed (IPs or CIDRs, JSON list or comma-separated:
    # INVENTIV_TRUSTED_PROXIES=10.0.0.5,10.1.0.0/16). Default: none, the peer address counts.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # The secret keying API-key checksums (shared with the ingress, which reads it from a file):
    # the value (INVENTIV_KEY_CHECKSUM_SECRET), or a file (INVENTIV_KEY_CHECKSUM_SECRET_FILE);
    # neither: generated once into the data dir (mode 0600).
    key_checksum_secret: SecretStr | None = None
    key_checksum_secret_file: Path | None = None
    argon2_time_cost: int = 2
    argon2_memory_cost: int = 19456
    argon2_parallelism: int = 1
    catalog_seed_file: Path | None = None
    run_migrations: bool = True
    # Periodic jobs in the API process (FinOps refresh); off in tests that drive them directly.
    background_jobs: bool = True
    finops_refresh_seconds: float = Field(default=60.0, gt=0)
    reconcile_interval_seconds: float = Field(default=60.0, gt=0)
    # Clusters to reconcile, as JSON: {"<cluster>": {"cloud": "scaleway", "zones": [...], ...}}
    # (the other keys are the adapter's settings; credentials come from the SDK's SCW_*
    # environment). Turned into cloud adapters by the data plane's factory (control_api.ports).
    reconcile_clusters: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict)
    # The Ray GCS (host:port) the reconciler asks for the live nodes; unset: Ray's view unknown.
    reconcile_ray_gcs: str | None = None
    # Largest JSON body the control API accepts (bytes).
    max_body_bytes: int = 4 * 1024 * 1024

    # Ray Serve, through its REST API on the Ray dashboard (control_api.serve_client). Unset
    # ``ray_dashboard_url``: no Serve configured, deployment writes stay "pending".
    ray_dashboard_url: str | None = None
    # Linked from the console's header when set (e.g. the compose profile's Grafana).
    grafana_url: str | None = None
    # The Ray auth token: a file path, re-read on every request so a rotated token is picked up
    # without a restart (hence a path field, not a secret read once like the FILE_FIELDS), or
    # the token itself (INVENTIV_RAY_AUTH_TOKEN) when no file is given.
    ray_auth_token_file: Path | None = None
    ray_auth_token: SecretStr | None = None
    serve_timeout_seconds: float = Field(default=10.0, gt=0)
    serve_app_name: str = Field(default="inventiv", min_length=1, max_length=64)
    serve_import_path: str = "serve_apps.builder:app_builder"
    serve_http_host: str = "0.0.0.0"  # noqa: S104 - Serve's own default; the ingress checks keys
    serve_http_port: int = Field(default=8000, gt=0, lt=65536)
    # Ingress options passed to the Serve app (serve_apps.builder.IngressOptions): how the
    # ingress reaches this API; the service token is passed as a FILE path, never its value.
    serve_control_api_url: str | None = None
    serve_service_token_file: str | None = None
    serve_spool_dir: str | None = None
    # Browser origins allowed to call the OpenAI endpoint (CORS), as JSON:
    # INVENTIV_SERVE_CORS_ALLOW_ORIGINS='["https://app.example.com"]'. Empty: no CORS headers.
    serve_cors_allow_origins: list[str] = Field(default_factory=list)
    # How often the sync job compares Serve with the desired deployments (and the budget guard).
    serve_sync_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _read_file_secrets(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name in FILE_FIELDS:
            path = os.environ.get(f"{ENV_PREFIX}{name.upper()}_FILE")
            if path and not data.get(name) and not os.environ.get(f"{ENV_PREFIX}{name.upper()}"):
                data[name] = Path(path).read_text().strip()
        return data

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = json.loads(text)
            else:
                value = [p.strip() for p in text.split(",") if p.strip()]
        if isinstance(value, list):
            for item in value:
                ipaddress.ip_network(str(item), strict=False)  # ValueError names a bad entry
        return value

    @field_validator("reconcile_clusters", mode="before")
    @classmethod
    def _parse_clusters(cls, value: Any) -> Any:
        # Parsed here rather than by pydantic-settings so that an empty variable means "none".
        if not isinstance(value, str):
            return value
        data = json.loads(value) if value.strip() else {}
        if not isinstance(data, dict):
            raise ValueError(f"{ENV_PREFIX}RECONCILE_CLUSTERS must be a JSON object of cluster ->"
                             " cloud settings")
        return data

    @property
    def cookie_name(self) -> str:
        return "__Host-inventiv_session" if self.cookie_secure else "inventiv_session"

    def resolved_database_url(self) -> str:
        """The configured database URL, or a SQLite file in the data directory."""
        if self.database_url:
            return normalize_database_url(self.database_url)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.data_dir / 'inventiv.db'}"

    def resolved_jwt_secret(self) -> str:
        """The JWT secret; generated once and kept (mode 0600) in the data dir when not set."""
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "jwt_secret"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
        return path.read_text().strip()


    def resolved_key_checksum_secret_file(self) -> Path:
        """The file holding the API-key checksum secret (generated in the data dir when neither
        the value nor a file is configured). The ingress is given this path."""
        if self.key_checksum_secret_file is not None:
            return self.key_checksum_secret_file
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "key_checksum_secret"
        if not path.exists():
            value = (self.key_checksum_secret.get_secret_value() if self.key_checksum_secret
                     is not None else secrets.token_urlsafe(48))
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another worker wrote it first
                return path
            with os.fdopen(fd, "w") as f:
                f.write(value)
        return path

    def resolved_key_checksum_secret(self) -> bytes:
        """The API-key checksum secret (bytes)."""
        if self.key_checksum_secret is not None:
            return self.key_checksum_secret.get_secret_value().encode()
        return _read_cached(self.resolved_key_checksum_secret_file())

    def uvicorn_proxy_options(self) -> dict[str, Any]:
        """uvicorn ``Config`` options matching ``trusted_proxies`` (uvicorn's own default
        believes X-Forwarded-For from 127.0.0.1, which lets any local client forge its
        address)."""
        return {"proxy_headers": bool(self.trusted_proxies),
                "forwarded_allow_ips": ",".join(self.trusted_proxies) or ""}

    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies)


_SECRET_FILES: dict[Path, bytes] = {}


def _read_cached(path: Path) -> bytes:
    # Read once per process: the checksum secret does not rotate without a restart.
    if path not in _SECRET_FILES:
        _SECRET_FILES[path] = path.read_bytes().strip()
    return _SECRET_FILES[path]


def normalize_database_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


@lru_cache
def get_settings() -> Settings:
    return Settings()
