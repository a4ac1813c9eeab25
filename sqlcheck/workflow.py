"""The job path without Celery: expand a job, lint one task, finalize a job.

Celery tasks call these; tests can too. Each step is idempotent, because any
message may be delivered twice.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import shutil
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from sqlcheck import batching, faults, job_config
from sqlcheck import repository as repo
from sqlcheck.archive import ExpansionLimits, expand_zip_safely
from sqlcheck.database import Database
from sqlcheck.errors import ArchiveError, FileRejected, UserInputError
from sqlcheck.lint_engine import LintReport, check_dialect, decode_sql, lint_sql, parser_kind
from sqlcheck.reports import write_job_sarif
from sqlcheck.retries import is_transient
from sqlcheck.result_cache import CachedResult, ResultCache, key_for_digest
from sqlcheck.result_files import (
    read_expansion_notes,
    read_task_result,
    rule_counts,
    summary_document,
    task_result_document,
    write_expansion_notes,
    write_job_summary,
    write_task_result,
)
from sqlcheck.settings import Settings
from sqlcheck.share import OutsideShare, SharePaths
from sqlcheck.soft_limit import soft_time_limit
from sqlcheck.states import TERMINAL_JOB_STATUSES, TERMINAL_TASK_STATUSES, FailureReason, TaskStatus

log = logging.getLogger(__name__)

#: sends one lint message per list of task ids (one id, or a batch); provided by the Celery layer
SendLintMessages = Callable[[Sequence[Sequence[str]]], None]
#: jobs whose (dialect, options) a process remembers before it starts over
JOB_SETTINGS_KEPT = 1024


@dataclass
class Runtime:
    """What the steps need from the outside world, built once per process."""

    settings: Settings
    db: Database
    share: SharePaths
    result_cache: ResultCache | None = None  # None = every file is linted
    job_settings: dict[str, tuple[str, tuple]] = field(default_factory=dict)  # see _job_lint_settings

    @classmethod
    def from_settings(cls, settings: Settings) -> "Runtime":
        cache = ResultCache.from_url(settings.broker_url, settings.result_cache_ttl_s, settings.result_cache_max_entries)
        return cls(settings, Database(settings.resolved_database_url), SharePaths(settings.resolved_share_root), cache)

    @property
    def limits(self) -> ExpansionLimits:
        s = self.settings
        return ExpansionLimits(s.max_zip_members, s.max_file_bytes, s.max_uncompressed_bytes, s.max_compression_ratio)


# ---- job options --------------------------------------------------------------


def lint_settings(rt: Runtime, job_id: str, dialect_raw: str | None, options_raw: str | None) -> tuple[str, tuple]:
    """The job's effective dialect and sqlfluff options (job row first, then its uploaded .sqlfluff)."""
    uploaded = job_config.load_uploaded(rt.share, job_id)
    dialect = job_config.effective_dialect(dialect_raw, uploaded, rt.settings.default_dialect)
    options = job_config.effective_options(job_config.parse_job_options(options_raw), uploaded)
    return dialect, job_config.sqlfluff_options(options)


# ---- expand -----------------------------------------------------------------------


