"""The box's managed database: a Postgres server on a private network, like the private endpoint
of a Scaleway Managed Database for PostgreSQL.

In production the head's control API reaches its database by a URL naming a private endpoint of
the cluster's private network (``scaleway.rdb.v1``: ``init_endpoints=[EndpointSpec(
private_network=...)]``), with a password. The box gives its VMs the same thing: a Postgres
cluster (Debian's binaries, ``/usr/lib/postgresql/<n>/bin``) initialised in the box directory,
running as the ``postgres`` user in its own network namespace on the private network's bridge at
a fixed address outside the fake IPAM's range, named ``<name>.<network>.internal`` in every VM's
``/etc/hosts``, password (SCRAM) required from the network. Nothing listens on this machine's own
interfaces (the machine's Postgres at 127.0.0.1 is unreachable from a VM, as an office database
is from Scaleway). It stops with the box.
"""

# This module runs Debian's fixed Postgres tools.
# ruff: noqa: S603, S607

from __future__ import annotations

import ipaddress
import os
import pwd
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cluster.fake_scaleway.box import Box, BoxUnavailable, kill_netns

# Outside what the fake IPAM hands out (it counts up from .0.2 of the /22).
BOX_DATABASE_ADDRESS = "172.16.3.254/22"
BOX_DATABASE_HOST = "box-db.box.internal"
BOX_DATABASE_USER = "inventiv"
BOX_DATABASE_NAME = "inventiv"
POSTGRES_PORT = 5432


def postgres_bin() -> Path:
    """Debian's newest installed Postgres server binaries (:class:`BoxUnavailable` if none)."""
    root = Path("/usr/lib/postgresql")
    versions = sorted((d for d in root.glob("*") if (d / "bin" / "postgres").is_file()),
                      key=lambda d: int(d.name) if d.name.isdigit() else 0) \
        if root.is_dir() else []
    if not versions:
        raise BoxUnavailable("the box's database needs Debian's postgresql package "
                             "(/usr/lib/postgresql/<n>/bin/postgres)")
    return versions[-1] / "bin"


@dataclass
class BoxDatabase:
    """A running box database; ``url`` has no password (as a cluster file names it)."""

    netns: str
    address: str
    host: str
    user: str
    name: str
    password: str = field(repr=False)
    data_dir: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{POSTGRES_PORT}/{self.name}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "postgres.log"

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients disconnected), then the namespace goes."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        kill_netns(self.netns)


def _as_postgres(argv: list[str], *, netns: str | None = None) -> list[str]:
    user = pwd.getpwnam("postgres")
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return [*prefix, "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
            "--init-groups", "--", *argv]


def _check(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"box database: {what} failed: {done.stderr.strip()[-500:]}")


def start_database(box: Box, private_network_id: str, *,
                   address: str = BOX_DATABASE_ADDRESS, host: str = BOX_DATABASE_HOST,
                   user: str = BOX_DATABASE_USER, name: str = BOX_DATABASE_NAME,
                   timeout_s: float = 60.0) -> BoxDatabase:
    """Initialise and start the database on ``private_network_id`` (stopped with the box)."""
    pg_bin = postgres_bin()
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise BoxUnavailable("the box's database needs the postgres user") from None
    base = box.root / "db"
    base.mkdir(mode=0o700)
    os.chown(base, owner.pw_uid, owner.pw_gid)
    data, sock = base / "data", base / "sock"
    sock.mkdir(mode=0o700)
    os.chown(sock, owner.pw_uid, owner.pw_gid)
    password = secrets.token_urlsafe(24)
    pwfile = base / "pwfile"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    try:
        _check(_as_postgres([str(pg_bin / "initdb"), "-D", str(data), "-U", user,
                             "--auth-local=trust", "--auth-host=scram-sha-256",
                             f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions"]),
               "initdb")
    finally:
        pwfile.unlink()
    subnet = ipaddress.ip_interface(address).network
    with open(data / "pg_hba.conf", "a") as fh:  # the private network, password required
        fh.write(f"host all all {subnet} scram-sha-256\n")
    netns = box.service_netns("db", private_network_id, address, [host])
    ip = address.split("/")[0]
    log = open(base / "postgres.log", "ab")  # noqa: SIM115 (the server's output)
    process = subprocess.Popen(
        _as_postgres([str(pg_bin / "postgres"), "-D", str(data), "-p", str(POSTGRES_PORT),
                      "-c", f"listen_addresses={ip}", "-c", f"unix_socket_directories={sock}",
                      "-c", "fsync=off", "-c", "synchronous_commit=off",
                      "-c", "full_page_writes=off", "-c", "shared_buffers=32MB",
                      "-c", "max_connections=60"], netns=netns),
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    db = BoxDatabase(netns=netns, address=address, host=host, user=user, name=name,
                     password=password, data_dir=base, process=process)
    box._closers.append(db.stop)  # noqa: SLF001 - the box stops what it owns
    deadline = time.monotonic() + timeout_s
    while subprocess.run([str(pg_bin / "pg_isready"), "-q", "-h", str(sock), "-p",
                          str(POSTGRES_PORT)], check=False).returncode != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"box database did not start: "
                               f"{db.log_path.read_text(errors='replace')[-500:]}")
        time.sleep(0.1)
    _check(_as_postgres([str(pg_bin / "createdb"), "-h", str(sock), "-p", str(POSTGRES_PORT),
                         "-U", user, name]), "createdb")
    return db


__all__ = ["BOX_DATABASE_ADDRESS", "BOX_DATABASE_HOST", "BoxDatabase", "postgres_bin",
           "start_database"]
