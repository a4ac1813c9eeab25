"""Every read and write of `jobs`/`tasks` rows.

State changes are single conditional UPDATEs (``... WHERE status IN (...)``):
whoever changes a row checks and writes in one statement, so two workers can
never both think they moved it, and a late writer never overwrites a terminal state.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable, Sequence

from sqlalchemy import and_, bindparam, case, exists, func, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

#: the per-file hot path runs on an autocommit Connection, everything else on a Session
Executor = Session | Connection

from sqlcheck.models import Job, Task, utcnow
from sqlcheck.states import TERMINAL_JOB_STATUSES, TERMINAL_TASK_STATUSES, FailureReason, JobStatus, TaskStatus

_TERMINAL_TASKS = sorted(TERMINAL_TASK_STATUSES)
_TERMINAL_JOBS = sorted(TERMINAL_JOB_STATUSES)
_OPEN_TASKS = [TaskStatus.PENDING.value, TaskStatus.IN_PROGRESS.value]
_BATCH = 500


def is_job_id(job_id: str) -> bool:
    """jobs.id must be a UUID (the contract): the job's folder on the share and its task ids
    derive from it, so any other id (a path, a name) is refused before either is made."""
    try:
        return str(uuid.UUID(job_id)) == job_id.lower()  # the 36-character form only, any case
    except (ValueError, TypeError, AttributeError):
        return False


def task_id_for(job_id: str, archive_member: str) -> str:
    """Deterministic task id: a redelivered zip message produces the same ids."""
    return str(uuid.uuid5(uuid.UUID(job_id), archive_member))


@dataclass(frozen=True)
class NewTask:
    archive_member: str
    source_file_path: str | None
    size_bytes: int
    content_sha256: str | None
    rejected: FailureReason | None = None
    message: str | None = None


# ---- jobs -------------------------------------------------------------------


def insert_job(session: Session, job_id: str, source_path: str, dialect: str | None, options: dict | None = None) -> None:
    """What the web service does: one PENDING row."""
    session.add(
        Job(id=job_id, status=JobStatus.PENDING.value, source_path=source_path, dialect=dialect,
            options=json.dumps(options) if options else None)
    )


def get_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def claim_job(session: Session, job_id: str) -> bool:
    """PENDING -> PROCESSING. A PROCESSING job may be claimed again (redelivery after a crash).

    While it has no task rows, `started_at` is when the latest expansion began: the reaper takes
    a job unexpanded since longer than the zip hard limit for a lost message, and must not take
    a re-sent expansion that is running (its message is unacked, not queued) for one."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([JobStatus.PENDING.value, JobStatus.PROCESSING.value]))
        .values(status=JobStatus.PROCESSING.value,
                started_at=case((Job.total_tasks == 0, now), else_=func.coalesce(Job.started_at, now)))
    )
    return result.rowcount == 1


def fail_job(session: Session, job_id: str, message: str) -> bool:
    """A non-terminal job that has no task rows yet -> FAILED with a message for the user.

    Once its rows are written (with total_tasks, in one transaction) the job ends from its
    files: an expansion cut short after that point leaves rows the reaper sends and finalizes.
    """
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.not_in(_TERMINAL_JOBS), Job.total_tasks == 0)
        .values(status=JobStatus.FAILED.value, error_message=message[:2000], finished_at=utcnow())
    )
    return result.rowcount == 1


