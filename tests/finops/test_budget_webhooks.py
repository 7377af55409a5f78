"""Budget definitions (422s naming the field), thresholds fired once per period, webhooks
(generic and Slack, HMAC-signed, retried, logged) against a real local HTTP server, and the
budgets that apply to a request."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from control_api.background import finops_refresh, httpx_sender
from core.models import ActionLog, Budget, BudgetScope, Role
from core.models_finops import BudgetThresholdEvent, BudgetWebhook
from finops.notify import (
    WebhookUrlError,
    applicable_budgets,
    deliver_pending,
    fire_thresholds,
    reached,
    validate_webhook_url,
)
from tests.conftest import Factory
from tests.finops.helpers import Seed

NOW = datetime(2025, 3, 11, 12, 0, tzinfo=UTC)


class Hook:
    """A local webhook receiver: answers the queued statuses (then 200), records requests."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                hook.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret-path"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook([503, 500])  # two failures, then success: retried with backoff
    yield h
    h.close()


@pytest.fixture
def world(client: TestClient, factory: Factory) -> dict[str, Any]:
    client.app.state.finops_clock = lambda: NOW  # type: ignore[attr-defined]
    org = factory.org("acme")
    with client.app.state.sessionmaker() as s, s.begin():  # type: ignore[attr-defined]
        seed = Seed(s)
        dep = seed.deployment("llama")
        inst = seed.instance("scaleway", "L4-1-24G", zone="fr-par-2", deployment_id=dep)
        seed.interval(inst, datetime(2025, 3, 1, tzinfo=UTC), None)  # 189 EUR to NOW
        key = seed.api_key(org)
        seed.usage(NOW - timedelta(hours=3), (300, 100), deployment="llama", api_key_id=key,
                   org_id=org)
    return {"org": org, "dep": dep, "key": key}


@pytest.mark.parametrize(("patch", "field"), [
    ({"monthly_eur": "-5"}, "monthly_eur"), ({"scope": "galaxy"}, "scope"),
    ({"currency": "USD"}, "currency"), ({"monthly_eur": "abc"}, "monthly_eur"),
    ({"period": "fortnight"}, "period")])