def expand_job(rt: Runtime, job_id: str, send: SendLintMessages) -> None:
    """Claim the job, expand its ZIP, create one task row per file, then send their messages."""
    with rt.db.session() as s:
        job = repo.get_job(s, job_id)
        if job is None:
            log.error("job=%s expand: no such job row; message dropped", job_id)
            return
        if job.status in TERMINAL_JOB_STATUSES:
            log.info("job=%s expand: already %s; duplicate message ignored", job_id, job.status)
            return
        if not repo.claim_job(s, job_id):  # a status outside the contract (say, the web service's own)
            s.refresh(job)
            log.error("job=%s expand: status %r is neither PENDING nor PROCESSING; message dropped", job_id, job.status)
            return
        source_path, dialect_raw, options_raw = job.source_path, job.dialect, job.options
        expanded_before = job.total_tasks
    if not repo.is_job_id(job_id):
        fail_job(rt, job_id, f"job id {job_id!r} is not a UUID; nothing was expanded")
        return
    if expanded_before:
        _finish_earlier_expansion(rt, job_id, expanded_before, send)
        return
    try:
        if dialect_raw:
            _check_dialect(rt, dialect_raw)
        job_config.parse_job_options(options_raw)
        zip_path = rt.share.absolute(source_path)
        expansion = expand_zip_safely(zip_path, rt.share.source_dir(job_id), rt.limits)
        if not expansion.members:
            found = f"; it holds {len(expansion.skipped)} other entries" if expansion.skipped else ""
            write_expansion_notes(rt.share, job_id, expansion.skipped)  # the summary lists them
            raise ArchiveError(f"the ZIP archive contains no .sql files{found}")
        uploaded = _uploaded_config(rt, zip_path, expansion.skipped)
        job_config.save_uploaded(rt.share, job_id, uploaded)
        _check_dialect(rt, job_config.effective_dialect(dialect_raw, uploaded, rt.settings.default_dialect))
        _one_row_per_name(expansion)
        write_expansion_notes(rt.share, job_id, expansion.skipped)  # may meet a full share too
    except (UserInputError, OutsideShare) as exc:
        fail_job(rt, job_id, str(exc))
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # fail_job removes the sources written so far
        fail_job(rt, job_id, f"the share is full ({exc.strerror}) while expanding the archive; "
                             "nothing was kept, please submit the job again later")
        return
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
    # No sync of the sources here (syncing 10,000 of them could cost seconds of a slow disk's
    # write-back): each is checked against its row's SHA-256 when it is linted (_read_source).
    with rt.db.session() as s:
        total = repo.create_tasks(s, job_id, new_tasks)
    if total is None:
        with rt.db.session() as s:
            job = repo.get_job(s, job_id)
            status, rows = job.status, job.total_tasks
        if rows:  # another delivery expanded it and its files ended: the sources are that job's
            log.info("job=%s already %s, expanded by another delivery; duplicate expansion dropped", job_id, status)
            return
        # failed meanwhile (hard limit, memory): its files must not be left behind
        shutil.rmtree(rt.share.source_dir(job_id), ignore_errors=True)
        log.warning("job=%s ended while it was being expanded; no task rows written", job_id)
        return
    cached, written = _serve_from_cache(rt, job_id, dialect_raw, options_raw, expansion.members)
    sent, messages = send_undispatched(rt, job_id, send)
    rejected = sum(1 for m in expansion.members if m.rejected)
    log.info(
        "job=%s expanded: %d tasks (%d rejected members, %d skipped entries, %d served from the result cache), "
        "%d files dispatched in %d messages",
        job_id, total, rejected, len(expansion.skipped), cached, sent, messages,
    )
    finalize_job(rt, job_id, written)


def _finish_earlier_expansion(rt: Runtime, job_id: str, total: int, send: SendLintMessages) -> None:
    """A redelivered expand message of a job an earlier delivery expanded (its rows, written in one
    transaction with total_tasks, say the sources are all on the share): send what that delivery
    had not sent, and nothing else. Expanding again would rewrite sources children are reading,
    and a full share or the soft limit on the way would fail a job whose files are being linted."""
    sent, messages = send_undispatched(rt, job_id, send)
    log.info("job=%s expanded: already, by an earlier delivery (%d tasks), %d files dispatched in %d messages",
             job_id, total, sent, messages)
    finalize_job(rt, job_id)


