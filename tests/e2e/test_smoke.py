"""The smallest end-to-end run: one ZIP, real worker, both databases."""

import json
from datetime import datetime, timedelta

from tests.helpers import make_zip


def test_zip_with_two_same_named_files_in_two_folders(stack):
    stack.start_worker()
    job_id = stack.submit(make_zip({"a/x.sql": "select a,b from t\n", "b/x.sql": "SELECT 1\n", "notes.txt": "x"}))
    view = stack.wait_job(job_id, 60)
    assert view["status"] == "SUCCESS"
    assert view["total_tasks"] == 2 and view["succeeded_tasks"] == 2
    members = sorted(t["archive_member"] for t in view["tasks"])
    assert members == ["a/x.sql", "b/x.sql"]
    by_member = {t["archive_member"]: t for t in view["tasks"]}
    assert by_member["a/x.sql"]["violation_count"] == 2
    assert by_member["b/x.sql"]["violation_count"] == 0
    result = json.loads((stack.share / by_member["a/x.sql"]["result_file_path"]).read_text())
    assert {v["code"] for v in result["violations"]} == {"LT09", "LT01"}
    summary = json.loads((stack.share / f"jobs/{job_id}/summary.json").read_text())
    assert summary["violations_by_rule"] == {"LT01": 1, "LT09": 1}
    assert summary["skipped_members"] == [{"member": "notes.txt", "reason": "not a .sql file"}]
    # the same contract on both databases: times with their UTC offset, the dialect used
    finished = datetime.fromisoformat(summary["finished_at"])
    assert finished.utcoffset() == timedelta(0)
    assert all(datetime.fromisoformat(view[k]).utcoffset() is not None for k in ("created_at", "started_at", "finished_at"))
    assert (summary["dialect"], summary["configuration"]["dialect"]) == (None, "ansi")
    sarif = json.loads((stack.share / f"jobs/{job_id}/report.sarif").read_text())
    run = sarif["runs"][0]
    assert run["properties"]["dialect"] == "ansi"
    assert datetime.fromisoformat(run["invocations"][0]["endTimeUtc"]) == finished
