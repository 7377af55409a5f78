"""How the control API gets its reconciler: settings, the data plane's clouds, Ray's view."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, cast

import pytest
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from control_api.reconcile import (
    ReconcilerNotWired,
    no_ray,
    ray_gcs_nodes,
    reconciler_from_settings,
)
from control_api.settings import Settings
from core.clouds import Cloud
from core.ray_private import GcsProbe

CLUSTERS = {"c1": {"cloud": "scaleway", "zones": ["fr-par-2"]}}


def test_clusters_come_from_settings_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVENTIV_RECONCILE_CLUSTERS", '{"c1": {"cloud": "scaleway"}}')
    monkeypatch.setenv("INVENTIV_RECONCILE_RAY_GCS", "10.0.0.2:6379")
    settings = Settings()
    assert settings.reconcile_clusters == {"c1": {"cloud": "scaleway"}}
    assert settings.reconcile_ray_gcs == "10.0.0.2:6379"
    monkeypatch.setenv("INVENTIV_RECONCILE_CLUSTERS", " ")
    assert Settings().reconcile_clusters == {}
    monkeypatch.setenv("INVENTIV_RECONCILE_CLUSTERS", '["c1"]')
    with pytest.raises(ValidationError, match="must be a JSON object"):
        Settings()


def test_a_reconciler_needs_clusters_and_a_clouds_factory(db: sessionmaker[Session],
                                                          settings: Settings) -> None:
    built: list[Mapping[str, Any]] = []

    def clouds(config: Mapping[str, Any]) -> Mapping[str, Cloud]:
        built.append(config)
        return {}

    assert reconciler_from_settings(db, settings, clouds) is None  # no cluster configured
    configured = settings.model_copy(update={"reconcile_clusters": CLUSTERS})
    with pytest.raises(ReconcilerNotWired, match="no cloud adapters"):
        reconciler_from_settings(db, configured, None)
    rec = reconciler_from_settings(db, configured, clouds)
    assert rec is not None and rec.ray_nodes is no_ray and built == [CLUSTERS]


def test_the_ray_view_is_unknown_when_the_gcs_cannot_be_asked(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    answers: list[Any] = [{"l-1": "ray-1", "i-2": "ray-2"},
                          ConnectionError("redis://:s3cret@10.0.0.2")]

    def alive_instance_ids(self: GcsProbe) -> dict[str, str]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    monkeypatch.setattr(GcsProbe, "alive_instance_ids", alive_instance_ids)
    nodes = ray_gcs_nodes("10.0.0.2:6379")
    assert nodes("c1") == {"l-1", "i-2"}
    with caplog.at_level(logging.WARNING):
        assert nodes("c1") is None
    assert "ConnectionError" in caplog.text and "s3cret" not in caplog.text


class EmptyCloud:
    """A cloud with no VM (only what a pass over an empty cluster calls)."""

    name = "scaleway"

    def list_instances(self, cluster: str) -> list[Any]:
        return []


def test_the_app_runs_passes_as_a_periodic_job_when_clouds_are_wired(
        db: sessionmaker[Session], settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    from fastapi.testclient import TestClient

    from control_api.app import create_app
    from control_api.ports import DataPlane

    configured = settings.model_copy(update={"reconcile_clusters": CLUSTERS,
                                             "background_jobs": True})
    with caplog.at_level(logging.WARNING), TestClient(create_app(configured)) as client:
        assert getattr(client.app.state, "reconciler", None) is None  # type: ignore[attr-defined]
    assert "no cloud adapters wired" in caplog.text

    def clouds(config: Mapping[str, Any]) -> Mapping[str, Cloud]:
        return {name: cast(Cloud, EmptyCloud()) for name in config}

    plane = DataPlane(clouds=clouds)
    with TestClient(create_app(configured, plane=plane)) as client:
        rec = client.app.state.reconciler  # type: ignore[attr-defined]
        for _ in range(200):  # the first pass runs at start, in the job's thread
            if rec.last_report is not None:
                break
            time.sleep(0.05)
    assert rec.last_report is not None and [c.cluster for c in rec.last_report.clusters] == ["c1"]
