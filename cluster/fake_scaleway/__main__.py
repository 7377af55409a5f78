"""``python -m cluster.fake_scaleway --port 8089``: the fake Scaleway API on a real-time clock."""

from __future__ import annotations

import argparse

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
    args = parser.parse_args(argv)
    state = FakeState(clock=FakeClock(auto=True),
                      config=FakeConfig(boot_seconds=args.boot_seconds,
                                        stop_seconds=args.stop_seconds,
                                        nic_seconds=args.nic_seconds))
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
