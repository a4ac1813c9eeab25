"""The files sqlcheck writes on the share: one result per task, one summary per job.

Both are JSON documents (UTF-8, sorted keys) and part of the contract with the
web service; see README "Result files".
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterable

from sqlcheck.lint_engine import SQLFLUFF_VERSION, LintReport
from sqlcheck.share import SharePaths, atomic_write, write_new_file

RESULT_FORMAT_VERSION = 1


def _dump(doc: dict[str, Any]) -> bytes:
    """Compact JSON: with `indent` the json module falls back to its pure-Python encoder,
    which cost more than a small file's lint; `sqlcheckctl report` is the readable view."""
    return json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def task_result_document(
    job_id: str, task_id: str, archive_member: str, encoding: str, dialect: str, report: LintReport
) -> dict[str, Any]:
    return {
        "format_version": RESULT_FORMAT_VERSION,
        "job_id": job_id,
        "task_id": task_id,
        "archive_member": archive_member,
        "encoding": encoding,
        "dialect": dialect,
        "sqlfluff_version": SQLFLUFF_VERSION,
        "violation_count": len(report.violations),
        "violations": report.violations,
    }


def rule_counts(violations: Iterable[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(v["code"] for v in violations))


def write_task_result(share: SharePaths, doc: dict[str, Any]) -> str:
    """Write a task's result, whole as any reader sees it; returns its path relative to the share."""
    # Nobody reads a result before its row says SUCCESS, which is committed after this write, so
    # a new file is written in place; one already there (a file linted again) is replaced
    # atomically. No fsync here: the caller syncs the share once for all the files it
    # records (SharePaths.sync_to_disk) before their rows commit.
    path, data = share.result_path(doc["job_id"], doc["task_id"]), _dump(doc)
    try:
        write_new_file(path, data)
    except FileNotFoundError:  # the job's first result: its results folder is made here
        atomic_write(path, data, fsync=False)
    return share.result_rel(doc["job_id"], doc["task_id"])


def read_task_result(share: SharePaths, job_id: str, task_id: str) -> dict[str, Any] | None:
    """The task's result document as a finished write left it; None when there is none, or only
    part of one (a child killed while writing it leaves a file that is not JSON)."""
    try:
        doc = json.loads(share.result_path(job_id, task_id).read_bytes())
    except (OSError, ValueError):
        return None
    whole = isinstance(doc, dict) and doc.get("task_id") == task_id and isinstance(doc.get("violations"), list)
    return doc if whole and isinstance(doc.get("encoding"), str) else None


def write_expansion_notes(share: SharePaths, job_id: str, skipped: list[dict[str, str]]) -> None:
    """Remember what the archive held besides SQL files, for the summary."""
    atomic_write(share.job_dir(job_id) / "expansion.json", _dump({"skipped": skipped}), fsync=False)


def read_expansion_notes(share: SharePaths, job_id: str) -> list[dict[str, str]]:
    try:
        return json.loads((share.job_dir(job_id) / "expansion.json").read_text("utf-8"))["skipped"]
    except (OSError, ValueError, KeyError):
        return []


def summary_document(job: Any, tasks: Iterable[Any], skipped: list[dict[str, str]]) -> dict[str, Any]:
    """Counts by status and failure reason, violations by rule and by file."""
    tasks = list(tasks)
    by_rule: Counter[str] = Counter()
    files = []
    for t in tasks:
        if t.rule_counts:
            by_rule.update(json.loads(t.rule_counts))
        files.append({
            "task_id": t.id,
            "archive_member": t.archive_member,
            "status": t.status,
            "failure_reason": t.failure_reason,
            "error_message": t.error_message,
            "violation_count": t.violation_count,
            "result_file_path": t.result_file_path,
        })
    return {
        "format_version": RESULT_FORMAT_VERSION,
        "job_id": job.id,
        "status": job.status,
        "dialect": job.dialect,
        "error_message": job.error_message,
        "total_tasks": job.total_tasks,
        "succeeded_tasks": job.succeeded_tasks,
        "failed_tasks": job.failed_tasks,
        "tasks_by_status": dict(Counter(t.status for t in tasks)),
        "failures_by_reason": dict(Counter(t.failure_reason for t in tasks if t.failure_reason)),
        "violations_total": sum(by_rule.values()),
        "violations_by_rule": dict(sorted(by_rule.items())),
        "violations_by_file": {t.archive_member: t.violation_count for t in tasks if t.violation_count is not None},
        "skipped_members": skipped,
        "files": files,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "sqlfluff_version": SQLFLUFF_VERSION,
    }


def write_job_summary(share: SharePaths, doc: dict[str, Any]) -> str:
    rel = share.summary_rel(doc["job_id"])
    atomic_write(share.absolute(rel), _dump(doc), fsync=True)
    return rel
