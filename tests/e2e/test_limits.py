"""Time limits, the RSS watchdog and dead children, with real worker processes.

Files misbehave on purpose through the test-only fault directives
(sqlcheck/faults.py, SQLCHECK_ENABLE_FAULTS=1). Limits are small so each test
takes seconds: soft 2 s, hard 4 s, RSS 300 MiB. In every case the other file of
the job is linted and the job reaches its terminal status. Each test runs twice: one
message per file, and both files in one batch message (the limits then hold per file).
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter

import psutil
import pytest

from tests.helpers import make_zip, wait_until

LIMITS = {
    "SQLCHECK_ENABLE_FAULTS": "1",
    "SQLCHECK_SOFT_TIME_LIMIT_S": "2",
    "SQLCHECK_HARD_TIME_LIMIT_S": "4",
    "SQLCHECK_CHILD_MAX_RSS_MB": "300",
    "SQLCHECK_CHILD_RECYCLE_RSS_MB": "250",
    "SQLCHECK_MAX_ATTEMPTS": "3",
}
GOOD_SQL = "SELECT a FROM t\n"


#: for the SIGKILL tests: Celery may notice a dead child only at its next pool check (up to ~5 s);
#: a 4 s hard limit could fire first on a task whose child is already gone
KILL_LIMITS = {**LIMITS, "SQLCHECK_SOFT_TIME_LIMIT_S": "20", "SQLCHECK_HARD_TIME_LIMIT_S": "30"}


@pytest.fixture(params=["single", "batch"])
def batch(request) -> str:
    return request.param


@pytest.fixture
def single() -> str:
    """For the tests whose batch case another test already covers (keeps the suite short)."""
    return "single"


def _job(stack, bad_sql: str, limits=LIMITS, batch="single"):
    files = "1" if batch == "single" else "8"
    worker = stack.start_worker(concurrency=1, extra_env={**limits, "SQLCHECK_LINT_BATCH_MAX_FILES": files})
    job_id = stack.submit(make_zip({"bad.sql": bad_sql, "good.sql": GOOD_SQL}))
    return worker, job_id


def _check_messages(worker, batch: str) -> None:
    """The files really travelled the way the test says: two single messages, or one batch."""
    log = worker.log()
    if batch == "single":
        assert "process_sql_files[" not in log and log.count("process_sql_file[") >= 2
    else:
        assert "process_sql_files[batch-" in log


def _tasks(view):
    return {t["archive_member"]: t for t in view["tasks"]}


def test_soft_time_limit_fails_the_file_as_timeout(pg_stack, batch):
    worker, job_id = _job(pg_stack, "-- sqlcheck-fault: sleep_s=30\nSELECT 1\n", batch=batch)
    view = pg_stack.wait_job(job_id, 90)
    _check_messages(worker, batch)
    tasks = _tasks(view)
    assert tasks["bad.sql"]["status"] == "FAILURE"
    assert tasks["bad.sql"]["failure_reason"] == "timeout"
    assert "soft limit" in tasks["bad.sql"]["error_message"]
    assert tasks["good.sql"]["status"] == "SUCCESS"
    assert view["status"] == "PARTIAL_SUCCESS" and view["failed_tasks"] == 1 and view["succeeded_tasks"] == 1


def test_hard_time_limit_is_recorded_once_by_the_parent(pg_stack, batch):
    worker, job_id = _job(pg_stack, "-- sqlcheck-fault: sleep_s=60 ignore_soft=1\nSELECT 1\n", batch=batch)
    view = pg_stack.wait_job(job_id, 90)
    _check_messages(worker, batch)
    bad = _tasks(view)["bad.sql"]
    assert bad["status"] == "FAILURE" and bad["failure_reason"] == "timeout"
    assert "hard limit" in bad["error_message"]
    assert bad["attempts"] == 1  # acked on timeout: not redelivered
    assert _tasks(view)["good.sql"]["status"] == "SUCCESS"
    assert view["status"] == "PARTIAL_SUCCESS"
    log = worker.log()
    assert "ignoring the soft time limit" in log
    # Celery 5.7 fires task_failure twice for one hard timeout; only the first write changes the row.
    assert log.count(f"task={bad['id']} FAILURE timeout") == 1, log[-4000:]
    assert "MainProcess" in log.split(f"task={bad['id']} FAILURE timeout")[0].rsplit("\n", 1)[-1]
    if batch == "batch":  # bad.sql is larger, so it ran first: the parent sent good.sql again
        assert f"task={_tasks(view)['good.sql']['id']} and 0 more: not started when the batch was killed" in log


def test_rss_over_the_limit_fails_the_file_as_memory(pg_stack, batch):
    worker, job_id = _job(pg_stack, "-- sqlcheck-fault: alloc_mb=1200 hold_s=20\nSELECT 1\n", batch=batch)
    view = pg_stack.wait_job(job_id, 90)
    _check_messages(worker, batch)
    bad = _tasks(view)["bad.sql"]
    assert bad["status"] == "FAILURE" and bad["failure_reason"] == "memory", bad
    assert "SQLCHECK_CHILD_MAX_RSS_MB=300" in bad["error_message"]
    assert _tasks(view)["good.sql"]["status"] == "SUCCESS"
    assert view["status"] == "PARTIAL_SUCCESS"
    assert "MiB: killed; failing the file" in worker.log()


def test_the_rss_limit_holds_while_a_warm_stop_waits_for_the_file(pg_stack, single):
    """On SIGTERM the worker stops its steps in reverse order: the watchdog before the pool, which
    then waits for the file in flight. A file that balloons during that wait must still be
    killed and failed as memory, not grow until the kernel's OOM killer (or finish)."""
    worker, job_id = _job(pg_stack, "-- sqlcheck-fault: alloc_after_s=2 alloc_mb=1200 hold_s=20\nSELECT 1\n",
                          limits=KILL_LIMITS)
    view = _view_fn(pg_stack, job_id)
    _child_running(worker, view, "bad.sql")
    worker.proc.send_signal(signal.SIGTERM)  # warm stop while bad.sql waits to allocate
    bad = wait_until(lambda: (t := _tasks(view())["bad.sql"])["status"] != "IN_PROGRESS" and t, 60, "bad.sql to end")
    assert bad["status"] == "FAILURE" and bad["failure_reason"] == "memory", bad
    worker.proc.wait(60)  # the warm stop then ends
    assert "MiB: killed; failing the file" in worker.log()


