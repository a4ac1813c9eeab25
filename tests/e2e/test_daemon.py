"""The daemon end to end: a real supervisord driven by `sqlcheckctl` and by `supervisorctl`.

Each test gets its own SQLCHECK_HOME under tmp_path (socket, pidfile, logs), and
the supervisord it started is shut down in teardown by the pid in its pidfile.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
import redis

from sqlcheck.chaos_services import free_port
from tests.helpers import SQLCHECKCTL, VENV_BIN, make_zip, wait_until

SUPERVISORCTL = str(VENV_BIN / "supervisorctl")


class Daemon:
    """One sqlcheck installation run by supervisord, controlled through the CLIs."""

    def __init__(self, stack, **env: str):
        self.stack = stack
        self.env = {**stack.env, "CELERY_WORKER_CONCURRENCY": "1", **env}
        self.home = Path(self.env["SQLCHECK_HOME"])
        self.conf = self.home / "supervisord" / "supervisord.conf"
        self.pidfile = self.home / "run" / "supervisord.pid"

    def ctl(self, *args: str, timeout_s: float = 240, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([SQLCHECKCTL, *args], env={**self.env, **env}, capture_output=True, text=True,
                              timeout=timeout_s)

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([SUPERVISORCTL, "-c", str(self.conf), *args], capture_output=True, text=True,
                              timeout=240)

    def status(self) -> tuple[int, dict]:
        proc = self.ctl("status", "--json", timeout_s=60)
        return proc.returncode, json.loads(proc.stdout)

    def pid(self) -> int | None:
        """supervisord's pid, only if the pidfile names a live supervisord (teardown TERMs it)."""
        from sqlcheck.control import pidfile_pid
        from sqlcheck.supervisor_config import SupervisorPaths

        return pidfile_pid(SupervisorPaths(self.home))

    def program_pids(self) -> dict[str, int]:
        return {p["name"]: p["pid"] for p in self.status()[1]["programs"]}

    def kill(self) -> None:
        """Teardown: TERM supervisord (by its pidfile pid), SIGKILL whatever is left after a while."""
        pid = self.pid()
        if pid is None:
            return
        try:
            proc = psutil.Process(pid)
            family = [proc] + proc.children(recursive=True)
            proc.send_signal(signal.SIGTERM)
            _gone, alive = psutil.wait_procs(family, timeout=60)
            for p in alive:
                p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture
def daemon(pg_stack):
    d = Daemon(pg_stack)
    yield d
    d.kill()


def _job_view(stack, job_id):
    from sqlcheck.client import job_view

    db = stack.db()
    try:
        return job_view(db, job_id)
    finally:
        db.engine.dispose()


