"""`inventiv costs …`: FinOps tables and charts on the control API."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated

import typer

from cli.config import make_client
from cli.output import (
    JsonOpt,
    fmt,
    handles_errors,
    info,
    print_fields,
    print_json,
    print_table,
    stdout,
)
from control_api.client.finops import FinopsClient
from control_api.schemas.finops import SeriesPoint

app = typer.Typer(help="Costs, forecasts, unit costs, chargeback and budgets.",
                  no_args_is_help=True)
budgets_app = typer.Typer(help="Monthly budgets (org, deployment, api_key).",
                          no_args_is_help=True)
app.add_typer(budgets_app, name="budgets")

WindowOpt = Annotated[str | None, typer.Option(
    "--window", "-w", help="minute, hour, day, 7d, 30d, 365d or month (to date).")]
SplitOpt = Annotated[bool, typer.Option(
    "--split-overhead", help="Share platform overhead out across deployments by token share.")]
BARS = " ▁▂▃▄▅▆▇█"


def _client() -> FinopsClient:
    return FinopsClient(make_client())


def _eur(value: Decimal | None, places: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value.quantize(Decimal(10) ** -places):,} €"


def sparkline(values: list[Decimal], width: int = 60) -> str:
    """A one-line bar chart of ``values`` (resampled to at most ``width`` columns)."""
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [sum(values[int(i * step):int((i + 1) * step)], Decimal(0))
                  for i in range(width)]
    top = max(values)
    if top <= 0:
        return BARS[1] * len(values)
    return "".join(BARS[min(8, max(1 if v > 0 else 0, round(float(v / top) * 8)))]
                   for v in values)


def chart(points: list[SeriesPoint], cumulative: bool, height: int = 8) -> list[str]:
    """A small terminal column chart (``height`` rows) of a series, with its scale."""
    values = [p.cumulative_eur if cumulative else p.cost_eur for p in points]
    if not values:
        return []
    width = min(len(values), 72)
    if len(values) > width:
        step = len(values) / width
        values = ([values[min(len(values) - 1, int((i + 1) * step) - 1)] for i in range(width)]
                  if cumulative else
                  [sum(values[int(i * step):int((i + 1) * step)], Decimal(0))
                   for i in range(width)])
    top = max(values) or Decimal(1)
    rows = []
    for level in range(height, 0, -1):
        line = "".join("█" if v / top * height >= level - Decimal("0.5") and v > 0 else " "
                       for v in values)
        label = _eur(top * level / height) if level in (height, 1) else ""
        rows.append(f"{label:>14} │{line}")
    rows.append(f"{'':>14} └{'─' * len(values)}")
    return rows


@app.command("summary")
@handles_errors
def summary(as_json: JsonOpt = False) -> None:
    """Burn rate, spend per window, month to date and month-end projection."""
    s = _client().summary()
    if as_json:
        print_json(s)
        return
    print_fields("FinOps summary", [
        ("burn rate", f"{_eur(s.burn_rate_eur_per_hour, 4)}/h"),
        ("running instances", s.running_instances),
        *((f"last {k}", _eur(v)) for k, v in s.windows.items()),
        ("month to date", _eur(s.month_to_date_eur)),
        ("month-end projection", _eur(s.month_end_projection_eur)),
    ])


@app.command("show")
@handles_errors
def show(window: WindowOpt = "day",
         group_by: Annotated[str, typer.Option(
             "--by", help="provider, zone, instance_type, instance, deployment, org or none.")
         ] = "deployment",
         as_json: JsonOpt = False) -> None:
    """Cost of a window broken down by a dimension."""
    c = _client().costs(window, group_by)
    if as_json:
        print_json(c)
        return
    rows = [(i.name or i.key or "(none)", _eur(i.cost_eur),
             f"{(i.cost_eur / c.total_eur * 100):.1f} %" if c.total_eur else "-")
            for i in c.items]
    print_table(f"Cost by {c.group_by}, {c.start:%Y-%m-%d %H:%M} → {c.end:%Y-%m-%d %H:%M} UTC",
                [group_by, "cost", "share"], rows)
    info(f"total: {_eur(c.total_eur)}")


@app.command("series")
@handles_errors
def series(window: WindowOpt = "day",
           bucket: Annotated[str, typer.Option("--bucket", "-b",
                                               help="minute, hour or day.")] = "hour",
           cumulative: Annotated[bool, typer.Option("--cumulative",
                                                    help="Chart the running total.")] = False,
           as_json: JsonOpt = False) -> None:
    """Cost per bucket with a small terminal chart."""
    s = _client().series(window, bucket)
    if as_json:
        print_json(s)
        return
    console = stdout()
    console.print(f"Cost per {s.bucket}, {s.start:%Y-%m-%d %H:%M} → {s.end:%Y-%m-%d %H:%M} UTC"
                  f"{' (cumulative)' if cumulative else ''}", markup=False)
    for line in chart(s.items, cumulative):
        console.print(line, markup=False, highlight=False)
    console.print(f"{'':>14}  {sparkline([p.cost_eur for p in s.items])}", markup=False)
    info(f"total: {_eur(s.total_eur)}")


@app.command("forecast")
@handles_errors
def forecast(as_json: JsonOpt = False) -> None:
    """Projected spend (current burn rate, floored by the deployments' minimum capacity)."""
    f = _client().forecast()
    if as_json:
        print_json(f)
        return
    print_fields("Forecast", [
        ("burn rate", f"{_eur(f.burn_rate_eur_per_hour, 4)}/h"),
        ("minimum capacity", f"{_eur(f.minimum_eur_per_hour, 4)}/h"),
        ("projected rate", f"{_eur(f.projected_eur_per_hour, 4)}/h"),
        *((f"next {k}", _eur(v)) for k, v in f.horizons.items()),
        ("month to date", _eur(f.month_to_date_eur)),
        ("month-end projection", _eur(f.month_end_projection_eur)),
    ])


@app.command("unit")
@handles_errors
def unit(window: WindowOpt = "month", split_overhead: SplitOpt = False,
         as_json: JsonOpt = False) -> None:
    """EUR per million tokens per deployment (node cost attributed by replica placement, idle
    included); platform overhead (head, system nodes) is its own line unless split."""
    u = _client().unit_costs(window, split_overhead=split_overhead)
    if as_json:
        print_json(u)
        return
    print_table("Unit costs", ["deployment", "cost", "tokens", "€ / 1M tokens", "idle share",
                               "override in/out per 1M"],
                [(i.deployment or "(platform overhead)", _eur(i.cost_eur),
                  f"{i.prompt_tokens + i.completion_tokens:,}",
                  _eur(i.eur_per_million_tokens, 4),
                  f"{i.idle_share * 100:.1f} %" if i.idle_share is not None else "-",
                  f"{_eur(i.price_override_input_eur_per_1m, 4)} / "
                  f"{_eur(i.price_override_output_eur_per_1m, 4)}"
                  if i.price_override_input_eur_per_1m is not None else "-")
                 for i in u.items])


@app.command("chargeback")
@handles_errors
def chargeback(window: WindowOpt = "month", split_overhead: SplitOpt = False,
               as_json: JsonOpt = False) -> None:
    """Each deployment's attributed cost split across orgs by token share (sums exactly to the
    cent); platform overhead is its own line unless split."""
    c = _client().chargeback(window, split_overhead=split_overhead)
    if as_json:
        print_json(c)
        return
    print_table("Chargeback by org", ["org", "cost"],
                [(o.org or "(unallocated)", _eur(o.cost_eur)) for o in c.by_org])
    print_table("By deployment and org", ["deployment", "org", "tokens", "cost"],
                [(i.deployment or "(platform overhead)", i.org or "(unallocated)", f"{i.tokens:,}",
                  _eur(i.cost_eur)) for i in c.items])
    info(f"total: {_eur(c.total_eur)}")


def _amount(value: str, hint: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise typer.BadParameter(f"not a decimal amount: {value!r}", param_hint=hint) from None
    if not amount.is_finite():
        raise typer.BadParameter("must be a finite amount", param_hint=hint)
    return amount


@budgets_app.command("list")
@handles_errors
def budgets_list(as_json: JsonOpt = False) -> None:
    """Budgets with their month-to-date spend and state."""
    items = _client().budgets()
    if as_json:
        print_json(items)
        return
    print_table("Budgets", ["id", "scope", "target", "monthly", "spent", "ratio", "state"],
                [(b.id, b.scope, b.target_id, _eur(b.monthly_eur), _eur(b.spent_eur),
                  f"{b.ratio * 100:.1f} %" if b.ratio is not None else "-", b.state)
                 for b in items])


@budgets_app.command("set")
@handles_errors
def budgets_set(
    scope: Annotated[str, typer.Argument(help="org, deployment or api_key")],
    target_id: Annotated[str, typer.Argument(help="Id of the org, deployment or API key.")],
    monthly_eur: Annotated[str, typer.Argument(help="Monthly budget in EUR.")],
    warning_ratio: Annotated[str | None, typer.Option(
        "--warning-ratio", help="Warning threshold (default 0.8).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a monthly budget."""
    b = _client().create_budget(scope, target_id, _amount(monthly_eur, "MONTHLY_EUR"),
                                _amount(warning_ratio, "--warning-ratio")
                                if warning_ratio is not None else None)
    if as_json:
        print_json(b)
        return
    info(f"budget {b.id}: {_eur(b.monthly_eur)} / month, spent {_eur(b.spent_eur)} "
         f"({fmt(b.state)})")


@budgets_app.command("delete")
@handles_errors
def budgets_delete(budget_id: Annotated[str, typer.Argument(help="Budget id.")]) -> None:
    """Delete a budget."""
    _client().delete_budget(budget_id)
    info(f"deleted budget {budget_id}")
