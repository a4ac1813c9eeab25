"""The job path without Celery: expand a job, lint one task, finalize a job.

Celery tasks call these; tests can too. Each step is idempotent, because any
message may be delivered twice.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from sqlcheck import repository as repo
from sqlcheck.archive import ExpansionLimits, expand_zip_safely
from sqlcheck.database import Database
from sqlcheck.errors import ArchiveError, FileRejected, UserInputError
from sqlcheck.lint_engine import check_dialect, decode_sql, lint_sql
from sqlcheck.result_files import (
    read_expansion_notes,
    rule_counts,
    summary_document,
    task_result_document,
    write_expansion_notes,
    write_job_summary,
    write_task_result,
)
from sqlcheck.settings import Settings
from sqlcheck.share import OutsideShare, SharePaths
from sqlcheck.states import TERMINAL_JOB_STATES, TERMINAL_TASK_STATES, FailureReason

log = logging.getLogger(__name__)

#: sends one lint message per task id; provided by the Celery layer
SendLintMessages = Callable[[Sequence[str]], None]


@dataclass
class Runtime:
    """What the steps need from the outside world, built once per process."""

    settings: Settings
    db: Database
    share: SharePaths

    @classmethod
    def from_settings(cls, settings: Settings) -> "Runtime":
        return cls(settings, Database(settings.resolved_database_url), SharePaths(settings.resolved_share_root))

    @property
    def limits(self) -> ExpansionLimits:
        s = self.settings
        return ExpansionLimits(s.max_zip_members, s.max_file_bytes, s.max_uncompressed_bytes, s.max_compression_ratio)


# ---- job options --------------------------------------------------------------

#: per-job options a job row may set; nothing here can make sqlfluff load code
ALLOWED_OPTIONS = ("rules", "exclude_rules")


def lint_options(raw: str | None) -> tuple[tuple[str, Any], ...]:
    """The job's `options` JSON as sqlfluff core overrides (hashable, for the Linter cache)."""
    if not raw:
        return ()
    try:
        data = json.loads(raw)
    except ValueError:
        raise UserInputError("job options are not valid JSON") from None
    if not isinstance(data, dict):
        raise UserInputError("job options must be a JSON object")
    unknown = sorted(set(data) - set(ALLOWED_OPTIONS))
    if unknown:
        raise UserInputError(f"job options not allowed: {', '.join(unknown)}")
    return tuple(sorted((k, ",".join(v) if isinstance(v, list) else str(v)) for k, v in data.items()))


# ---- expand -----------------------------------------------------------------------


def expand_job(rt: Runtime, job_id: str, send: SendLintMessages) -> None:
    """Claim the job, expand its ZIP, create one task row per file, then send their messages."""
    with rt.db.session() as s:
        job = repo.get_job(s, job_id)
        if job is None:
            log.error("job=%s expand: no such job row; message dropped", job_id)
            return
        if job.status in {j.value for j in TERMINAL_JOB_STATES}:
            log.info("job=%s expand: already %s; duplicate message ignored", job_id, job.status)
            return
        repo.claim_job(s, job_id)
        source_path, dialect_raw, options_raw = job.source_path, job.dialect, job.options
    dialect = dialect_raw or rt.settings.default_dialect
    try:
        check_dialect(dialect)
        lint_options(options_raw)
        zip_path = rt.share.absolute(source_path)
        expansion = expand_zip_safely(zip_path, rt.share.source_dir(job_id), rt.limits)
        if not expansion.members:
            found = f"; it holds {len(expansion.skipped)} other entries" if expansion.skipped else ""
            raise ArchiveError(f"the ZIP archive contains no .sql files{found}")
    except (UserInputError, OutsideShare) as exc:
        fail_job(rt, job_id, str(exc))
        return
    write_expansion_notes(rt.share, job_id, expansion.skipped)
    new_tasks = [
        repo.NewTask(
            archive_member=m.name,
            source_file_path=rt.share.source_rel(job_id, m.path) if m.path and not m.rejected else None,
            size_bytes=m.size,
            content_sha256=m.sha256,
            rejected=m.rejected,
            message=m.message,
        )
        for m in expansion.members
    ]
    with rt.db.session() as s:
        total = repo.create_tasks(s, job_id, new_tasks)
    with rt.db.session() as s:
        to_send = repo.undispatched_task_ids(s, job_id)
    send(to_send)
    with rt.db.session() as s:
        repo.mark_dispatched(s, to_send)
    rejected = sum(1 for m in expansion.members if m.rejected)
    log.info(
        "job=%s expanded: %d tasks (%d rejected members, %d skipped entries), %d messages sent",
        job_id, total, rejected, len(expansion.skipped), len(to_send),
    )
    finalize_job(rt, job_id)


