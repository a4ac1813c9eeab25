"""Shared test helpers: ZIP building, worker processes, waiting on conditions."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Callable

VENV_BIN = Path(sys.executable).parent
SQLCHECKCTL = str(VENV_BIN / "sqlcheckctl")


def make_zip(entries: dict[str, bytes | str], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A ZIP in memory from {member name: content}."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data.encode() if isinstance(data, str) else data)
    return buf.getvalue()


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.1):
    """Poll ``condition`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def run_tool(argv: list[str], timeout_s: float, cleanup_s: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run for bin/chaos and bin/bench, whose clean-up (the services they started) runs
    on SIGTERM: at the timeout they get SIGTERM and `cleanup_s` to stop what they started, where
    subprocess.run's SIGKILL would leave supervisord nodes and private servers running."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=cleanup_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise AssertionError(f"{argv[0]} did not finish within {timeout_s}s (stopped):\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


class WorkerProcess:
    """A real `sqlcheckctl worker` subprocess, stopped by pid (never by name)."""

    def __init__(self, env: dict[str, str], log_path: Path, queues: str, concurrency: int, name: str):
        self.env, self.log_path, self.name = env, log_path, name
        self.log_file = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [SQLCHECKCTL, "worker", "--queues", queues, "--concurrency", str(concurrency), "--name", name],
            env=env, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 60) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited rc={self.proc.returncode}:\n{self.log()[-3000:]}")
            return " ready." in self.log()

        wait_until(ready, timeout_s, f"worker {self.name} ready")

    def child_pids(self) -> list[int]:
        import psutil

        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        try:  # pool children that outlived their main process (one killed alone) are still in its group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log_file.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group (main and children), as a dying host would."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.log_file.close()
