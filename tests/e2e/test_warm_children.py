"""Children start warm: the worker's main process builds the Linters before the pool forks."""

from __future__ import annotations

import re

from tests.helpers import make_zip, wait_until


def test_replaced_children_inherit_the_warm_dialects(stack):
    # every message replaces the child, and every file is its own message
    worker = stack.start_worker(concurrency=1, extra_env={
        "SQLCHECK_WARM_DIALECTS": "postgres, no_such_dialect",
        "SQLCHECK_CHILD_MAX_MESSAGES": "1",
        "SQLCHECK_LINT_BATCH_MAX_FILES": "1",
    })
    files = {f"q{i}.sql": f"select a{i}::int from t where b = 'x'\n" for i in range(3)}
    view = stack.wait_job(stack.submit(make_zip(files), dialect="postgres"), 90)
    assert view["status"] == "SUCCESS" and view["succeeded_tasks"] == 3
    wait_until(lambda: len(re.findall(r"process_sql_file\[[^\]]+\] succeeded", worker.log())) == 3, 10,
               "3 lint messages done")
    log = worker.log()
    linted_by = re.findall(r"ForkPoolWorker-\d+\[(\d+)\] sqlcheck\.workflow: job=\S+ task=\S+ lint started", log)
    assert len(linted_by) == 3 and len(set(linted_by)) == 3, linted_by  # a new child for each message
    built = re.findall(r"(\S+)\[\d+\] sqlcheck\.lint_engine: linter for dialect (\w+) built", log)
    # built once each, by the main process, although three children were replaced
    assert sorted(built) == [("MainProcess", "ansi"), ("MainProcess", "postgres")], built
    assert "linter for 'no_such_dialect' not warmed" in log
