"""Reliability under faults, with real workers and private servers we are free to break.

- a duplicate delivery of a running task waits for the lock and never lints twice
- a database outage is retried with growing delays and ends SUCCESS after recovery
- a permanent error is never retried
- a send that fails while Redis is down leaves rows PENDING; the reaper sends them later
- a task whose whole worker host was SIGKILLed is re-sent by the reaper (not by the visibility timeout)
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from sqlcheck import workflow
from sqlcheck.chaos_services import PrivatePostgres, PrivateRedis
from sqlcheck.reaper import Sender
from sqlcheck.workflow import Runtime
from tests.conftest import _make_stack, _reset_pg, _reset_redis
from tests.helpers import SQLCHECKCTL, make_zip, wait_until

#: about 2-5 s of linting on this machine: long enough to act while it runs
SLOW_SQL = ("select a.x, b.y, sum(c.z) as total from alpha a join beta b on a.id = b.id "
            "left join gamma c on c.k = b.k where a.q > 1 and b.r < 2 group by a.x, b.y;\n") * 60



def _view(stack, job_id):
    from sqlcheck.client import job_view

    db = stack.db()
    try:
        return job_view(db, job_id)
    finally:
        db.engine.dispose()


def _expand_without_sending(stack, job_id, send=lambda ids: None) -> Runtime:
    """Expand in this process (no zip worker): rows exist, messages are ours to send."""
    rt = Runtime.from_settings(stack.settings)
    workflow.expand_job(rt, job_id, send)
    return rt


@pytest.fixture
def private_pg(tmp_path_factory):
    pg = PrivatePostgres(tmp_path_factory.mktemp("pg"))
    pg.init()
    pg.start()
    yield pg
    pg.destroy()


@pytest.fixture
def private_redis(tmp_path_factory):
    r = PrivateRedis(tmp_path_factory.mktemp("redis"))
    r.start()
    yield r
    r.stop(kill=True)


def test_duplicate_delivery_waits_for_the_lock_and_lints_once(pg_stack):
    pg_stack.env["SQLCHECK_LOCK_RETRY_DELAY_S"] = "1"
    pg_stack.env["SQLCHECK_ENABLE_FAULTS"] = "1"
    w = pg_stack.start_worker(queues="zip_processing,sql_analysis", concurrency=2)
    # 10 s whatever the parser's speed: far more 1 s waits than Celery's default 3 retries
    job_id = pg_stack.submit(make_zip({"slow.sql": "-- sqlcheck-fault: sleep_s=10\nSELECT 1\n"}))
    task = wait_until(lambda: (v := _view(pg_stack, job_id)) and v["tasks"] and v["tasks"][0]["status"] == "IN_PROGRESS"
                      and v["tasks"][0], 60, "the slow task running")
    Sender(pg_stack.settings).lint([task["id"]])  # the same message again, by name, while it runs
    wait_until(lambda: f"task={task['id']} is being linted elsewhere" in w.log(), 30, "the duplicate to find the lock")
    view = pg_stack.wait_job(job_id, 120)
    try:
        wait_until(lambda: f"task={task['id']} already SUCCESS; duplicate message ignored" in w.log(), 60,
                   "the duplicate to see the terminal row and skip")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{w.log()[-6000:]}") from None
    log = w.log()
    assert view["status"] == "SUCCESS"
    assert view["tasks"][0]["attempts"] == 1
    assert log.count(f"task={task['id']} is being linted elsewhere") > 3  # kept waiting, never dropped
    assert "MaxRetriesExceeded" not in log
    assert log.count(f"task={task['id']} lint started") == 1
    assert log.count(f"task={task['id']} SUCCESS") == 1
    results = list((pg_stack.share / f"jobs/{job_id}/results").iterdir())
    assert [p.name for p in results] == [f"{task['id']}.json"]


def _two_files_then_postgres_down(tmp_path, redis_url, private_pg, max_delay_s: float):
    """(stack, analysis worker, job id, task ids): a job of two files expanded here, none of them
    sent, and the private PostgreSQL stopped."""
    _reset_redis(redis_url)
    stack = _make_stack(tmp_path, private_pg.url, redis_url, SQLCHECK_RETRY_BASE_DELAY_S="0.5",
                        SQLCHECK_RETRY_MAX_DELAY_S=str(max_delay_s), SQLCHECK_MAX_RETRIES="10")
    w = stack.start_worker(queues="sql_analysis", concurrency=1)
    try:
        job_id = stack.submit(make_zip({"a.sql": "SELECT 1\n", "b.sql": "select a from t\n"}))
        rt = _expand_without_sending(stack, job_id)
        task_ids = [t["id"] for t in _view(stack, job_id)["tasks"]]
        rt.db.engine.dispose()
        private_pg.stop()
    except BaseException:
        w.stop()
        raise
    return stack, w, job_id, task_ids


def test_database_outage_is_retried_with_growing_delays(tmp_path, redis_url, private_pg):
    stack, w, job_id, task_ids = _two_files_then_postgres_down(tmp_path, redis_url, private_pg, max_delay_s=30)
    try:
        Sender(stack.settings).lint(task_ids)
        retry_line = re.compile(r"task=(\S+) transient error \((\w+).*; retry (\d+) in ([\d.]+)s")
        wait_until(lambda: min(sum(1 for m in retry_line.findall(w.log()) if m[0] == t) for t in task_ids) >= 3, 60,
                   "three retries of each task while PostgreSQL is down")
        private_pg.start()
        view = stack.wait_job(job_id, 90)
        assert view["status"] == "SUCCESS"
        retries = [m for m in retry_line.findall(w.log()) if m[0] == task_ids[0]]
        assert len(retries) >= 3 and all(m[1] == "OperationalError" for m in retries)
        numbers = [int(m[2]) for m in retries]
        delays = [float(m[3]) for m in retries]
        assert numbers == list(range(1, len(numbers) + 1))
        assert delays == sorted(delays) and delays[-1] > delays[0], delays  # growing, never shrinking
        assert "gave up" not in w.log()
    finally:
        for worker in stack.workers:
            worker.stop()


def test_database_outage_before_a_batch_lints_is_retried_too(tmp_path, redis_url, private_pg):
    """A batch message opens its connections before its first file: an outage there escaped the
    task (no retry, message acked), and its files waited minutes for the reaper."""
    from sqlcheck.celery_app import ANALYSIS_QUEUE, LINT_BATCH_TASK, make_sender

    stack, w, job_id, task_ids = _two_files_then_postgres_down(tmp_path, redis_url, private_pg, max_delay_s=2)
    try:
        sender = make_sender(stack.settings)
        sender.send_task(LINT_BATCH_TASK, args=[task_ids], task_id=f"batch-{task_ids[0]}", queue=ANALYSIS_QUEUE)
        wait_until(lambda: w.log().count(f"task={task_ids[0]} transient error (OperationalError") >= 2, 60,
                   "two retries of the batch while PostgreSQL is down")
        private_pg.start()
        view = stack.wait_job(job_id, 90)
        assert view["status"] == "SUCCESS" and all(t["attempts"] == 1 for t in view["tasks"])
        assert "gave up" not in w.log()
    finally:
        for worker in stack.workers:
            worker.stop()


@pytest.mark.parametrize("message", ["batch", "single file"])
def test_a_retried_message_finalizes_the_job_its_outage_left_unfinished(pg_stack, message):
    """An outage while finalizing sends the message again; its files are recorded by then, so the
    retry lints nothing, and it used to finalize nothing either: the job waited for the reaper."""
    from sqlcheck.celery_app import ANALYSIS_QUEUE, LINT_BATCH_TASK, LINT_TASK, make_sender

    files = {"a.sql": "SELECT 1\n", "b.sql": "select a from t\n"} if message == "batch" else {"a.sql": "SELECT 1\n"}
    job_id = pg_stack.submit(make_zip(files))
    rt = _expand_without_sending(pg_stack, job_id)
    with workflow.file_connections(rt) as (conn, claims):
        task_ids = [t["id"] for t in _view(pg_stack, job_id)["tasks"]]
        done = [workflow.lint_file(rt, conn, claims, t, "test-host") for t in task_ids]
        workflow.record_linted(rt, conn, done)  # recorded; the finalize that follows is what failed
    rt.db.engine.dispose()
    assert _view(pg_stack, job_id)["status"] == "PROCESSING"
    w = pg_stack.start_worker(queues="sql_analysis", concurrency=1)
    sender = make_sender(pg_stack.settings)
    if message == "batch":
        sender.send_task(LINT_BATCH_TASK, args=[task_ids], kwargs={"transient_retries": 1},
                         task_id=f"batch-{task_ids[0]}", queue=ANALYSIS_QUEUE)
    else:
        sender.send_task(LINT_TASK, args=[task_ids[0]], kwargs={"transient_retries": 1}, task_id=task_ids[0],
                         queue=ANALYSIS_QUEUE)
    view = pg_stack.wait_job(job_id, 60)
    assert view["status"] == "SUCCESS" and all(t["attempts"] == 1 for t in view["tasks"]), view
    assert (pg_stack.share / f"jobs/{job_id}/summary.json").is_file()
    assert "lint started" not in w.log()  # nothing linted again


def test_outage_longer_than_every_retry_gives_up_and_the_reaper_finishes_it(tmp_path, redis_url, private_pg):
    _reset_redis(redis_url)
    stack = _make_stack(tmp_path, private_pg.url, redis_url, SQLCHECK_RETRY_BASE_DELAY_S="0.2",
                        SQLCHECK_RETRY_MAX_DELAY_S="1", SQLCHECK_MAX_RETRIES="2")
    try:
        w = stack.start_worker(queues="sql_analysis", concurrency=1)
        job_id = stack.submit(make_zip({"a.sql": "SELECT 1\n"}))
        rt = _expand_without_sending(stack, job_id)
        task_id = _view(stack, job_id)["tasks"][0]["id"]
        rt.db.engine.dispose()
        private_pg.stop()
        Sender(stack.settings).lint([task_id])
        wait_until(lambda: f"task={task_id} gave up after 2 retries: OperationalError" in w.log(), 60, "give up")
        assert w.log().count(f"task={task_id} transient error") == 2
        private_pg.start()
        assert _view(stack, job_id)["tasks"][0]["status"] == "PENDING"  # not lost: the row still waits
        env = {**stack.env, "SQLCHECK_REAPER_LOST_AFTER_S": "0"}
        out = subprocess.run([SQLCHECKCTL, "reap"], env=env, capture_output=True, text=True, timeout=60)
        assert f"task={task_id} re-sent: PENDING and its message is gone" in out.stderr, out.stderr
        view = stack.wait_job(job_id, 60)
        assert view["status"] == "SUCCESS" and view["tasks"][0]["attempts"] == 1
    finally:
        for worker in stack.workers:
            worker.stop()


def test_permanent_errors_are_not_retried(pg_stack):
    w = pg_stack.start_worker()
    job_id = pg_stack.submit(make_zip({"binary.sql": bytes(range(256)) * 8, "ok.sql": "SELECT 1\n"}))
    view = pg_stack.wait_job(job_id, 60)
    bad = next(t for t in view["tasks"] if t["archive_member"] == "binary.sql")
    assert view["status"] == "PARTIAL_SUCCESS"
    assert bad["status"] == "FAILURE" and bad["failure_reason"] == "decode_error" and bad["attempts"] == 1
    assert f"task={bad['id']} transient error" not in w.log()
    assert "retry" not in w.log().lower()


def test_send_failure_while_redis_is_down_is_resent_by_the_reaper(tmp_path, private_redis, pg_server_url):
    _reset_pg(pg_server_url)
    stack = _make_stack(tmp_path, pg_server_url, private_redis.url)
    try:
        stack.start_worker(queues="sql_analysis", concurrency=2)
        job_id = stack.submit(make_zip({f"d/f{i}.sql": "SELECT 1\n" for i in range(5)}))
        private_redis.stop(kill=True)
        rt = _expand_without_sending(stack, job_id, Sender(stack.settings).lint)
        view = _view(stack, job_id)
        assert {t["status"] for t in view["tasks"]} == {"PENDING"}
        assert all(t["dispatched_at"] is None for t in view["tasks"]), "a failed send must not mark rows sent"
        rt.db.engine.dispose()
        private_redis.start()
        env = {**stack.env, "SQLCHECK_REAPER_LOST_AFTER_S": "0"}
        out = subprocess.run([SQLCHECKCTL, "reap"], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "resent_tasks=5" in out.stdout
        assert out.stderr.count("re-sent: PENDING and never sent") == 5
        assert stack.wait_job(job_id, 60)["status"] == "SUCCESS"
    finally:
        for worker in stack.workers:
            worker.stop()


def test_reaper_resends_the_task_of_a_killed_host(tmp_path, redis_url, pg_server_url):
    _reset_redis(redis_url)
    _reset_pg(pg_server_url)
    stack = _make_stack(tmp_path, pg_server_url, redis_url, SQLCHECK_SOFT_TIME_LIMIT_S="8",
                        SQLCHECK_HARD_TIME_LIMIT_S="10", SQLCHECK_REAPER_MARGIN_S="2",
                        SQLCHECK_VISIBILITY_TIMEOUT_S="3600", SQLCHECK_REAPER_INTERVAL_S="1")
    reaper = None
    try:
        # the doomed host takes 5 s on the file (the fault; the rescuer has faults off), so the kill
        # lands while it is IN_PROGRESS however fast this machine lints
        doomed = stack.start_worker(queues="sql_analysis", concurrency=1, name="doomed@h1",
                                    extra_env={"SQLCHECK_ENABLE_FAULTS": "1"})
        job_id = stack.submit(make_zip({"slow.sql": "-- sqlcheck-fault: sleep_s=5\n" + SLOW_SQL[: len(SLOW_SQL) // 3]}))
        sender = Sender(stack.settings)
        _expand_without_sending(stack, job_id, lambda messages: sender.lint([t for m in messages for t in m]))
        wait_until(lambda: _view(stack, job_id)["tasks"][0]["status"] == "IN_PROGRESS", 30, "the task running")
        doomed.kill()  # main process and child: the message waits in `unacked` for an hour
        killed_at = time.monotonic()
        stack.start_worker(queues="sql_analysis", concurrency=1, name="rescuer@h2")
        reaper_log = open(tmp_path / "reaper.log", "wb")
        reaper = subprocess.Popen([SQLCHECKCTL, "reap", "--loop"], env=stack.env, stdout=reaper_log,
                                  stderr=subprocess.STDOUT)
        view = stack.wait_job(job_id, 90)
        took = time.monotonic() - killed_at
        task = view["tasks"][0]
        assert view["status"] == "SUCCESS" and task["attempts"] == 2 and task["worker_hostname"] == "rescuer@h2"
        assert took < 60, f"recovered after {took:.0f}s: the reaper, not the visibility timeout"
        assert "re-sent: IN_PROGRESS since" in (tmp_path / "reaper.log").read_text()
        assert len(list((stack.share / f"jobs/{job_id}/results").iterdir())) == 1
    finally:
        if reaper:
            reaper.terminate()
            try:
                reaper.wait(10)
            except subprocess.TimeoutExpired:
                reaper.kill()
                reaper.wait(10)
        for worker in stack.workers:
            worker.stop()
