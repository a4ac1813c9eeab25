"""The web-service path: a process that never imports sqlcheck.tasks sends the message by name."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import make_zip

CLIENT = """
import json, sys
from pathlib import Path
from sqlcheck.client import Submitter, submit_zip
from sqlcheck.settings import load_settings
job_id = submit_zip(load_settings(), Path(sys.argv[1]), "postgres")
with Submitter(load_settings()) as web:  # a long-lived web process: one client, its connections kept
    again = [web.submit(Path(sys.argv[1]), "postgres") for _ in range(2)]
worker_side = ("sqlcheck.tasks", "sqlcheck.workflow", "sqlcheck.lint_engine", "sqlfluff")
print(json.dumps({"job_id": job_id, "again": again,
                  "loaded": sorted(m for m in sys.modules if m.startswith(worker_side))}))
"""


def test_submit_from_a_process_without_the_task_code(stack, tmp_path):
    worker = stack.start_worker()
    upload = tmp_path / "web-upload.zip"
    sql = "SELECT id\nFROM orders\nWHERE created_at > now() - interval '1 day'\n"
    upload.write_bytes(make_zip({"reports/daily.sql": sql}))
    out = subprocess.run([sys.executable, "-c", CLIENT, str(upload)], env=stack.env, capture_output=True, text=True,
                         timeout=60, check=True)
    sent = json.loads(out.stdout)
    assert sent["loaded"] == [], f"the sender imported worker code: {sent['loaded']}"
    view = stack.wait_job(sent["job_id"], 60)
    assert view["status"] == "SUCCESS" and view["dialect"] == "postgres"
    assert view["source_path"] == f"uploads/{sent['job_id']}.zip"
    (task,) = view["tasks"]
    assert task["archive_member"] == "reports/daily.sql"
    assert task["source_file_path"] == f"jobs/{sent['job_id']}/sources/reports/daily.sql"
    assert (stack.share / task["source_file_path"]).read_text() == sql
    assert (stack.share / view["source_path"]).read_bytes() == upload.read_bytes()
    result = json.loads((stack.share / task["result_file_path"]).read_text())
    assert {k: result[k] for k in ("job_id", "task_id", "archive_member", "encoding", "dialect")} == {
        "job_id": sent["job_id"], "task_id": task["id"], "archive_member": "reports/daily.sql",
        "encoding": "utf-8", "dialect": "postgres"}
    assert result["violations"] == [] and task["violation_count"] == 0
    assert "app.celery_app.tasks.expand_zip_and_dispatch_tasks[" in worker.log()
    assert len({sent["job_id"], *sent["again"]}) == 3
    for job_id in sent["again"]:  # the same upload twice more through one kept client
        again = stack.wait_job(job_id, 60)
        assert again["status"] == "SUCCESS" and again["source_path"] == f"uploads/{job_id}.zip"
        assert [t["archive_member"] for t in again["tasks"]] == ["reports/daily.sql"]
