"""The serving test cluster runs with Ray token auth, as production does (DESIGN.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.serve_apps.conftest import Serving, require_modules

require_modules("openai", "vllm", "torch", "transformers")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CONNECT = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
           "print('CONNECTED', flush=True)")


def test_a_driver_without_the_token_is_refused(serving: Serving) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["RAY_AUTH_MODE"] = "disabled"
    proc = subprocess.run([sys.executable, "-c", CONNECT, serving.extra["gcs_address"]],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0 and "CONNECTED" not in proc.stdout
    assert "Failed to connect" in proc.stderr or "auth" in proc.stderr.lower(), proc.stderr[-2000:]
    # This process's environment was restored after ray.init: nothing leaks to other tests.
    assert os.environ.get("RAY_AUTH_TOKEN_PATH") != serving.extra["ray_token_file"]