def _serve_from_cache(rt: Runtime, job_id: str, dialect_raw: str | None, options_raw: str | None,
                      members) -> tuple[int, dict[str, dict]]:
    """Files whose result the cache already holds end SUCCESS here (result file written, row
    updated), with no lint message: re-uploads cost one MGET per 1,000 files. Returns how many
    rows it ended, and the result documents written by task id (the job's report is then built
    from them, not read back from the share)."""
    if rt.result_cache is None or faults.enabled():  # a fault-test file must really run
        return 0, {}
    dialect, options = lint_settings(rt, job_id, dialect_raw, options_raw)
    parser = parser_kind(rt.settings.use_rust_parser)
    wanted = {
        repo.task_id_for(job_id, m.name): (m.name, key_for_digest(m.sha256, dialect, options, parser))
        for m in members if m.sha256 and m.path and not m.rejected
    }
    hits = rt.result_cache.get_many([key for _, key in wanted.values()])
    finished, written = [], {}
    for task_id, (member, key) in wanted.items():
        hit = hits.get(key)
        if hit is None:
            continue
        report = LintReport(hit.violations, hit.parse_errors, 0.0)
        doc = task_result_document(job_id, task_id, member, hit.encoding, dialect, report)
        doc["from_cache"] = True
        finished.append(_file_result(task_id, write_task_result(rt.share, doc), hit.violations, hit.encoding, 0.0))
        written[task_id] = doc
    if not finished:
        return 0, {}
    rt.share.sync_to_disk()
    with rt.db.session() as s:
        return repo.finish_pending_from_cache(s, finished, rt.settings.node_name), written


def _one_row_per_name(expansion) -> None:
    """A name stored twice in the ZIP can have one task row only (its id derives from the name):
    later copies become skipped entries, so the summary still shows them."""
    seen: set[str] = set()
    kept = []
    for m in expansion.members:
        if m.name in seen:
            expansion.skipped.append({"member": m.name, "reason": f"{FailureReason.DUPLICATE_MEMBER.value}: {m.message}"})
        else:
            seen.add(m.name)
            kept.append(m)
    expansion.members = kept


def _check_dialect(rt: Runtime, dialect: str) -> None:
    """UserInputError unless sqlfluff knows the dialect (builds the Linter this worker will use)."""
    check_dialect(dialect, rt.settings.use_rust_parser)


def _uploaded_config(rt: Runtime, zip_path, skipped: list[dict[str, str]]) -> job_config.UploadedConfig:
    """Whitelisted keys of the root .sqlfluff; an unknown dialect there is ignored, not fatal."""
    uploaded = job_config.read_uploaded_config(zip_path, [e["member"] for e in skipped])
    if uploaded.dialect:
        try:
            _check_dialect(rt, uploaded.dialect)
        except UserInputError as exc:
            uploaded.ignored.append({"file": job_config.ROOT_CONFIG, "key": "[sqlfluff] dialect", "reason": str(exc)})
            uploaded.dialect = None
    return uploaded


#: messages sent between two `dispatched_at` updates: a failed send re-sends at most this many
DISPATCH_BATCH = 500


def send_undispatched(rt: Runtime, job_id: str, send: SendLintMessages) -> tuple[int, int]:
    """Send every PENDING task never sent, small files batched; returns (files, messages) sent.

    A send that fails (Redis down) leaves its rows with dispatched_at NULL: they stay
    PENDING and the reaper sends them later. A message sent but not recorded is sent
    again; the task lock and the terminal-row check make that harmless.
    """
    with rt.db.session() as s:
        to_send = repo.undispatched_tasks(s, job_id)
    messages = batching.plan_messages(to_send, rt.settings.lint_batch_max_files, rt.settings.lint_batch_max_bytes)
    files = len(to_send)
    sent_files = sent_messages = 0
    for start in range(0, len(messages), DISPATCH_BATCH):
        chunk = messages[start : start + DISPATCH_BATCH]
        try:
            send(chunk)
        except Exception as exc:  # noqa: BLE001 - any send failure: keep the rows for the reaper
            log.warning("job=%s could not send lint messages for %d files (%s: %s); they stay PENDING for the reaper",
                        job_id, files - sent_files, exc.__class__.__name__, exc)
            break
        with rt.db.session() as s:
            repo.mark_dispatched(s, [task_id for message in chunk for task_id in message])
        sent_files += batching.file_count(chunk)
        sent_messages += len(chunk)
    return sent_files, sent_messages


