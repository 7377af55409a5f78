"""A booting fake VM's init: runs inside the VM's network and mount namespaces (the box starts
it as ``nsenter --net=<vm netns> unshare --mount --propagation private python -m
cluster.fake_scaleway.vm_init <vm dir>``).

It gives the VM its own views of ``/etc`` and ``/var`` (overlays whose writes land in the VM
dir), ``/run`` (a fresh tmpfs) and ``/tmp`` (the VM dir's ``tmp``), binds the box's extra mounts
(e.g. the project's venv at ``/opt/inventiv/venv``), appends the private DNS names to
``/etc/hosts``, then does what cloud-init would: ``write_files``, ``runcmd`` in order
(``systemctl daemon-reload|enable [--now]|start|restart|stop <unit>`` are handled here), and
supervises started units with their ``Environment``/``EnvironmentFile``/``ExecStartPre``/
``ExecStart`` and ``Restart``/``RestartSec``. Progress and errors go to ``<vm dir>/status.json``
(``phase``: ``booting`` | ``booted`` | ``failed``), output to ``<vm dir>/logs/``. SIGTERM stops
every unit and exits. VM processes get a minimal environment, never the host's.
"""

# This module runs fixed system tools (ip, nft, mount) and the VM's own cloud-init commands.
# ruff: noqa: S603, S607, S108

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from cluster.fake_scaleway.cloudinit import (
    BootError,
    Unit,
    parse_unit,
    parse_user_data,
    read_env_file,
)

BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8"}
UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system")


class _Service:
    def __init__(self, unit: Unit, log: IO[bytes]) -> None:
        self.unit = unit
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self.next_start: float | None = 0.0
        self.stopped = False
        self.error: str | None = None

    def env(self) -> dict[str, str]:
        env = dict(BASE_ENV)
        for optional, path in self.unit.environment_files:
            try:
                env.update(read_env_file(Path(path).read_text()))
            except OSError:
                if not optional:
                    raise BootError(f"{self.unit.name}: EnvironmentFile {path} missing") from None
        env.update(self.unit.environment)
        return env

    def start(self) -> None:
        env = self.env()
        cwd = self.unit.working_directory or "/"
        for ignore, argv in self.unit.exec_start_pre:
            rc = subprocess.call(argv, env=env, cwd=cwd, stdout=self.log, stderr=self.log,
                                 stdin=subprocess.DEVNULL)
            if rc != 0 and not ignore:
                self.last_exit = rc
                raise BootError(f"{self.unit.name}: ExecStartPre {argv[0]} exited {rc}")
        self.proc = subprocess.Popen(self.unit.exec_start, env=env, cwd=cwd, stdout=self.log,
                                     stderr=self.log, stdin=subprocess.DEVNULL)
        self.next_start = None

    def poll(self, now: float) -> None:
        if self.stopped:
            return
        if self.proc is not None:
            rc = self.proc.poll()
            if rc is None:
                return
            self.last_exit, self.proc = rc, None
            again = self.unit.restart == "always" or (self.unit.restart == "on-failure"
                                                      and rc != 0)
            self.next_start = now + self.unit.restart_sec if again else None
            return
        if self.next_start is not None and now >= self.next_start:
            if self.last_exit is not None:
                self.restarts += 1
            try:
                self.start()
            except (BootError, OSError) as exc:
                self.error = str(exc)
                again = self.unit.restart in ("always", "on-failure")
                self.next_start = now + self.unit.restart_sec if again else None

    def stop(self, grace_s: float = 5.0) -> None:
        self.stopped = True
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def status(self) -> dict[str, Any]:
        return {"pid": self.proc.pid if self.proc else None, "restarts": self.restarts,
                "last_exit": self.last_exit, "error": self.error,
                "active": self.proc is not None and self.proc.poll() is None}


