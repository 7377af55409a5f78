"""The gate matches routes under the app's route prefix (Serve puts it in ``root_path`` and keeps
it in ``path``): an app served at ``/lora`` answers ``/lora/v1/...``, and a prefix is never
stripped from a path it is not a segment of."""

from __future__ import annotations

import pytest

from serve_apps.gate import allowed, route_path


@pytest.mark.parametrize(("root", "path", "expected"), [
    ("", "/v1/chat/completions", "/v1/chat/completions"),
    ("/lora", "/lora/v1/chat/completions", "/v1/chat/completions"),
    ("/lora/", "/lora/v1/models", "/v1/models"),
    ("/lora", "/lora", "/"),
    ("/lora", "/lorax/v1/models", "/lorax/v1/models"),  # not a path segment of the prefix
    ("/lora", "/v1/models", "/v1/models"),  # no prefix in the path: as it is
])
def test_route_path_strips_only_the_route_prefix(root: str, path: str, expected: str) -> None:
    assert route_path({"root_path": root, "path": path}) == expected


def test_a_prefixed_route_is_allowed_and_an_unknown_one_still_is_not() -> None:
    scope = {"root_path": "/lora", "path": "/lora/v1/chat/completions"}
    assert allowed("POST", route_path(scope))
    assert not allowed("POST", route_path({"root_path": "/lora", "path": "/lora/v1/admin"}))
