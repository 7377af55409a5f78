"""Budget webhooks behind /api/finops/webhooks: create (secret shown once), list, delete.

Org webhooks: the org's admins; platform-wide ones (``org_id`` None): platform admins.
"""

from __future__ import annotations

import secrets
import uuid
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_api.deps import Principal
from control_api.errors import NotFound, Unprocessable
from control_api.schemas import finops as sch
from core.models import Org, Role
from core.models_finops import BudgetWebhook
from finops.notify import WebhookUrlError, validate_webhook_url


def shown_url(url: str) -> str:
    p = urlsplit(url)
    port = f":{p.port}" if p.port else ""
    return f"{p.scheme}://{p.hostname}{port}/…"


def webhook_out(h: BudgetWebhook, secret: str | None = None) -> sch.WebhookOut:
    return sch.WebhookOut(id=h.id, org_id=h.org_id, url=shown_url(h.url), kind=h.kind,
                          enabled=h.enabled, created_at=h.created_at, secret=secret)


def _require_admin(session: Session, principal: Principal, org_id: uuid.UUID | None) -> None:
    if org_id is None:
        principal.require_platform_admin()
        return
    principal.require_role(org_id, Role.ADMIN)  # 403 for non-admins, members of it or not
    if session.get(Org, org_id) is None:
        raise NotFound("organisation not found")


def create(session: Session, principal: Principal, body: sch.WebhookCreate) -> sch.WebhookOut:
    _require_admin(session, principal, body.org_id)
    try:
        url = validate_webhook_url(body.url)
    except WebhookUrlError as exc:
        raise Unprocessable(f"url: {exc}") from None
    secret = body.secret or secrets.token_urlsafe(32)
    h = BudgetWebhook(org_id=body.org_id, url=url, kind=body.kind, secret=secret, enabled=True)
    session.add(h)
    session.flush()
    return webhook_out(h, secret if body.secret is None else None)


def list_(session: Session, principal: Principal) -> sch.WebhookList:
    q = select(BudgetWebhook).order_by(BudgetWebhook.created_at, BudgetWebhook.id)
    if not principal.is_platform_admin:
        q = q.where(BudgetWebhook.org_id.in_(list(principal.roles)))
    return sch.WebhookList(items=[webhook_out(h) for h in session.scalars(q)])


def delete(session: Session, principal: Principal, webhook_id: uuid.UUID) -> None:
    h = session.get(BudgetWebhook, webhook_id)
    if h is None or not principal.can_see_org(h.org_id):
        raise NotFound("webhook not found")
    _require_admin(session, principal, h.org_id)
    session.delete(h)
    session.flush()
