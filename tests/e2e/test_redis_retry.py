"""A Redis outage inside the lint task, on a real worker with real Celery and Redis.

The test-only directive ``redis_errors=N`` (sqlcheck/faults.py) raises a real
``redis.exceptions.ConnectionError`` in the first N deliveries of the file, counted in
Redis, so the real classification (retries.is_transient) and the real retry path of
tasks.process_sql_file run:

- a short outage is retried with growing delays and the file ends SUCCESS, counted as one
  attempt, with exactly one result file
- an outage longer than every retry ends the file FAILURE with the real error
"""

from __future__ import annotations

import re

from tests.conftest import _make_stack, _reset_pg, _reset_redis
from tests.helpers import make_zip

RETRY_LINE = re.compile(r"task=(\S+) transient error \((\w+): (.*?)\); retry (\d+) in ([\d.]+)s")


def _stack(tmp_path, redis_url, pg_server_url, max_retries: int):
    _reset_redis(redis_url)
    _reset_pg(pg_server_url)
    return _make_stack(tmp_path, pg_server_url, redis_url, SQLCHECK_ENABLE_FAULTS="1",
                       SQLCHECK_RETRY_BASE_DELAY_S="0.5", SQLCHECK_RETRY_MAX_DELAY_S="30",
                       SQLCHECK_MAX_RETRIES=str(max_retries))


def test_redis_error_in_the_task_is_retried_with_growing_delays(tmp_path, redis_url, pg_server_url):
    stack = _stack(tmp_path, redis_url, pg_server_url, max_retries=5)
    try:
        w = stack.start_worker(concurrency=1)
        job_id = stack.submit(make_zip({"flaky.sql": "-- sqlcheck-fault: redis_errors=4\nSELECT 1\n"}))
        view = stack.wait_job(job_id, 60)
        log = w.log()
        task = view["tasks"][0]
        assert view["status"] == "SUCCESS", log[-4000:]
        assert task["status"] == "SUCCESS"
        retries = [m for m in RETRY_LINE.findall(log) if m[0] == task["id"]]
        assert [m[1] for m in retries] == ["ConnectionError"] * 4, log[-4000:]
        assert all("Redis unreachable" in m[2] for m in retries)
        assert [int(m[3]) for m in retries] == [1, 2, 3, 4]
        delays = [float(m[4]) for m in retries]
        assert delays == sorted(delays) and delays[-1] > delays[0], delays  # growing, never shrinking
        assert task["attempts"] == 1  # our own retries of an outage are one attempt, not a dying worker's
        assert log.count(f"task={task['id']} SUCCESS") == 1
        assert "gave up" not in log
        results = list((stack.share / f"jobs/{job_id}/results").iterdir())
        assert [p.name for p in results] == [f"{task['id']}.json"]
    finally:
        for worker in stack.workers:
            worker.stop()


def test_redis_error_outlasting_every_retry_ends_failure_with_the_real_error(tmp_path, redis_url, pg_server_url):
    stack = _stack(tmp_path, redis_url, pg_server_url, max_retries=2)
    try:
        w = stack.start_worker(concurrency=1)
        job_id = stack.submit(make_zip({"down.sql": "-- sqlcheck-fault: redis_errors=9\nSELECT 1\n",
                                        "ok.sql": "SELECT 1\n"}))
        view = stack.wait_job(job_id, 60)
        log = w.log()
        bad = next(t for t in view["tasks"] if t["archive_member"] == "down.sql")
        assert view["status"] == "PARTIAL_SUCCESS", log[-4000:]
        assert bad["status"] == "FAILURE" and bad["failure_reason"] == "internal"
        assert bad["error_message"].startswith("gave up after 2 retries of a transient error: ConnectionError: "
                                               "injected fault: Redis unreachable (delivery 3 of 9)"), bad
        assert sum(1 for m in RETRY_LINE.findall(log) if m[0] == bad["id"]) == 2
        assert f"task={bad['id']} gave up after 2 retries: ConnectionError" in log
        assert bad["attempts"] == 1
        assert "Traceback" not in log
    finally:
        for worker in stack.workers:
            worker.stop()


def test_redis_error_mid_batch_retries_from_that_file_on(tmp_path, redis_url, pg_server_url):
    """Three small files in one batch message; the second hits the outage. The retry carries the
    second and third only: the first is not linted again and every file ends SUCCESS once."""
    stack = _stack(tmp_path, redis_url, pg_server_url, max_retries=5)
    files = {"first.sql": "-- the largest file, so it runs first" + " " * 80 + "\nSELECT 1\n",
             "flaky.sql": "-- sqlcheck-fault: redis_errors=2\nSELECT 1\n",
             "third.sql": "SELECT 3\n"}
    try:
        w = stack.start_worker(concurrency=1)
        job_id = stack.submit(make_zip(files))
        view = stack.wait_job(job_id, 60)
        log = w.log()
        assert view["status"] == "SUCCESS", log[-4000:]
        ids = {t["archive_member"]: t["id"] for t in view["tasks"]}
        assert [m[0] for m in RETRY_LINE.findall(log)] == [ids["flaky.sql"]] * 2
        for member, task_id in ids.items():
            assert log.count(f"task={task_id} SUCCESS") == 1, member
            assert log.count(f"task={task_id} lint started") == (3 if member == "flaky.sql" else 1), member
        assert all(t["attempts"] == 1 for t in view["tasks"])
        received = re.findall(r"process_sql_files\[batch-[^\]]+\] received", log)
        assert len(received) == 3  # the batch, then two retries of its rest
    finally:
        for worker in stack.workers:
            worker.stop()
