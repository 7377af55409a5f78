"""Wire format of ``POST /api/internal/weights/progress``: a node's weight download progress or
error for one deployment. Shared by the route (:mod:`control_api.routes.internal_weights`) and
the replica's client. The latest report per (deployment, node) wins; reports are idempotent."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from core.wire import _Request

WeightState = Literal["downloading", "verifying", "ready", "failed"]
MAX_BYTES = 2**62


class WeightError(_Request):
    """Why a download failed, and a message (never a secret). Codes: preferably the ones the
    deploy-time check answers (``source_not_found``, ``source_unauthorized``,
    ``source_gated``, ``source_unreachable``), so a user reads one vocabulary; and the
    download's own (``network``, ``hash_mismatch``, ``disk_full``, ...)."""

    code: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_.-]+$")]
    message: Annotated[str, Field(min_length=1, max_length=2000)]


class WeightProgress(_Request):
    deployment: Annotated[str, Field(min_length=1, max_length=64)]
    node_id: Annotated[str, Field(min_length=1, max_length=128)]
    source: Annotated[str, Field(min_length=1, max_length=1024)]
    revision: Annotated[str, Field(min_length=1, max_length=128)] | None
    state: WeightState
    bytes_done: Annotated[int, Field(ge=0, le=MAX_BYTES)]
    bytes_total: Annotated[int, Field(ge=0, le=MAX_BYTES)]
    error: WeightError | None

    @model_validator(mode="after")
    def _coherent(self) -> WeightProgress:
        if (self.state == "failed") != (self.error is not None):
            raise ValueError("error: required when state is failed, and only then")
        if self.bytes_total and self.bytes_done > self.bytes_total:
            raise ValueError("bytes_done: more than bytes_total")
        return self


class WeightProgressResult(_Request):
    accepted: bool = True
