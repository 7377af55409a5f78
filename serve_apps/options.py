"""Runtime options of the ingress: how it reaches the control API, caches keys and admits
requests. Its own module so that the builder (which passes them to Serve) and the ingress (which
reads them on the replica) both depend on it instead of on each other."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class IngressOptions(BaseModel):
    """How the ingress reaches the control API and caches keys (not part of the YAML: it is
    runtime configuration of the platform, not of a model)."""

    model_config = ConfigDict(extra="forbid")

    control_api_url: str
    # A file holding the service token (never the token itself: bound arguments are pickled
    # into the Serve app and may be shown in its config).
    service_token_file: str
    spool_dir: str
    # A file holding the control API's API-key checksum secret: with it, forged keys are
    # refused without a lookup (``serve_apps.auth.KeyCache(checksum_secret=...)``).
    key_checksum_secret_file: str | None = None
    # Failed authentications per client address before a 429 (per ``key_failure_window_s``).
    key_failures_per_client: int = Field(default=20, ge=1)
    key_failure_window_s: float = Field(default=60.0, gt=0)
    key_ttl_s: float = Field(default=15.0, gt=0, le=30)
    key_stale_s: float = Field(default=900.0, ge=0)
    negative_ttl_s: float = Field(default=5.0, ge=0, le=30)
    verify_timeout_s: float = Field(default=2.0, gt=0)
    usage_flush_interval_s: float = Field(default=1.0, gt=0)
    app_name: str = "inventiv"
    num_replicas: int = Field(default=1, ge=1)
    max_ongoing_requests: int = Field(default=1000, ge=1)
    ingress_cpus: float = Field(default=0.1, gt=0)
    # Per-key RPM/TPM through a shared Ray actor (serve_apps.ratelimit).
    rate_limits: bool = True
    # Browser origins allowed to call the OpenAI endpoint (CORS); empty: no CORS headers.
    cors_allow_origins: list[str] = Field(default_factory=list)