def finalize_job_if_complete(session: Session, job_id: str) -> bool:
    """Move the job to its terminal status iff no task is still open; True for the one caller that did.

    One statement: counts come from an aggregate and the NOT EXISTS guard sees
    every committed task, so the last two finishers cannot both finalize.
    """
    succeeded = (
        select(func.count()).select_from(Task)
        .where(Task.job_id == job_id, Task.status == TaskStatus.SUCCESS.value).scalar_subquery()
    )
    failed = (
        select(func.count()).select_from(Task)
        .where(Task.job_id == job_id, Task.status == TaskStatus.FAILURE.value).scalar_subquery()
    )
    still_open = exists().where(Task.job_id == job_id, Task.status.in_(_OPEN_TASKS))
    new_status = case(
        (failed == 0, JobStatus.SUCCESS.value),
        (succeeded == 0, JobStatus.FAILED.value),
        else_=JobStatus.PARTIAL_SUCCESS.value,
    )
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.PROCESSING.value, Job.total_tasks > 0, ~still_open)
        .values(
            status=new_status,
            succeeded_tasks=succeeded,
            failed_tasks=failed,
            error_message=case((succeeded == 0, "no file in the archive could be analysed"), else_=None),
            finished_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def job_counts_by_status(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())


def jobs_in_status(session: Session, statuses: Iterable[str], limit: int = 20) -> list[Job]:
    return list(
        session.scalars(select(Job).where(Job.status.in_(list(statuses))).order_by(Job.created_at).limit(limit))
    )


def task_progress(session: Session, job_id: str) -> dict[str, int]:
    return dict(
        session.execute(select(Task.status, func.count()).where(Task.job_id == job_id).group_by(Task.status)).all()
    )


# ---- metrics: aggregates read at scrape time (sqlcheck/metrics.py) ---------------


def ended_task_counts(session: Session) -> list[tuple[str | None, str, str | None, int]]:
    """(job dialect or None, task status, failure reason or None, count) over ended tasks."""
    return [tuple(r) for r in session.execute(
        select(Job.dialect, Task.status, Task.failure_reason, func.count())
        .join(Job, Job.id == Task.job_id)
        .where(Task.status.in_(_TERMINAL_TASKS))
        .group_by(Job.dialect, Task.status, Task.failure_reason)
    ).all()]


def task_counts_by_status(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Task.status, func.count()).group_by(Task.status)).all())


def lint_duration_buckets(
    session: Session, size_edges: Sequence[int], duration_edges: Sequence[float]
) -> list[tuple[int, int, float, list[int]]]:
    """Lint durations of analysed files, grouped by file size, counted into cumulative buckets.

    Returns (size bucket index, count, sum of seconds, [count with duration <= edge, per
    duration edge]); size bucket i holds sizes <= size_edges[i], the last one the rest.
    Computed by the database, so a scrape never loads one row per file.
    """
    size_bucket = case(*((Task.size_bytes <= edge, i) for i, edge in enumerate(size_edges)), else_=len(size_edges))
    rows = (
        select(size_bucket.label("bucket"), Task.duration_s.label("d"))
        # results served from the cache are stored with 0.0: they are no lint time
        .where(Task.status == TaskStatus.SUCCESS.value, Task.duration_s.is_not(None), Task.duration_s > 0)
        .subquery()
    )
    result = session.execute(
        select(rows.c.bucket, func.count(), func.coalesce(func.sum(rows.c.d), 0.0),
               *(func.sum(case((rows.c.d <= edge, 1), else_=0)) for edge in duration_edges))
        .group_by(rows.c.bucket)
    ).all()
    return [(int(r[0]), int(r[1]), float(r[2]), [int(n or 0) for n in r[3:]]) for r in result]


# ---- tasks ------------------------------------------------------------------


def _insert_ignoring_duplicates(session: Session, rows: list[dict]) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only the two supported databases
        raise RuntimeError(f"unsupported database {dialect}")
    # One statement compiled once, run "executemany" (after the session's autoflush): SQLAlchemy
    # packs the rows into multi-row VALUES batches itself (compiling 500-row literals was slow).
    session.execute(insert(Task.__table__).on_conflict_do_nothing(), rows)


def create_tasks(session: Session, job_id: str, new_tasks: Sequence[NewTask]) -> int | None:
    """Insert one row per file (rejected ones directly as FAILURE) and set the job's total.

    Re-running it for the same job inserts nothing new. Returns the job's task total, or None
    (and inserts nothing) when the job is no longer PROCESSING: a hard time limit or a memory
    kill failed it while this expansion was still running. The first statement takes the job's
    row, so fail_job and this transaction cannot cross (fail_job refuses a job with rows).
    """
    still_ours = session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.PROCESSING.value)
        .values(total_tasks=Job.total_tasks)
    ).rowcount
    if not still_ours:
        return None
    now = utcnow()
    rows = []
    for t in new_tasks:
        row = {
            "id": task_id_for(job_id, t.archive_member),
            "job_id": job_id,
            "archive_member": t.archive_member,
            "source_file_path": t.source_file_path,
            "status": TaskStatus.PENDING.value,
            "failure_reason": None,
            "error_message": None,
            "size_bytes": t.size_bytes,
            "content_sha256": t.content_sha256,
            "attempts": 0,
            "created_at": now,
            "finished_at": None,
        }
        if t.rejected is not None:
            row.update(status=TaskStatus.FAILURE.value, failure_reason=t.rejected.value,
                       error_message=t.message, finished_at=now)
        rows.append(row)
    if rows:
        _insert_ignoring_duplicates(session, rows)
    total = session.scalar(select(func.count()).select_from(Task).where(Task.job_id == job_id)) or 0
    session.execute(update(Job).where(Job.id == job_id).values(total_tasks=total))
    return total


