"""`inventiv keys …`: API keys for the OpenAI-compatible endpoint."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated

import typer

from cli.config import make_client
from cli.output import JsonOpt, handles_errors, info, print_json, print_table, stdout, warn
from control_api.schemas.identity import ApiKeyOut

app = typer.Typer(help="API keys (the secret is shown once, at creation).", no_args_is_help=True)

OrgOpt = Annotated[str | None, typer.Option(
    "--org", help="Organisation id or name (default: your only or first organisation).")]


def _models(values: list[str] | None) -> list[str] | None:
    # `--models a,b` and `--models a --models b` both work.
    if not values:
        return None
    return [m.strip() for v in values for m in v.split(",") if m.strip()]


def _budget(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise typer.BadParameter(f"not a decimal amount: {value!r}",
                                 param_hint="--budget-eur") from None
    if not amount.is_finite():
        raise typer.BadParameter("must be a finite amount", param_hint="--budget-eur")
    return amount


def _status(key: ApiKeyOut, now: datetime) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


def _limits(key: ApiKeyOut) -> str | None:
    parts = [f"{key.rpm_limit} rpm" if key.rpm_limit else "",
             f"{key.tpm_limit} tpm" if key.tpm_limit else ""]
    return " ".join(p for p in parts if p) or None


def _day(when: datetime | None) -> str | None:
    return when.strftime("%Y-%m-%d") if when else None


@app.command("create")
@handles_errors
def create(
    name: Annotated[str, typer.Argument(help="A name to recognise the key by.")],
    org: OrgOpt = None,
    models: Annotated[list[str] | None, typer.Option(
        "--models", help="Allowed models, comma-separated or repeated (default: all).")] = None,
    rpm: Annotated[int | None, typer.Option("--rpm", min=1, help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", min=1, help="Tokens per minute.")] = None,
    budget_eur: Annotated[str | None, typer.Option(
        "--budget-eur", help="Monthly budget in EUR, e.g. 25.50.")] = None,
    expires_in_days: Annotated[int | None, typer.Option(
        "--expires-in-days", min=1, help="Expire the key after this many days.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an API key and print its secret once."""
    expires_at = (datetime.now(UTC) + timedelta(days=expires_in_days)
                  if expires_in_days is not None else None)
    budget = _budget(budget_eur)
    with make_client() as client:
        org_id = client.find_org(org).id if org else None
        key = client.create_api_key(name, org_id=org_id, expires_at=expires_at,
                                    allowed_models=_models(models), rpm_limit=rpm,
                                    tpm_limit=tpm, monthly_budget_eur=budget)
    if json_out:
        print_json(key)
        return
    info(f"Created API key {key.name} ({key.id}) in organisation {org or key.org_id}")
    # The secret alone on its own line of stdout, so it can be copied or captured.
    stdout().out(key.key, highlight=False)
    warn("Store this key now: it will not be shown again.")


@app.command("list")
@handles_errors
def list_keys(org: OrgOpt = None, json_out: JsonOpt = False) -> None:
    """List API keys (yours; all of the organisation's for its admins)."""
    with make_client() as client:
        org_id = client.find_org(org).id if org else None
        keys = client.list_api_keys(org_id=org_id)
        org_names = {} if json_out else {o.id: o.name for o in client.list_orgs()}
    if json_out:
        print_json({"items": keys})
        return
    now = datetime.now(UTC)
    print_table("API keys",
                ["id", "name", "prefix", "org", "status", "models", "limits", "EUR/month",
                 "expires", "last used"],
                [(k.id, k.name, k.prefix, org_names.get(k.org_id, k.org_id), _status(k, now),
                  k.allowed_models or "all", _limits(k), k.monthly_budget_eur,
                  _day(k.expires_at), _day(k.last_used_at))
                 for k in keys], empty="no API key")


@app.command("revoke")
@handles_errors
def revoke(
    key_id: Annotated[str, typer.Argument(help="Key id.")],
    json_out: JsonOpt = False,
) -> None:
    """Revoke an API key (immediately refused by the endpoint)."""
    with make_client() as client:
        key = client.revoke_api_key(key_id)
    if json_out:
        print_json(key)
        return
    info(f"Revoked API key {key.name} ({key.id})")
