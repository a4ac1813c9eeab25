"""Human and machine reports built from a job's summary.json: pure functions."""

from __future__ import annotations

import json
from typing import Any


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