def fail_job(rt: Runtime, job_id: str, message: str) -> bool:
    """PROCESSING/PENDING -> FAILED, unless the job has its task rows already. Before the commit,
    the sources written so far are removed and summary.json is written: whoever sees FAILED sees
    the job's final files.

    An expansion cut short (time limit, memory, an error) after its rows were committed does
    not fail the job: its files may be queued or being linted, and would lose their sources.
    The rows it had not sent are PENDING and never sent, which the reaper sends; the job then
    ends from its files like any other.
    """
    with rt.db.session() as s:
        if repo.fail_job(s, job_id, message):
            if repo.is_job_id(job_id):  # else it has no folder on the share (see is_job_id)
                shutil.rmtree(rt.share.source_dir(job_id), ignore_errors=True)
                write_summary(rt, job_id, s)
            log.warning("job=%s FAILED: %s", job_id, message)
            return True
        job = repo.get_job(s, job_id)
        if job is not None and job.total_tasks and job.status not in TERMINAL_JOB_STATUSES:
            log.warning("job=%s not failed although %s: its %d task rows were written, so it ends from "
                        "its files (the reaper sends any not sent)", job_id, message, job.total_tasks)
    return False


# ---- lint one file ---------------------------------------------------------------


@dataclass(frozen=True)
class LintedFile:
    """A claimed file whose result file is written and whose row is not recorded yet: a batch
    records its files together (record_linted)."""

    job_id: str
    result: repo.FileResult
    attempts: int  # including this one; above 1, an earlier delivery died on this file
    how: str = ""  # for the log: where the result came from when not from a lint


def lint_task(rt: Runtime, task_id: str, hostname: str, outage_retried: bool = False) -> None:
    """Claim the task, lint its file, write the result, record it; finalize the job if last."""
    with file_connections(rt) as (conn, claims):
        linted = lint_file(rt, conn, claims, task_id, hostname, outage_retried)
        if linted is not None:
            record_linted(rt, conn, [linted])
            finalize_if_complete(rt, conn, linted.job_id)


@contextmanager
def file_connections(rt: Runtime):
    """(conn, claims) for a message's files: results on a durable connection, claims on one that
    does not wait for the disk. Held for the whole message: each checkout costs a ping round trip."""
    with rt.db.autocommit() as conn, rt.db.autocommit(durable=False) as claims:
        yield conn, claims


def lint_file(rt: Runtime, conn, claims, task_id: str, hostname: str,
              outage_retried: bool = False) -> LintedFile | None:
    """Claim one task on `claims`, lint its file and write its result. Returns what the caller
    records with record_linted, or None when there is nothing to record: the task could not be
    claimed, or its file was rejected (recorded FAILURE here).

    A file claimed again after an earlier delivery died is not linted again when that delivery
    had written its result. `outage_retried`: the caller will retry a transient error, so this
    delivery's attempt is given back when one ends it.
    """
    claimed = repo.claim_task(claims, task_id, hostname, rt.settings.max_attempts)
    if claimed is None:
        _not_claimed(rt, task_id)
        return None
    job_id = claimed.job_id
    log.info("job=%s task=%s lint started: %s (attempt %d)", job_id, task_id, claimed.archive_member,
             claimed.attempts)
    if claimed.attempts > 1:
        written = written_result(rt, job_id, task_id)
        if written is not None:
            return LintedFile(job_id, written, claimed.attempts, EARLIER_RESULT)
    try:
        dialect, options = _job_lint_settings(rt, conn, job_id)
        found = _lint_claimed(rt, job_id, task_id, claimed.archive_member, claimed.source_file_path,
                              claimed.content_sha256, dialect, options)
    except Exception as exc:
        if outage_retried and is_transient(exc):
            _give_back_attempt(rt, task_id)  # the task retries it; an outage is not a dying worker
        raise
    if found is None:
        return None
    result, from_cache = found
    return LintedFile(job_id, result, claimed.attempts, " (from the result cache)" if from_cache else "")


