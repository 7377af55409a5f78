"""``python -m cluster.fake_scaleway [--port 8089] [--boot]``: the fake Scaleway API.

Without ``--boot``: the API on a real-time clock. With ``--boot`` (root only): powered-on servers
boot in network/mount namespaces (:mod:`cluster.fake_scaleway.booting`); the first lines printed
are ``SCW_API_URL=...``, the other ``SCW_*`` settings and ``INVENTIV_BOX_PUBLIC_NETNS=...``;
SIGINT/SIGTERM removes every VM, namespace and directory of the box before exiting.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import uvicorn

from cluster.fake_scaleway.app import create_app
from cluster.fake_scaleway.state import FakeClock, FakeConfig, FakeState


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve until interrupted."""
    parser = argparse.ArgumentParser(description="Fake Scaleway Instance/Block/IPAM API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--boot-seconds", type=float, default=5.0)
    parser.add_argument("--stop-seconds", type=float, default=2.0)
    parser.add_argument("--nic-seconds", type=float, default=1.0)
    parser.add_argument("--boot", action="store_true",
                        help="boot powered-on servers in namespaces (needs root)")
    parser.add_argument("--bind", action="append", default=[], metavar="HOST:VM",
                        help="with --boot: bind a host directory into every VM "
                             "(e.g. .venv:/opt/inventiv/venv)")
    args = parser.parse_args(argv)
    config = FakeConfig(boot_seconds=args.boot_seconds, stop_seconds=args.stop_seconds,
                        nic_seconds=args.nic_seconds)
    if not args.boot:
        state = FakeState(clock=FakeClock(auto=True), config=config)
        uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="info")
        return
    run_booting(args.host, args.port, config, [tuple(b.split(":", 1)) for b in args.bind])


def run_booting(host: str, port: int, config: FakeConfig, binds: list[tuple[str, ...]]) -> None:
    from cluster.fake_scaleway.booting import serve_booting
    from cluster.fake_scaleway.box import BoxUnavailable

    if any(len(b) != 2 for b in binds):
        raise SystemExit("--bind takes HOST_DIR:VM_DIR")
    try:
        fake = serve_booting(host=host, port=port, config=config,
                             binds=[(b[0], b[1]) for b in binds])
    except BoxUnavailable as exc:
        raise SystemExit(f"fake_scaleway --boot: {exc}") from None
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        fake.start_database()  # what configs/clusters/box.yaml's control API runs on
        env = fake.env()
        print(f"SCW_API_URL={env.pop('SCW_API_URL')}")
        for key, value in env.items():
            print(f"{key}={value}")
        sys.stdout.flush()
        done.wait()
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
