"""Small files travel in batch messages; each file keeps its own row, limits and lock.

Real workers on real Redis and databases. The batch settings are made small so that a
dozen files show every case: lone large files, full and partial batches, a batch that
runs past the soft limit, and a file whose lock another delivery holds.
"""

from __future__ import annotations

import json
import re

import redis

from sqlcheck import lint_engine
from sqlcheck import repository as repo
from sqlcheck.locks import lock_key
from tests.helpers import make_zip, wait_until

BATCHES = {"SQLCHECK_LINT_BATCH_MAX_FILES": "4", "SQLCHECK_LINT_BATCH_MAX_BYTES": "200"}


def _received(log: str) -> tuple[int, int]:
    """(single-file messages, batch messages) the worker received."""
    return (len(re.findall(r"process_sql_file\[[^\]]+\] received", log)),
            len(re.findall(r"process_sql_files\[batch-[^\]]+\] received", log)))


def test_small_files_share_messages_large_files_go_alone(stack):
    large = {f"big{i}.sql": "select a, b from t where x = 1\n" * 10 for i in range(2)}  # 320 bytes > 200
    small = {f"s/{i:02d}.sql": f"select c{i} from t{i}\n" for i in range(10)}
    files = {**large, **small}
    worker = stack.start_worker(extra_env=BATCHES)
    job_id = stack.submit(make_zip(files))
    view = stack.wait_job(job_id, 90)
    assert view["status"] == "SUCCESS" and view["succeeded_tasks"] == len(files)
    assert all(t["attempts"] == 1 for t in view["tasks"])
    wait_until(lambda: _received(worker.log()) == (2, 3), 10, "2 single and 3 batch messages received")
    assert f"job={job_id} expanded: 12 tasks" in worker.log() and "12 files dispatched in 5 messages" in worker.log()
    # each file's result is what linting it alone gives
    for task in view["tasks"]:
        result = json.loads((stack.share / task["result_file_path"]).read_text())
        alone = lint_engine.lint_sql(files[task["archive_member"]], task["archive_member"], "ansi")
        assert [(v["code"], v["start_line_no"], v["start_line_pos"]) for v in result["violations"]] == [
            (v["code"], v["start_line_no"], v["start_line_pos"]) for v in alone.violations], task["archive_member"]
        assert task["violation_count"] == len(alone.violations)


def test_a_batch_past_the_soft_limit_sends_the_rest_on(pg_stack):
    limits = {"SQLCHECK_ENABLE_FAULTS": "1", "SQLCHECK_SOFT_TIME_LIMIT_S": "2", "SQLCHECK_HARD_TIME_LIMIT_S": "4"}
    files = {f"slow{i}.sql": f"-- sqlcheck-fault: sleep_s=1.2\nSELECT {i}\n" for i in range(3)}
    worker = pg_stack.start_worker(concurrency=1, extra_env={**limits, **BATCHES})
    job_id = pg_stack.submit(make_zip(files))
    view = pg_stack.wait_job(job_id, 60)
    # each file is under its soft limit: all succeed, though the three together are not
    assert view["status"] == "SUCCESS" and view["succeeded_tasks"] == 3
    assert all(t["attempts"] == 1 for t in view["tasks"])
    assert "and 0 more: batch ran past the soft limit; sent on as a new batch" in worker.log()
    assert _received(worker.log()) == (1, 1)  # the one file left goes as a single-file message


def test_a_file_locked_elsewhere_is_sent_on_alone_and_waits(pg_stack):
    files = {f"f{i}.sql": f"select {i}\n" for i in range(3)}
    job_id = pg_stack.submit(make_zip(files))  # queued: no worker yet
    held = repo.task_id_for(job_id, "f1.sql")
    client = redis.Redis.from_url(pg_stack.settings.broker_url)
    client.set(lock_key(held), "other@node|1|token", ex=300)  # another node's live delivery
    worker = pg_stack.start_worker(concurrency=1, extra_env={**BATCHES, "SQLCHECK_LOCK_RETRY_DELAY_S": "1"})
    wait_until(lambda: f"task={held} is being linted elsewhere; checking again" in worker.log(), 60,
               "the file sent on alone waiting for the lock")
    client.delete(lock_key(held))  # that delivery ends (its lock would expire)
    view = pg_stack.wait_job(job_id, 60)
    assert view["status"] == "SUCCESS" and all(t["attempts"] == 1 for t in view["tasks"])
    log = worker.log()
    assert f"tasks {held} are being linted elsewhere; each is sent on alone" in log
    assert f"process_sql_file[{held}] received" in log
    assert f"task={held} is being linted elsewhere; checking again" in log
    assert log.count(f"task={held} SUCCESS") == 1
