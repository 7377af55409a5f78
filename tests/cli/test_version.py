"""`inventiv --version`: the installed distribution's version, from its metadata."""

from __future__ import annotations

from importlib import metadata

from typer.testing import CliRunner

from cli.main import app


def test_version_prints_the_distribution_version_and_exits_0() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"inventiv-agents {metadata.version('inventiv-agents')}\n"


def test_version_is_eager_and_runs_no_command() -> None:
    # Eager: printed before the sub-command (or its missing arguments) is looked at.
    result = CliRunner().invoke(app, ["--version", "simulate"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("inventiv-agents ")


def test_help_lists_the_version_option() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "--version" in result.output
