"""Private Redis and PostgreSQL servers for fault drills (bin/chaos, reliability tests).

Faults are only ever injected into servers started here, on their own ports and
data directories, never into the machine's shared Redis or PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_on_sigterm(prog: str) -> None:
    """SIGTERM (`timeout`, a test's deadline) raises SystemExit, so the tool's `finally` stops the
    services it started instead of leaving them running."""
    def stop(signum, _frame):
        raise SystemExit(f"{prog}: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)


def postgres_program(name: str) -> str | None:
    """initdb / pg_ctl: on PATH, else where Debian's packages keep them, off PATH
    (/usr/lib/postgresql/<version>/bin; the newest version)."""
    found = shutil.which(name)
    if found:
        return found
    versions = [p for p in Path("/usr/lib/postgresql").glob(f"*/bin/{name}") if p.parent.parent.name.isdigit()]
    return str(max(versions, key=lambda p: int(p.parent.parent.name))) if versions else None


def _wait_port(port: int, up: bool, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} still {'closed' if up else 'open'} after {timeout_s}s")


class PrivateRedis:
    """A redis-server with append-only persistence on its own port and directory."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--protected-mode", "no"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        _wait_port(self.port, up=True)

    def stop(self, kill: bool = False) -> None:
        """SIGKILL (a crash) or SIGTERM (a clean stop); the AOF keeps what was acknowledged."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.proc.wait(30)
        _wait_port(self.port, up=False)

    def restart(self, down_s: float = 0.0, kill: bool = True) -> None:
        self.stop(kill=kill)
        time.sleep(down_s)
        self.start()


class PrivatePostgres:
    """A PostgreSQL cluster initdb'ed in a temp directory, trust auth, its own port."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.dir = workdir
        self.data = workdir / "data"
        self.port = port or free_port()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(prefix + list(argv), check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            for parent in self.dir.parents:  # the postgres user must reach the directory
                if parent == Path("/"):
                    break
                os.chmod(parent, os.stat(parent).st_mode | 0o011)
        self._run(postgres_program("initdb") or "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(postgres_program("pg_ctl") or "pg_ctl", "-D", str(self.data), "-o", opts,
                  "-l", str(self.dir / "postgres.log"), "-w", "start")
        _wait_port(self.port, up=True)

    def stop(self, mode: str = "immediate") -> None:
        """`immediate` is a crash (no shutdown checkpoint); every client connection breaks."""
        self._run(postgres_program("pg_ctl") or "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        _wait_port(self.port, up=False)

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except (subprocess.CalledProcessError, TimeoutError):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
