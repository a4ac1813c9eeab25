"""What the web service does, for `sqlcheckctl submit` and tests: store, insert, send.

It sends by task *name* through a bare Celery app, exactly like an outside
client, so it never imports sqlcheck.tasks.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Callable

from sqlcheck import repository as repo
from sqlcheck.celery_app import make_sender, send_expand
from sqlcheck.database import Database
from sqlcheck.errors import ControlError, UserInputError, describe
from sqlcheck.retries import is_transient
from sqlcheck.settings import Settings
from sqlcheck.share import SharePaths, atomic_write
from sqlcheck.states import TERMINAL_JOB_STATUSES


def store_upload(share: SharePaths, job_id: str, zip_file: Path) -> str:
    """Copy the ZIP onto the share, durably (the row about to name it must not outlive it in a
    crash); returns its relative path."""
    rel = share.upload_rel(job_id)
    atomic_write(share.absolute(rel), zip_file, fsync=True)
    return rel


class Submitter:
    """Submits uploads as the web service does: store, insert, send. It keeps its database pool
    and broker connection between uploads, as a long-lived web process keeps its own (opening
    them again costs ~30 ms an upload)."""

    def __init__(self, settings: Settings):
        self.share = SharePaths(settings.resolved_share_root)
        self.db = Database(settings.resolved_database_url)
        self.sender = make_sender(settings)

    def submit(self, zip_file: Path, dialect: str | None = None, options: dict | None = None) -> str:
        """Store the ZIP, insert the PENDING job row, then send the message (in that order)."""
        if not zip_file.is_file():
            raise UserInputError(f"{zip_file}: no such file")
        job_id = str(uuid.uuid4())
        rel = store_upload(self.share, job_id, zip_file)
        insert_sent = False
        try:
            with self.db.session() as s:
                repo.insert_job(s, job_id, rel, dialect, options)
                s.flush()
                insert_sent = True  # from here on a failure may come after the server committed
        except Exception as exc:
            stored = self._job_stored(job_id) if insert_sent else False
            if stored is None:
                raise ControlError(
                    f"the database connection broke while job {job_id} was committed, and whether it "
                    f"was cannot be known now: {describe(exc)}; its upload {rel} is kept (if the job row "
                    "is there, the reaper sends it: check with `sqlcheckctl job show` before submitting again)"
                ) from None
            if not stored:
                self.share.absolute(rel).unlink(missing_ok=True)  # no row names it: nothing would ever remove it
                if is_transient(exc):
                    raise ControlError(f"the database is unreachable, nothing was submitted: {describe(exc)}") from None
                raise
            # the row was committed before the connection broke: the job is submitted, send it
        try:
            send_expand(self.sender, job_id)
        except Exception as exc:
            if not is_transient(exc):
                raise
            raise ControlError(f"job {job_id} is stored (PENDING), but its message could not be sent: "
                               f"{describe(exc)}; the reaper sends it once the broker answers "
                               "(do not submit it again)") from None
        return job_id

    def _job_stored(self, job_id: str) -> bool | None:
        """Whether the job row exists, after an error that may have come after its commit; None
        when the database cannot say."""
        try:
            with self.db.session() as s:
                return repo.get_job(s, job_id) is not None
        except Exception:
            return None

    def close(self) -> None:
        self.db.engine.dispose()
        self.sender.close()

    def __enter__(self) -> "Submitter":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def submit_zip(settings: Settings, zip_file: Path, dialect: str | None = None, options: dict | None = None) -> str:
    """One upload from a one-shot process (`sqlcheckctl submit`, tests); returns the job id."""
    with Submitter(settings) as submitter:
        return submitter.submit(zip_file, dialect, options)


def job_view(db: Database, job_id: str) -> dict[str, Any] | None:
    """The job row with its tasks, as builtin types (for `job show` and --json)."""
    with db.session() as s:
        job = repo.get_job(s, job_id)
        if job is None:
            return None
        tasks = repo.list_tasks(s, job_id)
    columns = [c.name for c in job.__table__.columns]
    task_columns = [c.name for c in tasks[0].__table__.columns] if tasks else []

    def plain(row, names):
        return {n: (v.isoformat() if hasattr(v, "isoformat") else v) for n in names for v in [getattr(row, n)]}

    view = plain(job, columns)
    view["tasks"] = [plain(t, task_columns) for t in tasks]
    return view


def wait_for_job(
    db: Database, job_id: str, timeout_s: float, on_progress: Callable[[int, int, str], None] | None = None,
    poll_s: float = 0.2,
) -> str:
    """Poll until the job is terminal; returns its status. Raises TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        with db.session() as s:
            job = repo.get_job(s, job_id)
            if job is None:
                raise UserInputError(f"job {job_id} not found")
            progress = repo.task_progress(s, job_id)
            status, total = job.status, job.total_tasks
        done = progress.get("SUCCESS", 0) + progress.get("FAILURE", 0)
        if on_progress:
            on_progress(done, total, status)
        if status in TERMINAL_JOB_STATUSES:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout_s:.0f} s ({done}/{total} files done)")
        time.sleep(poll_s)