def _child_running(worker, view_fn, member):
    """The pool child pid once `member` is IN_PROGRESS (concurrency 1: the only child)."""
    def ready():
        view = view_fn()
        task = view and _tasks(view).get(member)
        if task and task["status"] == "IN_PROGRESS":
            kids = worker.child_pids()
            return kids[0] if len(kids) == 1 else None
        return None

    return wait_until(ready, 60, f"{member} in progress", interval_s=0.1)


def _view_fn(stack, job_id):
    from sqlcheck.client import job_view

    db = stack.db()
    return lambda: job_view(db, job_id)


def test_child_sigkilled_mid_file_is_redelivered_and_finishes(pg_stack, single):
    batch = single  # the batch case: test_file_killed_on_every_attempt_ends_worker_lost
    worker, job_id = _job(pg_stack, "-- sqlcheck-fault: sleep_s=3\nSELECT 1\n", KILL_LIMITS, batch=batch)
    pid = _child_running(worker, _view_fn(pg_stack, job_id), "bad.sql")
    os.kill(pid, signal.SIGKILL)
    view = pg_stack.wait_job(job_id, 90)
    _check_messages(worker, batch)
    bad = _tasks(view)["bad.sql"]
    assert bad["status"] == "SUCCESS" and bad["attempts"] == 2, bad
    assert view["status"] == "SUCCESS" and view["succeeded_tasks"] == 2
    assert pid not in worker.child_pids()
    assert psutil.Process(worker.proc.pid).is_running()  # the worker itself survived


