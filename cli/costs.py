"""`inventiv costs …`: FinOps tables and charts on the control API."""

from __future__ import annotations

import typer

app = typer.Typer(help="Costs, forecasts, unit costs, chargeback and budgets.", no_args_is_help=True)
