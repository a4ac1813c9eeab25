"""Report renderers (CSV, SARIF) as pure functions, read back by independent readers."""

import csv
import json
from urllib.parse import unquote

import pytest

from sqlcheck.errors import UserInputError
from sqlcheck.reports import ReportUnavailable, csv_report, job_report, read_results
from sqlcheck.sarif import sarif_bytes, sarif_document
from sqlcheck.share import SharePaths


def violation(code, line, pos, name, description, warning=False):
    return {"code": code, "start_line_no": line, "start_line_pos": pos, "end_line_no": line,
            "end_line_pos": pos + 3, "name": name, "description": description, "warning": warning}


RESULTS = [
    {"archive_member": "报表/月度 汇总.sql", "encoding": "gb18030", "violations": [
        violation("LT01", 3, 7, "layout.spacing", "多余的空格, 在 \"逗号\" 之前"),
        violation("CP01", 5, 1, "capitalisation.keywords", "Keywords must be consistently upper case.",
                  warning=True),
    ]},
    {"archive_member": "a/x.sql", "encoding": "utf-8", "violations": [
        violation("LT09", 1, 1, "layout.select_targets", "Select targets should be on a new line\nunless only one."),
        violation("LT01", 1, 9, "layout.spacing", "Expected single whitespace."),
    ]},
    {"archive_member": "clean.sql", "encoding": "utf-8", "violations": []},
]
SUMMARY = {
    "job_id": "5b0e8f5c-0000-4000-8000-000000000001", "status": "PARTIAL_SUCCESS", "dialect": "ansi",
    "error_message": None, "finished_at": "2026-11-28T09:00:00+00:00", "sqlfluff_version": "4.5.0",
    "files": [
        {"archive_member": "a/x.sql", "status": "SUCCESS", "failure_reason": None, "error_message": None},
        {"archive_member": "二进制.sql", "status": "FAILURE", "failure_reason": "decode_error",
         "error_message": "file is not text"},
    ],
}


def test_csv_has_bom_one_row_per_violation_and_round_trips_chinese(tmp_path):
    text = csv_report(RESULTS)
    path = tmp_path / "r.csv"
    path.write_bytes(text.encode("utf-8"))
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["member", "line", "pos", "code", "name", "description"]
    assert len(rows) == 1 + sum(len(r["violations"]) for r in RESULTS)
    expected = sorted(
        [r["archive_member"], str(v["start_line_no"]), str(v["start_line_pos"]), v["code"], v["name"], v["description"]]
        for r in RESULTS for v in r["violations"]
    )
    assert sorted(rows[1:]) == expected
    assert ["报表/月度 汇总.sql", "3", "7", "LT01", "layout.spacing", "多余的空格, 在 \"逗号\" 之前"] in rows


def test_csv_cells_from_the_upload_cannot_be_formulas():
    doc = {"archive_member": "=HYPERLINK(\"http://x\").sql", "violations": [
        {"start_line_no": 1, "start_line_pos": 1, "code": "LT01", "name": "+name", "description": "@SUM(A1)"}]}
    rows = list(csv.reader(csv_report([doc]).lstrip("\ufeff").splitlines()))
    assert rows[1] == ["'=HYPERLINK(\"http://x\").sql", "1", "1", "LT01", "'+name", "'@SUM(A1)"]


