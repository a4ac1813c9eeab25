"""A shorter chaos run (bin/chaos with 120 files): the same faults, the same verdict.

Two supervisord nodes on a private Redis (append-only) and a private PostgreSQL;
analysis children SIGKILLed, node B SIGKILLed whole, Redis and PostgreSQL restarted
mid-job. Nothing may be lost, doubled or stuck, and the job is finalized once.
"""

import shutil
from pathlib import Path

import pytest

from tests.helpers import run_tool

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not all(shutil.which(t) for t in ("redis-server", "initdb", "pg_ctl")),
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
