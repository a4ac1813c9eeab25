"""A real job's report.sarif and `sqlcheckctl report` formats, read by independent readers."""

import csv
import json
import os
import subprocess
from urllib.parse import unquote

import pytest

from tests.helpers import SQLCHECKCTL, VENV_BIN, make_zip

FILES = {
    "报表/月度 汇总.sql": "select a,b from t\n-- 注释\nSELECT  1\n".encode("gb18030"),
    "a/x.sql": b"select a,b from t\n",
    "clean.sql": b"SELECT 1\n",
    "broken.sql": b"\x00\x01\x02\xff\xfe binary",
}


@pytest.fixture
def finished_job(stack):
    stack.start_worker()
    job_id = stack.submit(make_zip(FILES))
    view = stack.wait_job(job_id, 90)
    assert view["status"] == "PARTIAL_SUCCESS"
    return stack, job_id, view


def _results(stack, view):
    return [json.loads((stack.share / t["result_file_path"]).read_text("utf-8"))
            for t in view["tasks"] if t["result_file_path"]]


def _cli(stack, *args):
    return subprocess.run([SQLCHECKCTL, *args], env=stack.env, capture_output=True, timeout=60)


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_report_sarif_written_at_finalization_and_read_by_sarif_tools(finished_job):
    from sarif.loader import load_sarif_file

    stack, job_id, view = finished_job
    path = stack.share / "jobs" / job_id / "report.sarif"
    sarif = load_sarif_file(str(path))
    expected = {(r["archive_member"], v["start_line_no"], v["code"]) for r in _results(stack, view)
                for v in r["violations"]}
    assert len(expected) >= 4 and any(m.startswith("报表/") for m, _, _ in expected)
    records = {(unquote(r["Location"]), int(r["Line"]), r["Code"]) for r in sarif.get_records()}
    assert records == expected
    doc = json.loads(path.read_text("utf-8"))
    rule_ids = {r["id"] for r in doc["runs"][0]["tool"]["driver"]["rules"]}
    assert rule_ids == {code for _, _, code in expected}
    notes = doc["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    assert [n["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for n in notes] == ["broken.sql"]


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_sarif_matches_sqlfluffs_own_sarif_output(finished_job, tmp_path):
    """sqlfluff's CLI SARIF for the same sources lists the same (rule, file, line, column) results."""
    stack, job_id, view = finished_job
    sources = stack.share / "jobs" / job_id / "sources"
    (sources / "broken.sql").unlink()  # not text: sqlcheck reports it as a notification, sqlfluff would crash
    (sources / "报表/月度 汇总.sql").write_text(FILES["报表/月度 汇总.sql"].decode("gb18030"), "utf-8")
    cli = subprocess.run([str(VENV_BIN / "sqlfluff"), "lint", "--dialect", "ansi", "--format", "sarif",
                          "--disable-progress-bar", "."], cwd=sources, capture_output=True, timeout=120)
    theirs = json.loads(cli.stdout)

    def keyset(doc, decode):
        return {(r["ruleId"], os.path.normpath(decode(loc["physicalLocation"]["artifactLocation"]["uri"])),
                 loc["physicalLocation"]["region"]["startLine"], loc["physicalLocation"]["region"]["startColumn"])
                for r in doc["runs"][0]["results"] for loc in r["locations"]}

    ours = json.loads((stack.share / "jobs" / job_id / "report.sarif").read_text("utf-8"))
    assert keyset(ours, unquote) == keyset(theirs, str)
    assert len(keyset(ours, unquote)) >= 4


@pytest.mark.parametrize("stack", ["postgresql"], indirect=True)
def test_report_command_formats(finished_job, tmp_path):
    stack, job_id, view = finished_job
    out = tmp_path / "r.csv"
    run = _cli(stack, "report", job_id, "--format", "csv", "--output", str(out))
    assert run.returncode == 0, run.stderr.decode()
    assert out.read_bytes().startswith(b"\xef\xbb\xbf")
    with open(out, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    expected = sorted((r["archive_member"], str(v["start_line_no"]), str(v["start_line_pos"]), v["code"])
                      for r in _results(stack, view) for v in r["violations"])
    assert sorted((r["member"], r["line"], r["pos"], r["code"]) for r in rows) == expected
    assert any(r["member"] == "报表/月度 汇总.sql" for r in rows)

    run = _cli(stack, "report", job_id, "--format", "sarif")
    assert run.returncode == 0
    sarif = json.loads(run.stdout.decode("utf-8"))
    assert len(sarif["runs"][0]["results"]) == len(expected)

    run = _cli(stack, "report", job_id, "--format", "text")
    assert run.returncode == 0 and "PARTIAL_SUCCESS" in run.stdout.decode("utf-8")
    run = _cli(stack, "report", job_id, "--format", "json")
    assert json.loads(run.stdout)["job_id"] == job_id

    assert _cli(stack, "report", job_id, "--format", "xml").returncode == 2
    assert _cli(stack, "report", "00000000-0000-4000-8000-000000000000").returncode == 1