def test_start_status_reload_restart_stop(daemon):
    started = daemon.ctl("start")
    assert started.returncode == 0, started.stderr
    assert "nodes answering" in started.stdout
    again = daemon.ctl("start")
    assert again.returncode == 0 and "already running" in again.stdout and "reload" not in again.stderr
    hint = daemon.ctl("start", CELERY_WORKER_CONCURRENCY="2")
    assert hint.returncode == 0 and "`sqlcheckctl reload` applies them" in hint.stderr
    # settings that add a program: start reports what runs (it used to wait 120 s for the
    # program, then fail); restart refuses at once and names reload
    new_program = {"SQLCHECK_METRICS_PORT": str(free_port())}
    hint = daemon.ctl("start", timeout_s=60, **new_program)
    assert hint.returncode == 0 and "not pinged" in hint.stdout, hint.stderr
    refused = daemon.ctl("restart", timeout_s=60, **new_program)
    assert refused.returncode == 1 and "`sqlcheckctl reload`" in " ".join(refused.stderr.split())
    # the file on disk rendered anew but never applied (a config render into the home, a reload
    # stopped half way): what supervisord runs is compared too
    assert daemon.ctl("config", "render", **new_program).returncode == 0
    refused = daemon.ctl("restart", timeout_s=60, **new_program)  # the file now says what the settings say
    assert refused.returncode == 1 and "`sqlcheckctl reload`" in " ".join(refused.stderr.split())
    assert daemon.ctl("config", "render").returncode == 0  # back to what runs

    rc, doc = daemon.status()
    assert rc == 0 and doc["state"] == "running"
    assert {p["name"]: p["state"] for p in doc["programs"]} == {
        "sqlcheck:zip": "RUNNING", "sqlcheck:analysis": "RUNNING", "reaper:reaper": "RUNNING"}
    assert all(n["ping"] for n in doc["nodes"].values()) and len(doc["nodes"]) == 2
    workers = [p for p in doc["programs"] if p["name"].startswith("sqlcheck:")]
    assert all(len(p["children"]) == 1 and p["children"][0]["rss_mb"] > 0 for p in workers)
    assert doc["queues"]["sql_analysis"] == 0 and "jobs" in doc
    assert daemon.ctl("health").returncode == 0

    # a job runs through the supervised workers
    zip_path = daemon.home / "sample.zip"
    zip_path.write_bytes(make_zip({"a.sql": "select a from t\n", "b.sql": "SELECT 1\n"}))
    submitted = daemon.ctl("submit", str(zip_path), "--wait", "--json")
    assert submitted.returncode == 0, submitted.stderr
    assert json.loads(submitted.stdout)["status"] == "SUCCESS"
    assert daemon.status()[1]["jobs"]["counts"] == {"SUCCESS": 1}

    # operators on the VM: supervisorctl against the rendered config
    sc = daemon.supervisorctl("status")
    assert sc.returncode == 0 and "sqlcheck:analysis" in sc.stdout and "RUNNING" in sc.stdout
    assert daemon.supervisorctl("stop", "sqlcheck:*").returncode == 0
    rc, doc = daemon.status()
    assert rc == 1 and doc["state"] == "partial"  # the reaper still runs, no worker does
    assert not any(n["ping"] for n in doc["nodes"].values())
    assert daemon.ctl("health").returncode == 1
    assert daemon.supervisorctl("start", "sqlcheck:*").returncode == 0
    wait_until(lambda: daemon.status()[0] == 0, 60, "workers answering again")

    # reload: nothing changed -> nothing restarted; concurrency changed -> the group is replaced
    before = daemon.program_pids()
    unchanged = daemon.ctl("reload")
    assert unchanged.returncode == 0 and "unchanged" in unchanged.stdout
    assert daemon.program_pids() == before
    changed = daemon.ctl("reload", CELERY_WORKER_CONCURRENCY="2")
    assert changed.returncode == 0 and "sqlcheck" in changed.stdout, changed.stderr
    rc, doc = daemon.status()
    analysis = next(p for p in doc["programs"] if p["name"] == "sqlcheck:analysis")
    assert rc == 0 and analysis["pid"] != before["sqlcheck:analysis"] and len(analysis["children"]) == 2
    assert "--concurrency 2" in daemon.conf.read_text()

    # rolling restart: every program gets a new pid, one after the other
    before = daemon.program_pids()
    restarted = daemon.ctl("restart", CELERY_WORKER_CONCURRENCY="2")
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stderr.index("restarting sqlcheck:zip") < restarted.stderr.index("restarting sqlcheck:analysis")
    after = daemon.program_pids()
    assert all(after[n] != before[n] for n in before) and daemon.status()[0] == 0

    supervisord_pid = daemon.pid()
    stopped = daemon.ctl("stop")
    assert stopped.returncode == 0 and "stopped warm" in stopped.stdout, stopped.stderr
    assert not psutil.pid_exists(supervisord_pid)
    assert daemon.status()[0] == 3
    assert daemon.ctl("stop").stdout.strip() == "sqlcheck is not running"


