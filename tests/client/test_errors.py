"""One error root for the control API clients, mapped once at the CLI edge
(``cli.output.handles_errors``)."""

from __future__ import annotations

import pytest
import typer

from cli.output import handles_errors
from control_api import client as client_pkg
from control_api.client import api, errors, internal, spool


def test_every_client_error_has_the_one_root_and_stays_importable_where_it_was() -> None:
    for cls in (errors.InternalClientError, errors.ControlApiUnavailable,
                errors.InternalApiError, errors.KeyRejected, errors.SpoolError,
                errors.SpoolFull, errors.ControlApiError, errors.ControlApiUnreachable):
        assert issubclass(cls, errors.ClientError), cls
    assert internal.InternalClientError is errors.InternalClientError
    assert internal.KeyRejected is errors.KeyRejected
    assert spool.SpoolFull is errors.SpoolFull and spool.SpoolError is errors.SpoolError
    assert api.ControlApiError is errors.ControlApiError
    assert client_pkg.ClientError is errors.ClientError


def test_messages_and_codes() -> None:
    e = errors.ControlApiError(401, "unauthorized", "invalid username or password")
    assert (e.status, e.code, e.message) == (401, "unauthorized", "invalid username or password")
    assert str(e) == "unauthorized: invalid username or password"
    k = errors.KeyRejected(404, "revoked_api_key", "key revoked")
    assert str(k) == "HTTP 404 revoked_api_key: key revoked" and k.code == "revoked_api_key"
    assert errors.SpoolFull("spool over 10 MiB").code == "spool_full"
    u = errors.ControlApiUnreachable("http://127.0.0.1:9", "connection refused")
    assert (u.status, u.code) == (0, "unreachable") and "http://127.0.0.1:9" in u.message


@pytest.mark.parametrize(("error", "line"), [
    (errors.ControlApiError(401, "unauthorized", "session revoked"),
     "error: unauthorized: session revoked (log in with `inventiv login`)\n"),
    (errors.ControlApiError(429, "too_many_requests", "slow down", retry_after="3"),
     "error: too_many_requests: slow down (retry after 3s)\n"),
    (errors.ControlApiError(404, "not_found", "user 'x' not found"),
     "error: not_found: user 'x' not found\n"),
    (errors.SpoolFull("spool over 10 MiB"), "error: spool_full: spool over 10 MiB\n"),
    (errors.ControlApiUnavailable("control API down after 5 tries"),
     "error: unavailable: control API down after 5 tries\n"),
])
def test_the_cli_turns_any_client_error_into_one_line_and_exit_1(
        error: errors.ClientError, line: str, capsys: pytest.CaptureFixture[str]) -> None:
    @handles_errors
    def command() -> None:
        raise error

    with pytest.raises(typer.Exit) as info:
        command()
    assert info.value.exit_code == 1
    assert capsys.readouterr().err == line