def undispatched_tasks(session: Session, job_id: str) -> list[tuple[str, int]]:
    """(id, size in bytes) of PENDING tasks whose message was never sent (or whose send was not
    recorded), largest file first: the children then end the job together instead of one
    finishing a big file alone."""
    return [
        (task_id, size or 0)
        for task_id, size in session.execute(
            select(Task.id, Task.size_bytes).where(Task.job_id == job_id, Task.status == TaskStatus.PENDING.value,
                                                   Task.dispatched_at.is_(None))
            .order_by(Task.size_bytes.desc(), Task.archive_member)
        )
    ]


def dispatched_tasks(session: Session, job_id: str) -> tuple[int, datetime | None]:
    """(how many of the job's tasks were sent, when the last was): bin/bench's dispatch figure."""
    return tuple(session.execute(
        select(func.count(Task.dispatched_at), func.max(Task.dispatched_at)).where(Task.job_id == job_id)
    ).one())


def mark_dispatched(session: Session, task_ids: Sequence[str]) -> None:
    now = utcnow()
    for start in range(0, len(task_ids), _BATCH):
        session.execute(
            update(Task).where(Task.id.in_(task_ids[start : start + _BATCH])).values(dispatched_at=now)
            .execution_options(synchronize_session=False)
        )


def task_statuses(session: Session, task_ids: Sequence[str]) -> dict[str, str]:
    return dict(session.execute(select(Task.id, Task.status).where(Task.id.in_(list(task_ids)))).all())


def get_task(session: Session, task_id: str) -> Task | None:
    return session.get(Task, task_id)


def list_tasks(session: Session, job_id: str) -> list[Task]:
    return list(session.scalars(select(Task).where(Task.job_id == job_id).order_by(Task.archive_member)))


@dataclass(frozen=True)
class ClaimedTask:
    """What linting a claimed task needs from its row (read in the claiming statement)."""

    job_id: str
    archive_member: str
    source_file_path: str | None
    attempts: int  # including this one
    content_sha256: str | None  # of the file as the archive held it


# The per-file statements are built once: constructing a statement costs more Python time
# than PostgreSQL needs to run it (0.92 -> 0.46 ms per claim, measured).
# The per-file statements test "open" with OR, not IN: SQLAlchemy renders an IN list again on
# every execution (~0.05 ms a statement).
_TASK_IS_OPEN = or_(*(Task.status == status for status in _OPEN_TASKS))
_CLAIM = (
    update(Task.__table__)
    .where(Task.id == bindparam("task_id"), _TASK_IS_OPEN, Task.attempts < bindparam("max_attempts"))
    .values(status=TaskStatus.IN_PROGRESS.value, attempts=Task.attempts + 1, started_at=bindparam("now"),
            worker_hostname=bindparam("hostname"))
    .returning(Task.job_id, Task.archive_member, Task.source_file_path, Task.attempts, Task.content_sha256)
)


def _finish_success(row_is_finishable):
    return (
        update(Task.__table__)
        .where(Task.id == bindparam("task_id"), row_is_finishable)
        .values(status=TaskStatus.SUCCESS.value, result_file_path=bindparam("path"), violation_count=bindparam("count"),
                rule_counts=bindparam("counts"), encoding=bindparam("enc"), finished_at=bindparam("now"),
                duration_s=bindparam("duration"))
    )


_FINISH_SUCCESS = _finish_success(Task.status == TaskStatus.IN_PROGRESS.value)
_FINISH_OPEN_SUCCESS = _finish_success(_TASK_IS_OPEN)
_HAS_OPEN_TASKS = select(exists().where(Task.job_id == bindparam("job_id"), _TASK_IS_OPEN))