def fail_job(rt: Runtime, job_id: str, message: str) -> None:
    with rt.db.session() as s:
        changed = repo.fail_job(s, job_id, message)
    shutil.rmtree(rt.share.source_dir(job_id), ignore_errors=True)
    if changed:
        log.warning("job=%s FAILED: %s", job_id, message)
        write_summary(rt, job_id)


# ---- lint one file ---------------------------------------------------------------


def lint_task(rt: Runtime, task_id: str, hostname: str) -> None:
    """Claim the task, lint its file, write the result, record it; finalize the job if last."""
    with rt.db.session() as s:
        task = repo.get_task(s, task_id)
        if task is None:
            log.error("task=%s lint: no such task row; message dropped", task_id)
            return
        job_id = task.job_id
        if task.status in {t.value for t in TERMINAL_TASK_STATES}:
            log.info("job=%s task=%s already %s; duplicate message ignored", job_id, task_id, task.status)
            return
        claimed = repo.claim_task(s, task_id, hostname, rt.settings.max_attempts)
        job = repo.get_job(s, job_id)
        dialect = job.dialect or rt.settings.default_dialect
        options_raw = job.options
        member, source_rel, attempts = task.archive_member, task.source_file_path, task.attempts + 1
    if not claimed:
        record_failure(
            rt, task_id, FailureReason.WORKER_LOST,
            f"gave up after {rt.settings.max_attempts} attempts: the worker died while linting this file each time",
        )
        return
    log.info("job=%s task=%s lint started: %s (attempt %d)", job_id, task_id, member, attempts)
    try:
        data = _read_source(rt, source_rel)
        text, encoding = decode_sql(data)
        report = lint_sql(text, member, dialect, lint_options(options_raw))
    except FileRejected as exc:
        record_failure(rt, task_id, exc.reason, str(exc))
        return
    doc = task_result_document(job_id, task_id, member, encoding, dialect, report)
    result_rel = write_task_result(rt.share, doc)
    with rt.db.session() as s:
        done = repo.finish_task_success(
            s, task_id, result_rel, len(report.violations), rule_counts(report), encoding, report.duration_s
        )
    if done:
        log.info("job=%s task=%s SUCCESS: %d violations in %.3fs", job_id, task_id, len(report.violations),
                 report.duration_s)
    else:
        log.warning("job=%s task=%s finished but the row was already terminal; kept as it was", job_id, task_id)
    finalize_job(rt, job_id)


def _read_source(rt: Runtime, source_rel: str | None) -> bytes:
    if not source_rel:
        raise FileRejected(FailureReason.MISSING_SOURCE, "the file was never expanded")
    path = rt.share.absolute(source_rel)
    try:
        size = path.stat().st_size
        if size > rt.settings.max_file_bytes:
            raise FileRejected(
                FailureReason.TOO_LARGE, f"file is larger than {rt.settings.max_file_bytes} bytes (SQLCHECK_MAX_FILE_BYTES)"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise FileRejected(FailureReason.MISSING_SOURCE, f"source file missing on the share: {source_rel}") from None


def record_failure(rt: Runtime, task_id: str, reason: FailureReason, message: str) -> bool:
    """Mark an open task FAILURE and finalize its job. Idempotent: False if it had already ended."""
    with rt.db.session() as s:
        changed = repo.fail_task(s, task_id, reason, message)
        task = repo.get_task(s, task_id)
        job_id = task.job_id if task else None
    if changed:
        log.warning("job=%s task=%s FAILURE %s: %s", job_id, task_id, reason.value, message)
    if job_id:
        finalize_job(rt, job_id)
    return changed


# ---- finalize ----------------------------------------------------------------------


def finalize_job(rt: Runtime, job_id: str) -> bool:
    """If every task ended, move the job to its terminal status (exactly once) and write summary.json."""
    with rt.db.session() as s:
        finalized = repo.finalize_job_if_complete(s, job_id)
    if finalized:
        write_summary(rt, job_id)
    return finalized


def write_summary(rt: Runtime, job_id: str) -> None:
    with rt.db.session() as s:
        job = repo.get_job(s, job_id)
        tasks = repo.list_tasks(s, job_id)
    doc = summary_document(job, tasks, read_expansion_notes(rt.share, job_id))
    write_job_summary(rt.share, doc)
    log.info(
        "job=%s %s: %d/%d files analysed, %d violations",
        job_id, job.status, job.succeeded_tasks, job.total_tasks, doc["violations_total"],
    )


__all__ = ["Runtime", "expand_job", "lint_task", "record_failure", "finalize_job", "write_summary"]
