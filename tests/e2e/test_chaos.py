"""A shorter chaos run (bin/chaos with 120 files): the same faults, the same verdict.

Two supervisord nodes on a private Redis (append-only) and a private PostgreSQL;
analysis children SIGKILLed, node B SIGKILLed whole, Redis and PostgreSQL restarted
mid-job. Nothing may be lost, doubled or stuck, and the job is finalized once.
"""

import shutil
from pathlib import Path

import pytest

from sqlcheck.chaos_services import postgres_program
from tests.helpers import run_tool

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not (shutil.which("redis-server") and postgres_program("initdb") and postgres_program("pg_ctl")),
                    reason="needs redis-server, initdb and pg_ctl for the private servers")
@pytest.mark.timeout(240)
def test_short_chaos_run_loses_nothing():
    out = run_tool([str(ROOT / "bin" / "chaos"), "--files", "120", "--child-kills", "4", "--timeout", "180"],
                   timeout_s=200, cleanup_s=30)
    line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    assert out.returncode == 0, f"{line}\n{out.stderr[-4000:]}"
    figures = dict(part.split("=", 1) for part in line.split() if "=" in part)
    assert figures["files"] == figures["tasks_terminal"] == figures["result_files"] == "120"
    assert figures["duplicates"] == figures["lost"] == figures["stuck"] == "0"
    assert figures["job"] == "SUCCESS" and figures["finalized_once"] == "yes"
    assert int(figures["faults"]) == 7  # 4 children, node B, Redis, PostgreSQL
    assert "SIGKILL node B" in out.stderr and "Redis SIGKILLed and restarted" in out.stderr
    assert "PostgreSQL stopped (immediate) and restarted" in out.stderr


@pytest.mark.skipif(not (shutil.which("redis-server") and postgres_program("initdb") and postgres_program("pg_ctl")),
                    reason="needs redis-server, initdb and pg_ctl for the private servers")
def test_sigterm_stops_what_bin_chaos_started():
    """A deadline (the suite's, `timeout`) stops bin/chaos with SIGTERM: its nodes and private
    servers go with it."""
    import re
    import signal
    import subprocess

    import psutil

    from tests.helpers import wait_until

    proc = subprocess.Popen([str(ROOT / "bin" / "chaos"), "--files", "40", "--timeout", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        def started() -> bool:
            lines.append(proc.stderr.readline())
            return "node B started" in lines[-1]

        wait_until(started, 120, "both chaos nodes started")
        started_pids = [int(p) for p in re.findall(r"supervisord pid (\d+)", "".join(lines))]
        ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", "".join(lines))]
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode != 0 and len(started_pids) == 2 and len(ports) == 2, lines
    wait_until(lambda: not any(psutil.pid_exists(p) for p in started_pids), 60, "the chaos nodes gone")
    listening = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert not listening & set(ports), "a private server is still listening"
