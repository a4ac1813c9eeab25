"""Two worker processes share one job: every file linted once, the job finalized exactly once."""

from __future__ import annotations

import json
import re

from tests.helpers import make_zip, wait_until

N_FILES = 80


def test_two_workers_one_job_finalized_exactly_once(pg_stack):
    files = {f"part{i % 4}/query_{i:03}.sql": f"select id,name from t{i}\nwhere x = {i}\n" for i in range(N_FILES)}
    files["part0/broken.sql"] = bytes(range(256)) * 2  # one file that cannot be analysed
    w1 = pg_stack.start_worker(concurrency=2, name="alpha@node1")
    w2 = pg_stack.start_worker(queues="sql_analysis", concurrency=2, name="beta@node2")
    job_id = pg_stack.submit(make_zip(files))
    view = pg_stack.wait_job(job_id, 120)

    assert view["status"] == "PARTIAL_SUCCESS"
    assert (view["total_tasks"], view["succeeded_tasks"], view["failed_tasks"]) == (N_FILES + 1, N_FILES, 1)
    assert all(t["attempts"] == 1 for t in view["tasks"])
    hosts = {t["worker_hostname"] for t in view["tasks"] if t["status"] == "SUCCESS"}
    assert hosts == {"alpha@node1", "beta@node2"}, "both workers should have linted files of the job"

    summary = json.loads((pg_stack.share / f"jobs/{job_id}/summary.json").read_text())  # there as soon as the status
    finalized_pattern = rf"job={job_id} (?:SUCCESS|PARTIAL_SUCCESS|FAILED): "
    wait_until(lambda: re.search(finalized_pattern, w1.log() + w2.log()), 10, "finalization logged")
    for w in (w1, w2):
        w.stop()  # no process is left that could finalize the job a second time
    logs = w1.log() + w2.log()
    assert len(re.findall(finalized_pattern, logs)) == 1
    for t in view["tasks"]:
        assert len(re.findall(rf"task={t['id']} (?:SUCCESS|FAILURE)", logs)) == 1, t["archive_member"]

    assert summary["tasks_by_status"] == {"SUCCESS": N_FILES, "FAILURE": 1}
    assert summary["failures_by_reason"] == {"decode_error": 1}
    assert summary["violations_by_rule"]["LT09"] == N_FILES
    assert sum(summary["violations_by_file"].values()) == summary["violations_total"]
    results = list((pg_stack.share / f"jobs/{job_id}/results").glob("*.json"))
    assert len(results) == N_FILES