def claim_task(db: Executor, task_id: str, hostname: str, max_attempts: int) -> ClaimedTask | None:
    """PENDING (or IN_PROGRESS left by a dead child) -> IN_PROGRESS, counting the attempt.

    None when the row is missing, already ended, or out of attempts (get_task tells which).
    """
    row = db.execute(
        _CLAIM, {"task_id": task_id, "max_attempts": max_attempts, "now": utcnow(), "hostname": hostname}
    ).first()
    return ClaimedTask(*row) if row is not None else None


def job_lint_columns(db: Executor, job_id: str) -> tuple[str | None, str | None]:
    """(dialect, options) as the web service stored them; they never change after insert."""
    return tuple(db.execute(select(Job.dialect, Job.options).where(Job.id == job_id)).one())


def job_ids_of(db: Executor, task_ids: Sequence[str]) -> set[str]:
    return set(db.execute(select(Task.job_id).where(Task.id.in_(list(task_ids))).distinct()).scalars())


def job_has_open_tasks(db: Executor, job_id: str) -> bool:
    return db.execute(_HAS_OPEN_TASKS, {"job_id": job_id}).scalar()


def give_back_attempt(session: Session, task_id: str) -> bool:
    """IN_PROGRESS keeps its status but not the attempt just counted: the task is retrying an
    outage, which must not use up the attempts that bound worker deaths."""
    result = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.status == TaskStatus.IN_PROGRESS.value, Task.attempts > 0)
        .values(attempts=Task.attempts - 1)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


@dataclass(frozen=True)
class FileResult:
    """What the finish of a linted file records (its result file is already on the share)."""

    task_id: str
    result_file_path: str
    violation_count: int
    rule_counts: dict[str, int]
    encoding: str
    duration_s: float | None  # None: taken from a result file an earlier attempt wrote
    finished_at: datetime = field(default_factory=utcnow)  # when the result was written, not recorded


def _finish_params(result: FileResult) -> dict:
    return {"task_id": result.task_id, "path": result.result_file_path, "count": result.violation_count,
            "counts": json.dumps(result.rule_counts, sort_keys=True), "enc": result.encoding,
            "now": result.finished_at, "duration": result.duration_s}


def finish_task_success(db: Executor, result: FileResult) -> bool:
    """IN_PROGRESS -> SUCCESS; False if someone else already ended it."""
    return db.execute(_FINISH_SUCCESS, _finish_params(result)).rowcount == 1


def finish_open_task_success(db: Executor, result: FileResult) -> bool:
    """PENDING or IN_PROGRESS -> SUCCESS, for a result file an earlier attempt wrote whole: the
    reaper may have put the row back to PENDING since. False if it had already ended."""
    return db.execute(_FINISH_OPEN_SUCCESS, _finish_params(result)).rowcount == 1


def finish_tasks_success_together(conn: Connection, results: Sequence[FileResult]) -> bool:
    """IN_PROGRESS -> SUCCESS for all of `results` in one transaction on an autocommit connection
    (one executemany, one commit: one wait for the disk instead of one a file). All or nothing:
    if a row had already ended, nothing is changed and the answer is False (then finish them one
    by one to learn which). The transaction is explicit because the connection autocommits."""
    conn.exec_driver_sql("BEGIN")
    try:
        changed = conn.execute(_FINISH_SUCCESS, [_finish_params(r) for r in results]).rowcount
        conn.exec_driver_sql("COMMIT" if changed == len(results) else "ROLLBACK")
    except BaseException:
        _rollback_quietly(conn)
        raise
    return changed == len(results)


def _rollback_quietly(conn: Connection) -> None:
    """End the explicit transaction after an error; a broken connection has none left to end."""
    try:
        conn.exec_driver_sql("ROLLBACK")
    except Exception:  # noqa: BLE001 - the error that got us here is the one to report
        pass