class VmInit:
    """Boot one VM from ``<vm dir>/vm.json`` and supervise it until SIGTERM."""

    def __init__(self, vm_dir: Path) -> None:
        self.dir = vm_dir
        self.spec = json.loads((vm_dir / "vm.json").read_text())
        self.logs = vm_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.services: dict[str, _Service] = {}
        self.phase = "booting"
        self.error: str | None = None
        self._stop = False

    # ------------------------------------------------------------------ status

    def write_status(self) -> None:
        body = {"phase": self.phase, "error": self.error, "pid": os.getpid(),
                "units": {n: s.status() for n, s in self.services.items()}}
        tmp = self.dir / "status.json.tmp"
        tmp.write_text(json.dumps(body))
        tmp.replace(self.dir / "status.json")

    # ------------------------------------------------------------------ mounts

    def mount_views(self) -> None:
        root = self.dir / "fs"
        # The box's extra mounts are staged first: a host path under /tmp or /var (e.g. a
        # checkout in /tmp) is hidden once the VM's own views are mounted over it, and a
        # target there must be bound after them.
        binds = self.spec.get("binds") or []
        staged: list[tuple[Path, str]] = []
        if binds:
            _mount(["-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/opt"])
        for n, (host, target) in enumerate(binds):
            stage = Path("/opt/.box-binds") / str(n)
            stage.mkdir(parents=True, exist_ok=True)
            _mount(["--bind", host, str(stage)])
            staged.append((stage, target))
        for view in ("etc", "var"):
            upper, work = root / f"{view}.upper", root / f"{view}.work"
            upper.mkdir(parents=True, exist_ok=True)
            work.mkdir(parents=True, exist_ok=True)
            _mount(["-t", "overlay", "overlay", "-o",
                    f"lowerdir=/{view},upperdir={upper},workdir={work}", f"/{view}"])
        _mount(["-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"])
        tmp = root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        tmp.chmod(0o1777)
        _mount(["--bind", str(tmp), "/tmp"])
        for stage, target in staged:
            Path(target).mkdir(parents=True, exist_ok=True)
            _mount(["--bind", str(stage), target])
        hosts = self.spec.get("hosts") or {}
        if hosts:
            with open("/etc/hosts", "a") as fh:
                fh.write("".join(f"{ip} {' '.join(names)}\n" for ip, names in hosts.items()))
        hostname = self.spec.get("hostname")
        if hostname:
            Path("/etc/hostname").write_text(hostname + "\n")

    # ------------------------------------------------------------------ cloud-init

    def run_cloud_init(self) -> None:
        plan = parse_user_data(Path(self.spec["user_data_path"]).read_bytes())
        for wf in plan.write_files:
            path = Path(wf.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(wf.content)
            path.chmod(wf.permissions)
        out = open(self.logs / "cloud-init-output.log", "ab")  # noqa: SIM115 (kept open)
        for idx, cmd in enumerate(plan.runcmd):
            if isinstance(cmd, tuple) and cmd[0] in ("systemctl", "/usr/bin/systemctl",
                                                     "/bin/systemctl"):
                self.systemctl(list(cmd[1:]))
                continue
            argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
            try:
                rc = subprocess.call(argv, env=dict(BASE_ENV), cwd="/", stdout=out,
                                     stderr=out, stdin=subprocess.DEVNULL)
            except OSError as exc:
                raise BootError(f"runcmd[{idx}] {argv[0]}: {exc.strerror}") from None
            if rc != 0:
                raise BootError(f"runcmd[{idx}] {argv[0]} exited {rc}")

    def systemctl(self, args: list[str]) -> None:
        words = [a for a in args if not a.startswith("-")]
        now = "--now" in args
        if not words:
            raise BootError("systemctl without a command")
        verb, names = words[0], words[1:]
        if verb == "daemon-reload":
            return
        if verb not in ("enable", "start", "restart", "stop"):
            raise BootError(f"systemctl {verb} is not supported by the box")
        for name in names:
            if verb == "enable" and not now:
                continue
            if verb == "stop":
                if name in self.services:
                    self.services[name].stop()
                continue
            if verb == "restart" and name in self.services:
                self.services[name].stop()
            self.services[name] = self.load(name)
            self.services[name].start()

    def load(self, name: str) -> _Service:
        for base in UNIT_DIRS:
            path = Path(base) / name
            if path.is_file():
                log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (kept open)
                return _Service(parse_unit(name, path.read_text()), log)
        raise BootError(f"unit {name} not found")

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        try:
            self.mount_views()
            self.write_status()
            self.run_cloud_init()
            self.phase = "booted"
        except (BootError, OSError, subprocess.SubprocessError, ValueError) as exc:
            self.phase, self.error = "failed", f"{type(exc).__name__}: {exc}"
        self.write_status()
        last = ""
        while not self._stop:
            now = time.monotonic()
            for svc in self.services.values():
                svc.poll(now)
            body = json.dumps({n: s.status() for n, s in self.services.items()})
            if body != last:
                self.write_status()
                last = body
            time.sleep(0.1)
        for svc in self.services.values():
            svc.stop()
        self.phase = "stopped"
        self.write_status()
        return 0

    def _on_term(self, _signum: int, _frame: object) -> None:
        self._stop = True


def _mount(args: list[str]) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BootError(f"mount {' '.join(args[-2:])}: {done.stderr.strip()}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m cluster.fake_scaleway.vm_init <vm dir>\n")
        return 2
    return VmInit(Path(args[0])).run()


if __name__ == "__main__":
    raise SystemExit(main())
