"""`sqlcheckctl` on the expected failures an operator meets: one red line and an exit code, never
a traceback, and never a job left in a state the message does not describe."""

from __future__ import annotations

import json
import subprocess

import pytest

from sqlcheck import repository as repo
from sqlcheck import workflow
from sqlcheck.errors import ControlError
from tests.helpers import SQLCHECKCTL, make_zip

EXIT_FAIL = 1


def _ctl(rt, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([SQLCHECKCTL, *args], env={**rt.stack.env, **env}, capture_output=True, text=True,
                          timeout=60)


def _one_line_error(out: subprocess.CompletedProcess, *words: str) -> str:
    text = out.stderr.strip()
    assert out.returncode == EXIT_FAIL and "Traceback" not in out.stderr, out.stderr
    assert "\n" not in text, f"wrapped or several lines: {out.stderr!r}"  # a log or a pipe gets it whole
    assert text.startswith("error:") and all(w in text for w in words), text
    return text


def _upload(tmp_path):
    path = tmp_path / "a.zip"
    path.write_bytes(make_zip({"a.sql": "SELECT 1\n"}))
    return path


def test_submit_while_the_broker_is_down_says_the_job_is_stored_and_will_be_sent(rt, tmp_path):
    out = _ctl(rt, "submit", str(_upload(tmp_path)), CELERY_BROKER_URL="redis://127.0.0.1:1/0")
    text = _one_line_error(out, "is stored (PENDING)", "the reaper sends it", "do not submit it again")
    job_id = text.split()[2]
    with rt.db.session() as s:
        job = repo.get_job(s, job_id)
        assert job is not None and job.status == "PENDING"  # the reaper re-sends PENDING jobs it finds
    assert rt.share.absolute(job.source_path).is_file()


def test_job_show_while_the_database_is_down(rt):
    out = _ctl(rt, "job", "show", "12345678-1234-5678-1234-567812345678",
               DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/x")
    _one_line_error(out, "OperationalError", "the database, the broker or the share failed")


def test_submit_while_the_database_is_down_keeps_nothing(rt, tmp_path):
    out = _ctl(rt, "submit", str(_upload(tmp_path)), DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/x")
    _one_line_error(out, "database is unreachable", "nothing was submitted")
    assert list((rt.share.root / "uploads").iterdir()) == []


class _CommitReplyLost(Exception):
    """What a client sees when the connection breaks after the server got its COMMIT."""


@pytest.mark.parametrize("committed, database_answers_after", [(True, True), (False, True), (True, False)])
def test_submit_when_the_commit_reply_is_lost(rt, tmp_path, committed, database_answers_after):
    """The upload is removed only when the job row is known to be absent; a row committed before the
    error is a submitted job (its message is sent); when nobody can tell, the upload is kept."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    from sqlcheck.client import Submitter

    lost = []

    def lose_reply(_session):
        if not lost:  # the insert's commit only; the check afterwards commits normally
            lost.append(True)
            raise _CommitReplyLost("server closed the connection unexpectedly")

    def database_gone(*_args):
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    uploads = rt.share.root / "uploads"
    hook = "after_commit" if committed else "before_commit"
    with Submitter(rt.settings) as web:
        event.listen(Session, hook, lose_reply)
        if not database_answers_after:
            event.listen(web.db.engine, "checkout", lambda *a: database_gone() if lost else None)
        try:
            if committed and database_answers_after:
                job_id = web.submit(_upload(tmp_path))
            else:
                with pytest.raises((_CommitReplyLost, ControlError)) as raised:
                    web.submit(_upload(tmp_path))
        finally:
            event.remove(Session, hook, lose_reply)
    kept = sorted(p.name for p in uploads.iterdir())
    if committed and database_answers_after:
        assert kept == [f"{job_id}.zip"]
        with rt.db.session() as s:
            assert repo.get_job(s, job_id).status == "PENDING"
        assert _queued_expand_messages(rt) == [job_id]  # submitted: its message was sent
    elif database_answers_after:  # the server rolled back: nothing names the upload
        assert raised.type is _CommitReplyLost and kept == []
        assert _queued_expand_messages(rt) == []
    else:
        text = str(raised.value)
        job_id = text.split()[6]
        assert raised.type is ControlError and "cannot be known" in text and f"uploads/{job_id}.zip is kept" in text
        assert kept == [f"{job_id}.zip"]
        with rt.db.session() as s:  # it had been committed: the reaper will send it
            assert repo.get_job(s, job_id).status == "PENDING"
        assert _queued_expand_messages(rt) == []


def _queued_expand_messages(rt) -> list[str]:
    """The job ids of the expand messages waiting in this test's broker."""
    import base64
    import json

    import redis

    client = redis.Redis.from_url(rt.settings.broker_url)
    found = []
    for queue in client.keys("*"):
        if client.type(queue) != b"list":
            continue
        for raw in client.lrange(queue, 0, -1):
            message = json.loads(raw)
            if message.get("headers", {}).get("task", "").endswith("expand_zip_and_dispatch_tasks"):
                body = json.loads(base64.b64decode(message["body"]))
                found.append(body[0][0])
    return found


def test_submit_wait_json_timeout_and_report_to_a_bad_path(rt, tmp_path):
    out = _ctl(rt, "submit", str(_upload(tmp_path)), "--wait", "--json", "--timeout", "1")  # no worker runs
    _one_line_error(out, "still PENDING after 1 s")
    job_id = rt.stack.submit(make_zip({"b.sql": "select 1\n"}))
    workflow.expand_job(rt, job_id, lambda messages: None)
    with rt.db.session() as s:
        (task,) = repo.list_tasks(s, job_id)
    workflow.lint_task(rt, task.id, "test-host")  # the last file: the job ends, its summary is written
    out = _ctl(rt, "report", job_id, "-f", "sarif", "-o", str(tmp_path / "missing" / "r.sarif"))
    _one_line_error(out, "cannot write", "No such file or directory")
    assert _ctl(rt, "report", job_id, "-f", "sarif", "-o", str(tmp_path / "r.sarif")).returncode == 0
    assert '"version":"2.1.0"' in (tmp_path / "r.sarif").read_text().replace(" ", "")


def test_control_commands_of_one_home_run_one_at_a_time(rt):
    """While one start/stop/restart/reload holds the home (here: this test holds its lock), another
    fails at once with a clear line, and starts no second supervisord."""
    import fcntl

    run_dir = rt.settings.home.resolve() / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "sqlcheckctl.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for command in ("start", "stop", "restart", "reload"):
            _one_line_error(_ctl(rt, command), "another sqlcheckctl start, stop, restart or reload is running")
        assert not (run_dir / "supervisord.pid").exists()
    assert _ctl(rt, "stop").stdout.strip() == "sqlcheck is not running"  # the lock is free again


def test_start_and_restart_of_a_home_systemd_runs_point_to_systemctl(rt, tmp_path, monkeypatch):
    """With the unit stopped, `start` (and `restart`, which starts) used to launch a supervisord
    outside systemd: it held the socket, and the unit then failed to start every 5 s."""
    from sqlcheck import control
    from sqlcheck.settings import load_settings
    from sqlcheck.supervisor_config import render_systemd_unit

    plan = control.make_plan(rt.settings)
    unit = tmp_path / "sqlcheck.service"
    unit.write_text(render_systemd_unit(plan))
    monkeypatch.setattr(control, "SYSTEMD_UNIT", unit)
    for command in (control.start, control.restart):
        with pytest.raises(ControlError, match="run by systemd .*systemctl start sqlcheck.service"):
            command(rt.settings, 5)
    assert not (rt.settings.home.resolve() / "run" / "supervisord.pid").exists()
    unit.write_text(render_systemd_unit(control.make_plan(load_settings(
        environ={**rt.stack.env, "SQLCHECK_HOME": str(tmp_path / "another-home")}))))
    assert not control.run_by_systemd(plan)  # the unit of another home


def test_stop_on_a_home_never_started_creates_nothing(rt, tmp_path):
    home = tmp_path / "never-started"
    out = _ctl(rt, "stop", SQLCHECK_HOME=str(home))
    assert out.returncode == 0 and out.stdout.strip() == "sqlcheck is not running" and not home.exists()


def test_status_and_health_of_a_home_never_started_create_nothing(rt, tmp_path):
    """Looking used to create the embedded SQLite database (as root, in the service's home)."""
    home = tmp_path / "never-started"
    status = _ctl(rt, "status", "--json", SQLCHECK_HOME=str(home))
    health = _ctl(rt, "health", "--json", SQLCHECK_HOME=str(home))
    assert not home.exists()
    assert json.loads(status.stdout)["state"] == "stopped" and "no database yet" in status.stdout
    database = json.loads(health.stdout)["checks"]["database"]
    assert health.returncode != 0 and not database["ok"] and "no database yet" in database["detail"]