_FINISH_FROM_CACHE = (
    update(Task.__table__)
    .where(Task.id == bindparam("task_id"), Task.status == TaskStatus.PENDING.value, Task.dispatched_at.is_(None))
    .values(status=TaskStatus.SUCCESS.value, result_file_path=bindparam("path"), violation_count=bindparam("count"),
            rule_counts=bindparam("counts"), encoding=bindparam("enc"), worker_hostname=bindparam("host"),
            started_at=bindparam("now"), finished_at=bindparam("now"), duration_s=bindparam("duration"))
)


def finish_pending_from_cache(session: Session, results: Sequence[FileResult], hostname: str) -> int:
    """Never-sent PENDING tasks whose result the cache held -> SUCCESS, in the caller's one
    transaction, as one executemany. Returns how many changed."""
    if not results:
        return 0
    return session.execute(_FINISH_FROM_CACHE, [{**_finish_params(r), "host": hostname} for r in results]).rowcount


def fail_task(session: Session, task_id: str, reason: FailureReason, message: str, encoding: str | None = None) -> bool:
    """Any open task -> FAILURE with a reason; False if it had already ended (idempotent)."""
    result = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.status.in_(_OPEN_TASKS))
        .values(status=TaskStatus.FAILURE.value, failure_reason=reason.value, error_message=message[:2000],
                encoding=encoding, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def open_task_ids(session: Session, job_id: str) -> list[str]:
    return list(session.scalars(select(Task.id).where(and_(Task.job_id == job_id, Task.status.in_(_OPEN_TASKS)))))


# ---- reaper: rows that no message will ever move -------------------------------------


def stale_in_progress_tasks(session: Session, started_before: datetime, limit: int = _BATCH) -> list[Task]:
    """IN_PROGRESS rows started before the cut-off: their worker should have ended them by now."""
    return list(session.scalars(
        select(Task).where(Task.status == TaskStatus.IN_PROGRESS.value, Task.started_at < started_before)
        .order_by(Task.started_at).limit(limit)
    ))


def stale_pending_tasks(session: Session, before: datetime, limit: int = 5 * _BATCH,
                        after: tuple[datetime, str] | None = None) -> list[Task]:
    """PENDING rows sent before the cut-off, or never sent and created before it; in (created_at,
    id) order, from just past `after` (the last row of the page before)."""
    query = select(Task).where(
        Task.status == TaskStatus.PENDING.value,
        or_(Task.dispatched_at < before, and_(Task.dispatched_at.is_(None), Task.created_at < before)),
    )
    if after is not None:
        query = query.where(or_(Task.created_at > after[0], and_(Task.created_at == after[0], Task.id > after[1])))
    return list(session.scalars(query.order_by(Task.created_at, Task.id).limit(limit)))


def requeue_task(session: Session, task_id: str, started_at: datetime | None) -> bool:
    """IN_PROGRESS (as last seen, same started_at) -> PENDING, marked as sent now; False if it moved meanwhile."""
    result = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.status == TaskStatus.IN_PROGRESS.value, Task.started_at == started_at)
        .values(status=TaskStatus.PENDING.value, dispatched_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def stale_unexpanded_jobs(session: Session, before: datetime, limit: int = _BATCH) -> list[Job]:
    """PENDING/PROCESSING jobs without a single task row, created (or claimed) before the cut-off."""
    return list(session.scalars(
        select(Job).where(
            Job.status.in_([JobStatus.PENDING.value, JobStatus.PROCESSING.value]),
            Job.total_tasks == 0,
            func.coalesce(Job.started_at, Job.created_at) < before,
        ).order_by(Job.created_at).limit(limit)
    ))


def processing_jobs_without_open_tasks(session: Session, limit: int = _BATCH) -> list[str]:
    """PROCESSING jobs whose tasks all ended: the last finisher died before finalizing."""
    still_open = exists().where(Task.job_id == Job.id, Task.status.in_(_OPEN_TASKS))
    return list(session.scalars(
        select(Job.id).where(Job.status == JobStatus.PROCESSING.value, Job.total_tasks > 0, ~still_open).limit(limit)
    ))


def terminal_jobs_finished_between(session: Session, after: datetime, before: datetime,
                                   limit: int = 5 * _BATCH) -> list[str]:
    return list(session.scalars(
        select(Job.id).where(Job.status.in_(_TERMINAL_JOBS), Job.finished_at >= after, Job.finished_at < before)
        .order_by(Job.finished_at).limit(limit)
    ))
