"""Duplicate delivery: a message may arrive twice (acks_late, visibility timeout, a web retry).

Messages are sent by name through a bare Celery app, exactly as the web service does.
"""

from __future__ import annotations

import json
import re

from sqlcheck.celery_app import LINT_TASK, make_sender, send_expand
from tests.helpers import make_zip, wait_until

FILES = {f"dir{i % 3}/q{i}.sql": f"select a,b from t{i}\n" for i in range(12)}


def finalize_lines(stack, job_id: str) -> list[str]:
    """Log lines written once per finalization (write_summary), across all workers."""
    pattern = re.compile(rf"job={job_id} (SUCCESS|PARTIAL_SUCCESS|FAILED): ")
    return [line for w in stack.workers for line in w.log().splitlines() if pattern.search(line)]


def rows_snapshot(stack, job_id: str) -> dict:
    from sqlcheck.client import job_view

    db = stack.db()
    view = job_view(db, job_id)
    db.engine.dispose()
    return view


def share_files(stack, job_id: str) -> dict[str, bytes]:
    job_dir = stack.share / "jobs" / job_id
    return {p.relative_to(job_dir).as_posix(): p.read_bytes() for p in sorted(job_dir.rglob("*")) if p.is_file()}


def test_expand_message_delivered_twice(stack):
    """Both copies wait in the queue; the second runs while the job is PROCESSING (lints pending)."""
    job_id = stack.submit(make_zip(FILES))
    send_expand(make_sender(stack.settings), job_id)  # the duplicate, before any worker runs
    worker = stack.start_worker(concurrency=1)  # one child: the two copies run one after the other
    view = stack.wait_job(job_id, 90)
    wait_until(lambda: worker.log().count("expand_zip_and_dispatch_tasks[") >= 4, 30,
               "both expand messages received and finished")
    assert view["status"] == "SUCCESS"
    assert view["total_tasks"] == len(FILES) == view["succeeded_tasks"] and view["failed_tasks"] == 0
    assert sorted(t["archive_member"] for t in view["tasks"]) == sorted(FILES)
    assert len({t["id"] for t in view["tasks"]}) == len(FILES)
    assert all(t["attempts"] == 1 for t in view["tasks"]), "a file was linted twice"
    results = [name for name in share_files(stack, job_id) if name.startswith("results/")]
    assert sorted(results) == sorted(f"results/{t['id']}.json" for t in view["tasks"])
    wait_until(lambda: finalize_lines(stack, job_id), 10, "finalization logged")
    # every lint message that was delivered after its row ended must have been ignored
    for t in view["tasks"]:
        linted = worker.log().count(f"task={t['id']} SUCCESS")
        assert linted == 1, f"{t['archive_member']} linted {linted} times"
    assert len(finalize_lines(stack, job_id)) == 1
    sent = [int(n) for n in re.findall(rf"job={job_id} expanded: .*, (\d+) files dispatched", worker.log())]
    assert sent == [len(FILES), 0], "the second delivery must re-send only what was not sent"
    assert f"job={job_id} expanded: already, by an earlier delivery ({len(FILES)} tasks)" in worker.log()
    # tiny files travel in batches: ceil(12 / SQLCHECK_LINT_BATCH_MAX_FILES) messages, each received once
    batches = -(-len(FILES) // stack.settings.lint_batch_max_files)
    assert len(re.findall(r"process_sql_files\[batch-[-0-9a-f]+\] received", worker.log())) == batches
    assert not re.findall(r"process_sql_file\[[-0-9a-f]+\] received", worker.log())
    summary = json.loads((stack.share / f"jobs/{job_id}/summary.json").read_text())
    assert summary["total_tasks"] == len(FILES) and summary["violations_by_rule"] == {"LT01": 12, "LT09": 12}


def test_expand_message_redelivered_after_the_job_ended(stack):
    worker = stack.start_worker(concurrency=2)
    job_id = stack.submit(make_zip(FILES))
    stack.wait_job(job_id, 90)
    before_rows, before_files = rows_snapshot(stack, job_id), share_files(stack, job_id)
    send_expand(make_sender(stack.settings), job_id)
    wait_until(lambda: f"job={job_id} expand: already SUCCESS; duplicate message ignored" in worker.log(), 30,
               "the duplicate expand message ignored")
    assert rows_snapshot(stack, job_id) == before_rows
    assert share_files(stack, job_id) == before_files
    assert len(finalize_lines(stack, job_id)) == 1


def test_lint_message_for_a_terminal_task_changes_nothing(stack):
    files = {"ok.sql": "select a,b from t\n", "binary.sql": bytes(range(256)) * 4}
    worker = stack.start_worker(concurrency=2)
    job_id = stack.submit(make_zip(files))
    view = stack.wait_job(job_id, 90)
    assert view["status"] == "PARTIAL_SUCCESS"
    by_member = {t["archive_member"]: t for t in view["tasks"]}
    assert by_member["binary.sql"]["failure_reason"] == "decode_error"
    before_rows, before_files = rows_snapshot(stack, job_id), share_files(stack, job_id)
    sender = make_sender(stack.settings)
    for t in view["tasks"]:  # one SUCCESS and one FAILURE row, each delivered again, twice
        for _ in range(2):
            sender.send_task(LINT_TASK, args=[t["id"]], queue="sql_analysis")
    for t in view["tasks"]:
        wait_until(lambda t=t: worker.log().count(f"task={t['id']} already {t['status']}; duplicate message ignored") == 2,
                   30, f"duplicates of {t['archive_member']} ignored")
    assert rows_snapshot(stack, job_id) == before_rows
    assert share_files(stack, job_id) == before_files
    assert len(finalize_lines(stack, job_id)) == 1