def test_sarif_document_shape():
    doc = sarif_document(SUMMARY, RESULTS)
    assert doc["version"] == "2.1.0"
    run = doc["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == ["CP01", "LT01", "LT09"]
    results = run["results"]
    assert len(results) == 4
    for r in results:
        assert rules[r["ruleIndex"]]["id"] == r["ruleId"]
    levels = {(r["ruleId"], r["level"]) for r in results}
    assert ("CP01", "warning") in levels and ("LT09", "error") in levels
    located = {(unquote(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]),
                r["locations"][0]["physicalLocation"]["region"]["startLine"],
                r["locations"][0]["physicalLocation"]["region"]["startColumn"], r["ruleId"]) for r in results}
    assert located == {("报表/月度 汇总.sql", 3, 7, "LT01"), ("报表/月度 汇总.sql", 5, 1, "CP01"),
                       ("a/x.sql", 1, 1, "LT09"), ("a/x.sql", 1, 9, "LT01")}
    uri = results[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert " " not in uri and uri.isascii()  # a valid URI reference
    notes = run["invocations"][0]["toolExecutionNotifications"]
    assert len(notes) == 1 and "二进制.sql" in notes[0]["message"]["text"]
    assert len(run["artifacts"]) == 3


def test_a_failed_file_whose_name_leaves_the_archive_has_no_location():
    """SARIF locations are relative to the archive's root: `../x.sql` or `/abs.sql` would point
    outside it (code-scanning tools refuse such logs); the notification's text still names it."""
    names = ["../../evil.sql", "/tmp/abs.sql", "C:\\win.sql", "a/\\x00.sql", "ok/名.sql"]
    reasons = ["unsafe_member"] * 4 + ["decode_error"]  # a NUL is stored spelled out: a/\x00.sql looks like a path
    files = [{"archive_member": name, "status": "FAILURE", "failure_reason": reason, "error_message": "no"}
             for name, reason in zip(names, reasons)]
    notes = sarif_document({**SUMMARY, "files": files}, [])["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    assert [n["message"]["text"].startswith(name) for name, n in zip(names, notes)] == [True] * 5
    assert ["locations" in n for n in notes] == [False, False, False, False, True]


def test_independent_sarif_reader_sees_rules_files_and_lines(tmp_path):
    from sarif.loader import load_sarif_file

    path = tmp_path / "report.sarif"
    path.write_bytes(sarif_bytes(sarif_document(SUMMARY, RESULTS)))
    sarif = load_sarif_file(str(path))
    assert sarif.get_distinct_tool_names() == ["SQLFluff"]
    records = {(unquote(r["Location"]), int(r["Line"]), r["Code"]) for r in sarif.get_records()}
    assert records == {(r["archive_member"], v["start_line_no"], v["code"]) for r in RESULTS for v in r["violations"]}
    assert sarif.get_result_count() == 4


def test_job_report_refuses_unknown_format_and_unfinished_job(tmp_path):
    share = SharePaths(tmp_path)
    with pytest.raises(UserInputError, match="unknown report format"):
        job_report(share, SUMMARY["job_id"], "xml")
    with pytest.raises(ReportUnavailable):
        job_report(share, SUMMARY["job_id"], "csv")


def test_job_report_reads_results_listed_in_summary(tmp_path):
    share = SharePaths(tmp_path)
    job = SUMMARY["job_id"]
    files = []
    for i, r in enumerate(RESULTS):
        rel = f"jobs/{job}/results/{i}.json"
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(json.dumps(r, ensure_ascii=False), "utf-8")
        files.append({"archive_member": r["archive_member"], "status": "SUCCESS", "result_file_path": rel,
                      "failure_reason": None, "error_message": None})
    (tmp_path / f"jobs/{job}/summary.json").write_text(json.dumps({**SUMMARY, "files": files}), "utf-8")
    assert job_report(share, job, "csv") == csv_report(RESULTS)
    sarif = json.loads(job_report(share, job, "sarif"))
    assert len(sarif["runs"][0]["results"]) == 4


def test_job_report_names_a_missing_result_file(tmp_path):
    share = SharePaths(tmp_path)
    job = SUMMARY["job_id"]
    files = [{"archive_member": "a/x.sql", "status": "SUCCESS", "result_file_path": f"jobs/{job}/results/gone.json"}]
    (tmp_path / f"jobs/{job}").mkdir(parents=True)
    (tmp_path / f"jobs/{job}/summary.json").write_text(json.dumps({**SUMMARY, "files": files}), "utf-8")
    assert json.loads(job_report(share, job, "json"))["job_id"] == job  # needs no result file
    with pytest.raises(ReportUnavailable, match="gone.json"):
        job_report(share, job, "sarif")


def test_results_known_in_memory_are_not_read_back(tmp_path):
    """The expand task builds the report of a job served from the result cache from the documents
    it has just written; the others are read from the share."""
    share = SharePaths(tmp_path)
    job = SUMMARY["job_id"]
    on_share = {**RESULTS[0], "task_id": "t-share"}
    rel = share.result_rel(job, "t-share")
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text(json.dumps(on_share), "utf-8")
    in_memory = {**RESULTS[1], "task_id": "t-memory"}  # its file is not on the share at all
    files = [{"task_id": t, "result_file_path": share.result_rel(job, t)} for t in ("t-share", "t-memory")]
    summary = {**SUMMARY, "files": files}
    assert read_results(share, summary, {"t-memory": in_memory}) == [on_share, in_memory]
    with pytest.raises(FileNotFoundError):
        read_results(share, summary)


def test_sarif_positions_start_at_one_even_for_a_templater_error():
    """sqlfluff reports a jinja error of `'{%s}'` (a common format string) at column 0; SARIF
    lines and columns start at 1, and a strict reader refuses a 0."""
    from sqlcheck.lint_engine import lint_sql

    violations = lint_sql("SELECT '{%s}' AS fmt\n", "fmt.sql", "ansi").violations
    assert [(v["code"], v["start_line_pos"]) for v in violations] == [("TMP", 0)]
    no_line = dict(violations[0], start_line_no=0)
    doc = sarif_document({**SUMMARY, "files": []}, [
        {"archive_member": "fmt.sql", "encoding": "utf-8", "violations": violations + [no_line]}])
    regions = [loc["physicalLocation"].get("region") for r in doc["runs"][0]["results"] for loc in r["locations"]]
    assert regions == [{"startLine": 1}, None]


@pytest.mark.parametrize("codec,iana", [("utf-8", "UTF-8"), ("utf-8-sig", "UTF-8"), ("gb18030", "GB18030"),
                                        ("utf-16", "UTF-16"), ("cp1252", "windows-1252"), ("euc_kr", "EUC-KR"),
                                        ("iso8859_5", "ISO-8859-5")])
def test_sarif_artifact_encodings_are_iana_names(codec, iana):
    doc = sarif_document({**SUMMARY, "files": []}, [{"archive_member": "a.sql", "encoding": codec, "violations": []}])
    assert doc["runs"][0]["artifacts"][0]["encoding"] == iana