def _file_result(task_id: str, result_rel: str, violations: list[dict], encoding: str,
                 duration_s: float | None) -> repo.FileResult:
    """What a finish records for a written result: its counts derive from its violations."""
    return repo.FileResult(task_id, result_rel, len(violations), rule_counts(violations), encoding, duration_s)


#: the log's note on a file recorded from the result file an earlier delivery wrote
EARLIER_RESULT = " (result file written by an earlier attempt)"


def record_linted(rt: Runtime, conn, files: Sequence[LintedFile]) -> int:
    """IN_PROGRESS -> SUCCESS for linted files, all in one transaction: one wait for the disk
    for a message's files, not one each. When one had moved meanwhile (a duplicate delivery, the
    reaper), they are recorded one by one instead, to tell which. Returns how many were recorded."""
    rt.share.sync_to_disk()  # a SUCCESS row promises a whole result file, also after a crash
    if len(files) > 1 and repo.finish_tasks_success_together(conn, [f.result for f in files]):
        for f in files:
            _log_success(f)
        return len(files)
    recorded = 0
    for f in files:
        if repo.finish_task_success(conn, f.result):
            _log_success(f)
            recorded += 1
        else:
            log.warning("job=%s task=%s finished but the row was no longer in progress; kept as it was",
                        f.job_id, f.result.task_id)
    return recorded


def _log_success(f: LintedFile) -> None:
    took = f" in {f.result.duration_s:.3f}s" if f.result.duration_s is not None else ""
    log.info("job=%s task=%s SUCCESS: %d violations%s%s", f.job_id, f.result.task_id, f.result.violation_count,
             took, f.how)


def written_result(rt: Runtime, job_id: str, task_id: str) -> repo.FileResult | None:
    """What an earlier attempt's whole result file says, or None: a child killed after writing a
    file's result and before its row was recorded leaves the result on the share."""
    doc = read_task_result(rt.share, job_id, task_id)
    if doc is None:
        return None
    return _file_result(task_id, rt.share.result_rel(job_id, task_id), doc["violations"], doc["encoding"], None)


def record_cut_short(rt: Runtime, task_id: str, reason: FailureReason, message: str) -> TaskStatus | None:
    """An open file whose linting was cut short (hard time limit, memory kill, attempts used up):
    SUCCESS from its result file when it had written one (a batch records its files at its end),
    else FAILURE for `reason`. Returns the status it moved to; None if it had already ended."""
    with rt.db.session() as s:
        task = repo.get_task(s, task_id)
        job_id, attempts = (task.job_id, task.attempts) if task is not None else (None, 0)
    written = written_result(rt, job_id, task_id) if job_id else None
    if written is not None:
        rt.share.sync_to_disk()  # the child that wrote it was cut short before its sync
        with rt.db.autocommit() as conn:
            recorded = repo.finish_open_task_success(conn, written)
        if recorded:
            _log_success(LintedFile(job_id, written, attempts, EARLIER_RESULT))
            finalize_job(rt, job_id)
            return TaskStatus.SUCCESS
    return TaskStatus.FAILURE if record_failure(rt, task_id, reason, message) else None


def deferred_cache_writes(rt: Runtime):
    """Around a batch's files: their results go to the result cache together at the end."""
    return rt.result_cache.deferred_puts() if rt.result_cache is not None else nullcontext()


def finalize_if_complete(rt: Runtime, conn, job_id: str) -> None:
    """Finalize the job unless a task is still open. Asked after our own commits: of the last two
    finishers, the later one sees the other's commit, so at least one of them finalizes (and
    finalize_job lets only one win)."""
    if not repo.job_has_open_tasks(conn, job_id):
        finalize_job(rt, job_id)


def finalize_jobs_of(rt: Runtime, conn, task_ids: Sequence[str]) -> None:
    """finalize_if_complete for the jobs of these tasks: a message retried after an outage may
    find its files recorded and lint none, while the outage cut its finalize short."""
    for job_id in repo.job_ids_of(conn, task_ids):
        finalize_if_complete(rt, conn, job_id)


