"""Human and machine reports built from a job's summary.json and result files.

The renderers are pure functions; `job_report` reads the files and picks one.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Iterable, Mapping

from sqlcheck.errors import SqlcheckError, UserInputError
from sqlcheck.share import SharePaths


def text_report(summary: dict[str, Any], top: int = 10) -> str:
    """A readable report: status line, top rules, worst files, failures."""
    lines = [
        f"Job {summary['job_id']}: {summary['status']}",
        f"  files: {summary['total_tasks']} total, {summary['succeeded_tasks']} analysed, "
        f"{summary['failed_tasks']} failed; {summary['violations_total']} violations",
    ]
    if summary.get("error_message"):
        lines.append(f"  error: {summary['error_message']}")
    rules = sorted(summary["violations_by_rule"].items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    if rules:
        lines.append("Top rules:")
        lines += [f"  {count:6d}  {code}" for code, count in rules]
    files = sorted(
        ((n, f) for f, n in summary["violations_by_file"].items() if n), key=lambda nf: (-nf[0], nf[1])
    )[:top]
    if files:
        lines.append("Worst files:")
        lines += [f"  {count:6d}  {member}" for count, member in files]
    failed = [f for f in summary["files"] if f["status"] == "FAILURE"]
    if failed:
        lines.append("Files not analysed:")
        lines += [f"  {f['archive_member']}: {f['failure_reason']} - {f['error_message']}" for f in failed[:top]]
        if len(failed) > top:
            lines.append(f"  ... and {len(failed) - top} more")
    if summary.get("skipped_members"):
        lines.append(f"Skipped entries: {len(summary['skipped_members'])} (not .sql files, resource forks)")
    return "\n".join(lines)


def json_report(summary: dict[str, Any]) -> str:
    return json.dumps(summary, ensure_ascii=False, indent=2, sort_keys=True)


#: CSV columns, one row per violation
CSV_COLUMNS = ("member", "line", "pos", "code", "name", "description")
#: a UTF-8 byte order mark: spreadsheet tools then read Chinese member names and messages right
UTF8_BOM = "\ufeff"


#: a cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text_cell(text: str) -> str:
    """An uploaded name or a message as inert text: a member named `=HYPERLINK(...)` must not
    run as a formula when an operator opens the CSV; a leading apostrophe keeps it text."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_report(results: Iterable[dict[str, Any]]) -> str:
    """One row per violation, ordered by member, line, position; starts with a UTF-8 BOM."""
    buf = io.StringIO()
    writer = csv.writer(buf)  # default dialect: quoted as needed, CRLF line ends (what Excel expects)
    writer.writerow(CSV_COLUMNS)
    for doc in sorted(results, key=lambda d: d["archive_member"]):
        for v in doc["violations"]:
            writer.writerow((_text_cell(doc["archive_member"]), v["start_line_no"], v["start_line_pos"], v["code"],
                             _text_cell(v.get("name") or ""), _text_cell(v.get("description") or "")))
    return UTF8_BOM + buf.getvalue()


class ReportUnavailable(SqlcheckError):
    """Raised when a job has no summary yet (unknown job, or not finished)."""


def read_summary(share: SharePaths, job_id: str) -> dict[str, Any]:
    path = share.absolute(share.summary_rel(job_id))
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ReportUnavailable(f"no summary for job {job_id} yet (unknown job, or not finished)") from None


def read_results(share: SharePaths, summary: dict[str, Any],
                 known: Mapping[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The result documents of the job's analysed files, as listed in its summary. `known`: the
    documents this process has just written, by task id, which need not be read back."""
    job_id = summary.get("job_id")
    known = known or {}

    def path(f: dict[str, Any]):
        # where workers write them (the results directory resolved once), else as the row says
        if job_id and f.get("task_id") and f["result_file_path"] == share.result_rel(job_id, f["task_id"]):
            return share.result_path(job_id, f["task_id"])
        return share.absolute(f["result_file_path"])

    return [known.get(f.get("task_id")) or json.loads(path(f).read_text("utf-8"))
            for f in summary.get("files", []) if f.get("result_file_path")]


def sarif_rel(job_id: str) -> str:
    return f"jobs/{job_id}/report.sarif"


def write_job_sarif(share: SharePaths, summary: dict[str, Any],
                    known: Mapping[str, dict[str, Any]] | None = None) -> str:
    """Write jobs/<job_id>/report.sarif from the summary and result files (`known`: see
    read_results); returns its relative path."""
    from sqlcheck.sarif import sarif_bytes, sarif_document
    from sqlcheck.share import atomic_write

    rel = sarif_rel(summary["job_id"])
    # No fsync: it is derived from summary.json (which is synced) and the result files, and
    # `sqlcheckctl report -f sarif` builds the same document again; the wait was part of every job's finalize.
    atomic_write(share.absolute(rel), sarif_bytes(sarif_document(summary, read_results(share, summary, known))), fsync=False)
    return rel


REPORT_FORMATS = ("text", "json", "sarif", "csv")


def job_report(share: SharePaths, job_id: str, fmt: str) -> str:
    """The job's report in one of REPORT_FORMATS, from the files on the share."""
    from sqlcheck.sarif import sarif_bytes, sarif_document

    if fmt not in REPORT_FORMATS:
        raise UserInputError(f"unknown report format {fmt!r}; choose from {', '.join(REPORT_FORMATS)}")
    summary = read_summary(share, job_id)
    if fmt == "text":
        return text_report(summary)
    if fmt == "json":
        return json_report(summary)
    try:
        results = read_results(share, summary)
    except (OSError, ValueError) as exc:
        raise ReportUnavailable(f"cannot read the result files of job {job_id}: {exc}") from None
    if fmt == "csv":
        return csv_report(results)
    return sarif_bytes(sarif_document(summary, results)).decode("utf-8")