def test_file_killed_on_every_attempt_ends_worker_lost(pg_stack, batch):
    worker, job_id = _job(pg_stack, "-- sqlcheck-fault: kill_self=1\nSELECT 1\n", KILL_LIMITS, batch=batch)
    view = pg_stack.wait_job(job_id, 120)
    _check_messages(worker, batch)
    bad = _tasks(view)["bad.sql"]
    assert bad["status"] == "FAILURE" and bad["failure_reason"] == "worker_lost", bad
    assert bad["attempts"] == 3  # SQLCHECK_MAX_ATTEMPTS, then no more runs
    assert _tasks(view)["good.sql"]["status"] == "SUCCESS"
    assert view["status"] == "PARTIAL_SUCCESS"


#: larger than a faulty file, so a batch (largest first) lints them before it: the kill finds
#: them linted, their result files written and their rows not recorded yet (a batch records its
#: files together at its end)
EARLIER_SQL = "SELECT a FROM t\n-- " + "x" * 200 + "\n"


@pytest.mark.parametrize("fault,reason", [
    ("sleep_s=60 ignore_soft=1", "timeout"),
    ("alloc_mb=1200 hold_s=20", "memory"),
    ("kill_self=1", "worker_lost"),
])
def test_files_linted_before_a_kill_keep_their_results(pg_stack, fault, reason):
    limits = KILL_LIMITS if reason == "worker_lost" else LIMITS
    worker = pg_stack.start_worker(concurrency=1, extra_env={**limits, "SQLCHECK_LINT_BATCH_MAX_FILES": "8"})
    job_id = pg_stack.submit(make_zip({
        "bad.sql": f"-- sqlcheck-fault: {fault}\nSELECT 1\n",
        "early1.sql": EARLIER_SQL,
        "early2.sql": EARLIER_SQL.replace("a", "b"),
    }))
    view = pg_stack.wait_job(job_id, 120)
    _check_messages(worker, "batch")
    tasks = _tasks(view)
    assert (tasks["bad.sql"]["status"], tasks["bad.sql"]["failure_reason"]) == ("FAILURE", reason)
    assert view["status"] == "PARTIAL_SUCCESS" and view["succeeded_tasks"] == 2
    log = worker.log()
    for member in ("early1.sql", "early2.sql"):
        task = tasks[member]
        assert task["status"] == "SUCCESS", task
        assert task["duration_s"] is None  # recorded from the result file, not linted again
        written = json.loads((pg_stack.share / task["result_file_path"]).read_text("utf-8"))
        assert task["violation_count"] == written["violation_count"] > 0
        assert json.loads(task["rule_counts"]) == dict(Counter(v["code"] for v in written["violations"]))
        success = [line for line in log.splitlines() if f"task={task['id']} SUCCESS:" in line]
        assert len(success) == 1 and "written by an earlier attempt" in success[0], success
        # linted once; a killed child's batch is redelivered, its next claim records the result
        assert log.count(f"task={task['id']} lint started") == task["attempts"] == (2 if reason == "worker_lost" else 1)


def test_idle_child_over_the_recycle_limit_is_replaced_gracefully(pg_stack, single):
    batch = single  # recycling happens between messages, whatever they carry
    limits = {**KILL_LIMITS, "SQLCHECK_CHILD_RECYCLE_RSS_MB": "150", "SQLCHECK_CHILD_MAX_RSS_MB": "600"}
    worker, job_id = _job(pg_stack, "-- sqlcheck-fault: leak_mb=250 sleep_s=1\nSELECT 1\n", limits, batch=batch)
    pid = _child_running(worker, _view_fn(pg_stack, job_id), "bad.sql")
    view = pg_stack.wait_job(job_id, 90)
    _check_messages(worker, batch)
    assert view["status"] == "SUCCESS"  # the leaky file itself is fine: recycling happens between files
    assert [t["attempts"] for t in view["tasks"]] == [1, 1]
    wait_until(lambda: not psutil.pid_exists(pid), 30, f"leaky child {pid} replaced")
    wait_until(lambda: len(worker.child_pids()) == 1, 30, "a fresh child")
    assert psutil.Process(worker.child_pids()[0]).memory_info().rss < 150 * 2**20
