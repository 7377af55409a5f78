"""Run a deployment file on a Ray cluster: ``python -m serve_apps.run -f FILE …``.

For the laptop (``make run``) and for trying a deployment file by hand; in production the control
API applies deployments through the Serve REST API instead. Connects to the running cluster
(``--address``, default ``auto``; or starts a local one with ``--local``), starts Serve's HTTP
proxy, deploys the app and waits until it is RUNNING, then keeps it up until interrupted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from core.ray_private import wait_app_running
from core.spec import DeploymentFile, SpecError, load_spec_file
from serve_apps.builder import REPLICA_ACTOR_CPUS, build_app
from serve_apps.options import IngressOptions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serve_apps.run", description=__doc__)
    p.add_argument("-f", "--file", required=True, type=Path, help="deployment YAML")
    p.add_argument("--control-api", default=os.environ.get("INVENTIV_API_URL",
                                                           "http://127.0.0.1:8080"))
    p.add_argument("--service-token-file", required=True,
                   help="file holding a service token (component: ingress)")
    p.add_argument("--spool-dir", default=str(Path.home() / ".inventiv" / "ingress-spool"))
    p.add_argument("--address", default="auto", help="Ray address (default: auto)")
    p.add_argument("--local", action="store_true", help="start a local Ray instead")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--app-name", default="inventiv")
    p.add_argument("--ingress-replicas", type=int, default=1)
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for RUNNING")
    return p.parse_args(argv)


def local_resources(spec: DeploymentFile) -> tuple[int, dict[str, float]]:
    """Logical CPUs and custom resources a one-node cluster needs to place every replica of
    ``spec`` at ``max_replicas`` (the engines share the real cores: a laptop oversubscribes)."""
    resources: dict[str, float] = {}
    cpus = 1.0  # the ingress and Serve's own actors
    for dep in spec.deployments:
        replicas = dep.autoscaling.max_replicas
        # Ray Serve LLM adds the replica actor's CPUs to the first bundle.
        cpus += (dep.placement.cpus + REPLICA_ACTOR_CPUS) * replicas
        for name, amount in dep.placement.resources.items():
            resources[name] = resources.get(name, 0) + amount * replicas
    return max(os.cpu_count() or 1, math.ceil(cpus)), resources


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = load_spec_file(args.file)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    options = IngressOptions(control_api_url=args.control_api,
                             service_token_file=args.service_token_file,
                             spool_dir=args.spool_dir, app_name=args.app_name,
                             num_replicas=args.ingress_replicas)
    import ray
    from ray import serve

    if args.local:
        # A one-node cluster offering the custom resources the placements ask for (e.g.
        # `local_gpu_slot`, which the local cloud's autoscaled nodes offer otherwise).
        cpus, resources = local_resources(spec)
        ray.init(include_dashboard=False, resources=resources or None, num_cpus=cpus)
    else:
        ray.init(address=args.address)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        started = time.monotonic()
        serve.run(build_app(spec, options), name=args.app_name, route_prefix="/",
                  blocking=False)
        wait_app_running(args.app_name, args.timeout)
        took = time.monotonic() - started
        models = ", ".join(d.model.name for d in spec.deployments)
        print(f"serving {models} at http://{args.host}:{args.port}/v1 "  # noqa: T201
              f"(ready in {took:.0f} s); Ctrl-C to stop", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        if args.local:
            serve.shutdown()
            ray.shutdown()
        else:
            serve.delete(args.app_name)

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