def test_malformed_budgets_are_422_naming_the_field(
        client: TestClient, admin_headers: dict[str, str], world: dict[str, Any],
        patch: dict[str, str], field: str) -> None:
    body = {"scope": "org", "target_id": str(world["org"]), "monthly_eur": "100", **patch}
    r = client.post("/api/finops/budgets", json=body, headers=admin_headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert field in r.json()["error"]["message"]


def test_budgets_on_org_key_and_deployment_fire_thresholds_once_to_webhooks(
        client: TestClient, admin_headers: dict[str, str], factory: Factory,
        world: dict[str, Any], hook: Hook) -> None:
    org, dep, key = world["org"], world["dep"], world["key"]
    admin = factory.user(org, Role.ADMIN)
    member = factory.user(org, Role.MEMBER)
    # Webhook URL rules.
    for bad in ("http://example.com/x", "ftp://127.0.0.1/x", "https://u:p@example.com/x",
                "not a url"):
        r = client.post("/api/finops/webhooks", json={"url": bad, "org_id": str(org)},
                        headers=admin.headers)
        assert r.status_code == 422 and "url" in r.json()["error"]["message"], bad
    assert client.post("/api/finops/webhooks", json={"url": hook.url, "org_id": str(org)},
                       headers=member.headers).status_code == 403
    assert client.post("/api/finops/webhooks", json={"url": hook.url},
                       headers=admin.headers).status_code == 403  # platform-wide: admins
    r = client.post("/api/finops/webhooks", json={"url": hook.url, "org_id": str(org)},
                    headers=admin.headers)
    assert r.status_code == 201, r.text
    generic_secret = r.json()["secret"]
    assert generic_secret and "secret-path" not in r.json()["url"]
    slack_secret = "s" * 32
    r = client.post("/api/finops/webhooks", headers=admin_headers, json={
        "url": hook.url, "kind": "slack", "secret": slack_secret})
    assert r.status_code == 201 and r.json()["secret"] is None
    listed = client.get("/api/finops/webhooks", headers=member.headers).json()["items"]
    assert len(listed) == 1 and all(i["secret"] is None for i in listed)

    # 189 EUR spent: org budget 250 (75 %: 50 fired), key 100 (100 %), deployment 1000 (18 %).
    for scope, target, eur in (("org", org, "250"), ("api_key", key, "100"),
                               ("deployment", dep, "1000")):
        r = client.post("/api/finops/budgets", headers=admin_headers, json={
            "scope": scope, "target_id": str(target), "monthly_eur": eur})
        assert r.status_code == 201, r.text
    sm: sessionmaker[Session] = client.app.state.sessionmaker  # type: ignore[attr-defined]
    with sm() as s, s.begin():
        finops_refresh(s, NOW, notify=False)
    with sm() as s:
        fired = sorted((BudgetScope(s.get(Budget, e.budget_id).scope).value,  # type: ignore[union-attr]
                        e.threshold_pct) for e in s.scalars(select(BudgetThresholdEvent)))
    assert fired == [("api_key", 50), ("api_key", 80), ("api_key", 100), ("org", 50)]
    with sm() as s, s.begin():  # again: nothing new this period
        assert fire_thresholds(s, NOW) == []

    sleeps: list[float] = []
    out = deliver_pending(sm, NOW, httpx_sender(5), backoff_s=0.25, sleep=sleeps.append)
    # 4 events x 2 webhooks; the first delivery failed twice and was retried (backoff 2x).
    assert out == {"sent": 8, "failed": 0}
    assert sleeps[:2] == [0.25, 0.5]
    assert len(hook.requests) == 10
    for headers, body in hook.requests:
        secret = slack_secret if b'"text"' in body else generic_secret
        mac = hmac.new(secret.encode(), headers["x-inventiv-timestamp"].encode() + b"." + body,
                       hashlib.sha256).hexdigest()
        assert headers["x-inventiv-signature"] == f"sha256={mac}"
    bodies = [json.loads(b) for _, b in hook.requests]
    assert any("text" in b and "100 %" in b["text"] for b in bodies)
    assert {b["threshold_pct"] for b in bodies if "type" in b} == {50, 80, 100}
    with sm() as s:
        logs = list(s.scalars(select(ActionLog).where(ActionLog.type == "budget.webhook")))
        assert len(logs) == 8 and all(a.status == "success" for a in logs)
        details = [a.details or {} for a in logs]
        assert all("secret" not in json.dumps(d) and d["host"] == "127.0.0.1" for d in details)
        assert max(d["attempts"] for d in details) == 3
    # Delivered: not sent again.
    assert deliver_pending(sm, NOW, httpx_sender(5), sleep=sleeps.append) == {
        "sent": 0, "failed": 0}
    # Next month: the thresholds can fire again (spend is that month's).
    with sm() as s, s.begin():
        for b in s.scalars(select(Budget)):
            b.evaluated_at = datetime(2025, 4, 2, tzinfo=UTC)
        assert len(fire_thresholds(s, datetime(2025, 4, 2, tzinfo=UTC))) == 4


def test_failing_webhook_is_logged_and_never_raises(db: sessionmaker[Session]) -> None:
    down = Hook([500] * 10)
    try:
        with db() as s, s.begin():
            seed = Seed(s)
            org = seed.org()
            b = Budget(scope=BudgetScope.ORG, target_id=org, org_id=org,
                       monthly_eur=Decimal("10"), spent_eur=Decimal("10"), evaluated_at=NOW)
            s.add(b)
            s.add(BudgetWebhook(org_id=org, url=down.url, kind="generic", secret="x" * 20))
            s.flush()
            assert len(fire_thresholds(s, NOW)) == 3
        out = deliver_pending(db, NOW, httpx_sender(5), attempts=2, backoff_s=0,
                              sleep=lambda _: None)
        assert out == {"sent": 0, "failed": 3}
        # Nobody listening at all (transport error): logged too, never raised.
        with db() as s, s.begin():
            for ev in s.scalars(select(BudgetThresholdEvent)):
                ev.delivered = False
            with socket.socket() as sock:  # a free port nobody listens on once closed
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            for h in s.scalars(select(BudgetWebhook)):
                h.url = f"http://127.0.0.1:{port}/nothing-listens"
        out = deliver_pending(db, NOW, httpx_sender(2), attempts=2, backoff_s=0,
                              sleep=lambda _: None)
        assert out == {"sent": 0, "failed": 3}
        with db() as s:
            logs = list(s.scalars(select(ActionLog).where(ActionLog.type == "budget.webhook")))
            assert {(a.status, a.error_code) for a in logs} == {("failure", "http_500"),
                                                                ("failure", "ConnectError")}
    finally:
        down.close()


def test_webhook_url_rules_and_thresholds() -> None:
    assert validate_webhook_url("https://hooks.slack.com/services/T/B/X")
    assert validate_webhook_url("http://localhost:9000/x")
    assert validate_webhook_url("http://[::1]:9000/x")
    for bad in ("http://10.0.0.1/x", "https:///nohost", "javascript:alert(1)"):
        with pytest.raises(WebhookUrlError):
            validate_webhook_url(bad)
    assert reached(Decimal("49.99"), Decimal("100")) == []
    assert reached(Decimal("80"), Decimal("100")) == [50, 80]
    assert reached(Decimal("1"), Decimal("0")) == [50, 80, 100]


def test_applicable_budgets_for_a_request(db: sessionmaker[Session]) -> None:
    with db() as s, s.begin():
        seed = Seed(s)
        org, other = seed.org(), seed.org()
        key = seed.api_key(org)
        dep = seed.deployment("llama")
        rows = [Budget(scope=BudgetScope.ORG, target_id=org, org_id=org, monthly_eur=100,
                       spent_eur=Decimal("40"), evaluated_at=NOW),
                Budget(scope=BudgetScope.API_KEY, target_id=key, org_id=org, monthly_eur=10,
                       spent_eur=Decimal("3"), evaluated_at=datetime(2025, 2, 20, tzinfo=UTC)),
                Budget(scope=BudgetScope.DEPLOYMENT, target_id=dep, monthly_eur=500,
                       spent_eur=Decimal("7"), evaluated_at=NOW),
                Budget(scope=BudgetScope.ORG, target_id=other, org_id=other, monthly_eur=1)]
        s.add_all(rows)
    with db() as s:
        got = {b.scope: b for b in applicable_budgets(s, org_id=org, api_key_id=key,
                                                      deployment="llama", now=NOW)}
        assert set(got) == {"org", "api_key", "deployment"}
        assert (got["org"].spent_eur, got["org"].limit_eur) == (Decimal("40"), Decimal("100"))
        assert got["api_key"].spent_eur == 0  # last evaluated in February: nothing this month
        assert got["deployment"].target_id == dep
        assert applicable_budgets(s, org_id=uuid.uuid4(), api_key_id=None, deployment=None,
                                  now=NOW) == []