def test_start_fails_with_the_reason_and_the_log_tail(daemon, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    proc = daemon.ctl("start", "--timeout", "20", NFS_SHARE_ROOT_PATH=str(blocker / "share"))
    assert proc.returncode == 1
    assert "last lines of sqlcheck:" in proc.stderr
    assert "NFS_SHARE_ROOT_PATH" in proc.stderr  # the worker's own one-line reason, from its log


def test_a_pidfile_left_behind_naming_another_live_process_means_stopped(pg_stack):
    """After a crash or a reboot the pidfile may name a live process that is not supervisord:
    status says stopped (exit 3) and stop has nothing to stop (it used to say "unknown" / fail)."""
    d = Daemon(pg_stack)
    other = subprocess.Popen(["sleep", "60"])
    try:
        d.pidfile.parent.mkdir(parents=True, exist_ok=True)
        d.pidfile.write_text(f"{other.pid}\n")
        code, doc = d.status()
        assert code == 3 and doc["state"] == "stopped", doc
        stop = d.ctl("stop", timeout_s=60)
        assert stop.returncode == 0, stop.stderr
        assert other.poll() is None  # and it was left alone
    finally:
        other.kill()
        other.wait()


SLOW = "-- sqlcheck-fault: sleep_s=6\nSELECT 1\n"  # several seconds, well below the soft limit


@pytest.mark.parametrize("how", ["sqlcheckctl-stop", "sigterm-to-supervisord", "supervisorctl-stop"])
def test_warm_shutdown_finishes_the_file_in_flight_and_keeps_the_queue(pg_stack, how):
    # one message per file, so that there are queued messages to keep (a batch would carry all six)
    daemon = Daemon(pg_stack, SQLCHECK_ENABLE_FAULTS="1", SQLCHECK_LINT_BATCH_MAX_FILES="1")
    try:
        assert daemon.ctl("start").returncode == 0
        files = {"a_slow.sql": SLOW, **{f"b{i}.sql": f"SELECT {i}\n" for i in range(5)}}
        job_id = pg_stack.submit(make_zip(files))

        def slow_in_progress():
            view = _job_view(pg_stack, job_id)
            return view and any(t["archive_member"] == "a_slow.sql" and t["status"] == "IN_PROGRESS"
                                for t in view["tasks"])

        wait_until(slow_in_progress, 60, "a_slow.sql in progress")
        if how == "sqlcheckctl-stop":
            rc, doc = daemon.status()  # the status view while a file is in flight
            slow_id = next(t["id"] for t in _job_view(pg_stack, job_id)["tasks"] if t["archive_member"] == "a_slow.sql")
            active = [r["id"] for n, info in doc["nodes"].items() if n.startswith("analysis@") for r in info["active"]]
            assert rc == 0 and active == [slow_id]
            assert doc["queues"]["sql_analysis"] == 5
            assert doc["jobs"]["running"] == [{"job_id": job_id, "done": 0, "total": 6}]
            stopped = daemon.ctl("stop")
            assert stopped.returncode == 0, stopped.stderr
            assert "in flight, will finish first" in stopped.stderr
        elif how == "supervisorctl-stop":
            stopped = daemon.supervisorctl("stop", "sqlcheck:*")
            assert stopped.returncode == 0 and "sqlcheck:analysis: stopped" in stopped.stdout, stopped.stdout
        else:
            pid = daemon.pid()
            os.kill(pid, signal.SIGTERM)  # what systemd sends
            psutil.Process(pid).wait(120)

        view = _job_view(pg_stack, job_id)
        tasks = {t["archive_member"]: t for t in view["tasks"]}
        assert tasks["a_slow.sql"]["status"] == "SUCCESS" and tasks["a_slow.sql"]["attempts"] == 1
        assert all(tasks[f"b{i}.sql"]["status"] == "PENDING" for i in range(5))
        assert view["status"] == "PROCESSING"
        broker = redis.Redis.from_url(pg_stack.env["CELERY_BROKER_URL"])
        assert broker.llen("sql_analysis") == 5  # unstarted messages went (stayed) back to Redis

        if how == "supervisorctl-stop":
            assert daemon.supervisorctl("start", "sqlcheck:*").returncode == 0
        else:
            assert daemon.ctl("start").returncode == 0
        view = pg_stack.wait_job(job_id, 120)
        assert view["status"] == "SUCCESS" and view["succeeded_tasks"] == 6
        assert [t["attempts"] for t in view["tasks"]] == [1] * 6  # nothing ran twice
        assert broker.llen("sql_analysis") == 0
    finally:
        daemon.kill()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_embedded_redis_runs_when_none_answers(pg_stack):
    port = free_port()
    daemon = Daemon(pg_stack, CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0")
    try:
        started = daemon.ctl("start")
        assert started.returncode == 0, started.stderr
        assert "supervisord runs" in started.stderr and "redis:redis RUNNING" in started.stdout
        zip_path = daemon.home / "x.zip"
        zip_path.write_bytes(make_zip({"a.sql": "SELECT 1\n"}))
        submitted = daemon.ctl("submit", str(zip_path), "--wait", "--json")
        assert submitted.returncode == 0 and json.loads(submitted.stdout)["status"] == "SUCCESS", submitted.stderr
        assert any((daemon.home / "redis").rglob("*.aof")), "append-only file missing"
        reloaded = daemon.ctl("reload")  # our own Redis answering now must not remove it
        assert reloaded.returncode == 0 and "unchanged" in reloaded.stdout, reloaded.stdout + reloaded.stderr
        assert daemon.ctl("stop").returncode == 0
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=port, socket_connect_timeout=1).ping()  # stopped with supervisord
    finally:
        daemon.kill()


def test_bin_demo_leaves_the_service_running(pg_stack, tmp_path):
    env = {k: v for k, v in pg_stack.env.items() if k != "DATABASE_URL"}  # the demo's own SQLite
    env.update(SQLCHECK_HOME=str(tmp_path / "demo"), CELERY_WORKER_CONCURRENCY="1")
    daemon = Daemon(pg_stack, **env)
    daemon.env = env
    try:
        demo = subprocess.run([str(Path(__file__).resolve().parents[2] / "bin" / "demo")], env=env,
                              capture_output=True, text=True, timeout=300)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "SUCCESS" in demo.stdout and "Top rules:" in demo.stdout
        assert "sqlcheckctl stop" in demo.stdout
        rc, doc = daemon.status()
        assert rc == 0 and doc["jobs"]["counts"] == {"SUCCESS": 1}
        assert daemon.ctl("stop").returncode == 0
    finally:
        daemon.kill()


@pytest.mark.parametrize("batch_files", ["1", "8"])
def test_stop_timeout_turns_cold_and_the_file_in_flight_runs_again(pg_stack, batch_files):
    daemon = Daemon(pg_stack, SQLCHECK_ENABLE_FAULTS="1", SQLCHECK_LINT_BATCH_MAX_FILES=batch_files)
    try:
        assert daemon.ctl("start").returncode == 0
        job_id = pg_stack.submit(make_zip({"a_slow.sql": "-- sqlcheck-fault: sleep_s=10\nSELECT 1\n",
                                           "b.sql": "SELECT 2\n"}))
        wait_until(lambda: (v := _job_view(pg_stack, job_id)) and v["tasks"]
                   and v["tasks"][0]["status"] == "IN_PROGRESS", 60, "a_slow.sql in progress")
        stopped = daemon.ctl("stop", "--timeout", "1")
        assert stopped.returncode == 0 and "stopped cold" in stopped.stdout, stopped.stdout + stopped.stderr
        slow = _job_view(pg_stack, job_id)["tasks"][0]
        assert slow["status"] == "IN_PROGRESS" and slow["attempts"] == 1  # interrupted, not recorded
        broker = redis.Redis.from_url(pg_stack.env["CELERY_BROKER_URL"])
        # the interrupted message went back; b.sql never left the queue (or was in that same batch)
        assert broker.llen("sql_analysis") == (2 if batch_files == "1" else 1)

        assert daemon.ctl("start").returncode == 0
        view = pg_stack.wait_job(job_id, 120)
        assert view["status"] == "SUCCESS"
        assert [t["attempts"] for t in view["tasks"]] == [2, 1]  # only the interrupted file ran again
    finally:
        daemon.kill()