def running_and_waiting(rt: Runtime, task_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """Of a batch whose child was killed: the files it had claimed and not recorded (IN_PROGRESS:
    the one it was linting, and those linted whose rows it would have recorded at the end), and
    the files it had not started (PENDING), in the batch's order."""
    with rt.db.session() as s:
        statuses = repo.task_statuses(s, task_ids)
    running = [t for t in task_ids if statuses.get(t) == TaskStatus.IN_PROGRESS.value]
    waiting = [t for t in task_ids if statuses.get(t) == TaskStatus.PENDING.value]
    return running, waiting


def _job_lint_settings(rt: Runtime, conn, job_id: str) -> tuple[str, tuple]:
    """The job's effective (dialect, sqlfluff options), worked out once per job per process:
    the job row and the uploaded .sqlfluff never change."""
    found = rt.job_settings.get(job_id)
    if found is None:
        if len(rt.job_settings) >= JOB_SETTINGS_KEPT:
            rt.job_settings.clear()
        found = rt.job_settings[job_id] = lint_settings(rt, job_id, *repo.job_lint_columns(conn, job_id))
    return found


def _not_claimed(rt: Runtime, task_id: str) -> None:
    """Say why a delivery could not claim its task: gone, already ended, or out of attempts."""
    with rt.db.session() as s:
        task = repo.get_task(s, task_id)
        status, job_id = (task.status, task.job_id) if task is not None else (None, None)
    if task is None:
        log.error("task=%s lint: no such task row; message dropped", task_id)
    elif status in TERMINAL_TASK_STATUSES:
        log.info("job=%s task=%s already %s; duplicate message ignored", job_id, task_id, status)
    else:
        record_cut_short(
            rt, task_id, FailureReason.WORKER_LOST,
            f"gave up after {rt.settings.max_attempts} attempts: the worker died while linting this file each time",
        )


def _give_back_attempt(rt: Runtime, task_id: str) -> None:
    """Un-count this delivery's attempt, so that retries of an outage never end the file as
    `worker_lost` (SQLCHECK_MAX_ATTEMPTS bounds worker deaths only). Best effort: if the
    database is the outage, the attempt stays counted."""
    try:
        with rt.db.session() as s:
            repo.give_back_attempt(s, task_id)
    except Exception as exc:  # noqa: BLE001 - the transient error itself is what the caller reports
        log.warning("task=%s attempt not given back (%s)", task_id, exc.__class__.__name__)


def _lint_claimed(rt: Runtime, job_id: str, task_id: str, member: str, source_rel: str | None,
                  sha256: str | None, dialect: str, options: tuple) -> tuple[repo.FileResult, bool] | None:
    """The part of lint_file after the claim: lint (or take from the cache) and write the result
    file. Returns (what to record, whether from the cache); None for a rejected file."""
    try:
        data, digest = _read_source(rt, source_rel, sha256)
        encoding, report, from_cache = _lint_or_cached(rt, data, digest, member, dialect, options, task_id)
    except FileRejected as exc:
        record_failure(rt, task_id, exc.reason, str(exc))  # finalizes the job itself when last
        return None
    doc = task_result_document(job_id, task_id, member, encoding, dialect, report)
    doc["from_cache"] = from_cache
    result_rel = write_task_result(rt.share, doc)
    return _file_result(task_id, result_rel, report.violations, encoding, report.duration_s), from_cache


def _lint_or_cached(rt: Runtime, data: bytes, digest: str, member: str, dialect: str, options: tuple,
                    task_id: str = "") -> tuple[str, LintReport, bool]:
    """(encoding, report, from_cache): the cached result for these bytes and this configuration,
    or a fresh lint that is then cached. Files carrying a test fault directive are never cached."""
    rust = rt.settings.use_rust_parser
    cache = rt.result_cache
    if cache is not None and faults.enabled() and b"sqlcheck-fault" in data:
        cache = None
    key = key_for_digest(digest, dialect, options, parser_kind(rust)) if cache is not None else None
    hit = cache.get(key) if cache is not None else None
    if hit is not None:
        return hit.encoding, LintReport(hit.violations, hit.parse_errors, 0.0), True  # no lint time (README)
    with soft_time_limit(rt.settings.soft_time_limit_s):  # around sqlfluff's work only, never a statement
        text, encoding = decode_sql(data)
        faults.inject(text, task_id, rt.settings.broker_url)  # test-only; does nothing unless SQLCHECK_ENABLE_FAULTS=1
        report = lint_sql(text, member, dialect, options, rust)
    if cache is not None:
        cache.put(key, CachedResult(report.violations, report.parse_errors, encoding))
    return encoding, report, False


def _read_source(rt: Runtime, source_rel: str | None, sha256: str | None) -> tuple[bytes, str]:
    """(the source's bytes, their SHA-256), refused unless they are what the archive held: the
    sources are not synced to disk before their rows commit, so a crash of the share's machine
    can leave one empty or cut, which must not be linted as a clean file."""
    if not source_rel:
        raise FileRejected(FailureReason.MISSING_SOURCE, "the file was never expanded")
    path = rt.share.absolute(source_rel)
    try:
        size = path.stat().st_size
        if size > rt.settings.max_file_bytes:
            raise FileRejected(
                FailureReason.TOO_LARGE, f"file is larger than {rt.settings.max_file_bytes} bytes (SQLCHECK_MAX_FILE_BYTES)"
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileRejected(FailureReason.MISSING_SOURCE, f"source file missing on the share: {source_rel}") from None
    digest = hashlib.sha256(data).hexdigest()
    if sha256 and digest != sha256:
        raise FileRejected(FailureReason.MISSING_SOURCE, "the expanded file on the share is not what the archive held "
                                                         "(cut short by a crash?); submit the job again")
    return data, digest


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


def finalize_job(rt: Runtime, job_id: str, written: Mapping[str, dict] | None = None) -> bool:
    """If every task ended, move the job to its terminal status (exactly once) and write summary.json.

    The summary is written inside the finalizing transaction, before the commit, so a client
    that sees the terminal status always finds summary.json (a failed write rolls the status back).
    `written`: result documents this process has just written, by task id (not read back).
    """
    with rt.db.session() as s:
        finalized = repo.finalize_job_if_complete(s, job_id)
        if finalized:
            write_summary(rt, job_id, s, written)
    return finalized


def write_summary(rt: Runtime, job_id: str, session=None, written: Mapping[str, dict] | None = None) -> None:
    """Write summary.json (and report.sarif) from the rows as ``session`` (a database session)
    sees them; a new one if None. `written`: see finalize_job."""
    if session is None:
        with rt.db.session() as s:
            return write_summary(rt, job_id, s, written)
    session.expire_all()  # read the rows as updated in this transaction, not cached copies
    job = repo.get_job(session, job_id)
    tasks = repo.list_tasks(session, job_id)
    doc = summary_document(job, tasks, read_expansion_notes(rt.share, job_id))
    doc["configuration"] = job_config.summary_part(
        job.dialect, job.options, job_config.load_uploaded(rt.share, job_id), rt.settings.default_dialect
    )
    write_job_summary(rt.share, doc)
    try:
        write_job_sarif(rt.share, doc, written)
    except (OSError, ValueError) as exc:  # the summary stands; `sqlcheckctl report -f sarif` rebuilds it
        log.warning("job=%s report.sarif not written: %s", job_id, exc)
    log.info(
        "job=%s %s: %d/%d files analysed, %d violations",
        job_id, job.status, job.succeeded_tasks, job.total_tasks, doc["violations_total"],
    )


__all__ = ["Runtime", "expand_job", "lint_task", "lint_file", "record_linted", "record_cut_short", "record_failure",
           "finalize_job", "write_summary"]
