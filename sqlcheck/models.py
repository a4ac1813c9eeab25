"""The `jobs` and `tasks` tables: the database contract with the web service.

The web service inserts a `jobs` row (status PENDING) and reads both tables;
everything else is written by the workers. Column names and status values are
stable; add columns, never rename them. Migrations live in sqlcheck/migrations.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import DateTime, Float, ForeignKey, Index, Integer, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqlcheck.states import JobStatus, TaskStatus


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """`timestamptz`, read back as an aware datetime on every backend. SQLite stores no offset,
    so it returned naive values, and summary.json's `finished_at` (and SARIF's `endTimeUtc`)
    lost their "+00:00" there while PostgreSQL's had it; every value written is UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


class Base(DeclarativeBase):
    pass


class Job(Base):
    """One uploaded ZIP."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # UUID as text
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.PENDING.value, index=True)
    source_path: Mapped[str] = mapped_column(Text)  # ZIP path relative to the share root
    dialect: Mapped[str | None] = mapped_column(String(40))  # NULL = the upload's .sqlfluff, else SQLCHECK_DEFAULT_DIALECT
    options: Mapped[str | None] = mapped_column(Text)  # optional JSON: {"rules": ..., "exclude_rules": ...}
    error_message: Mapped[str | None] = mapped_column(Text)
    total_tasks: Mapped[int] = mapped_column(Integer, default=0)
    succeeded_tasks: Mapped[int] = mapped_column(Integer, default=0)
    failed_tasks: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Task(Base):
    """One SQL file of a job."""

    __tablename__ = "tasks"
    __table_args__ = (
        # A redelivered zip message re-inserts the same members: this keeps it idempotent.
        UniqueConstraint("job_id", "archive_member", name="uq_tasks_job_member"),
        Index("ix_tasks_job_status", "job_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # uuid5(job_id, archive_member)
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id", ondelete="CASCADE"))
    archive_member: Mapped[str] = mapped_column(Text)  # path inside the ZIP, decoded
    source_file_path: Mapped[str | None] = mapped_column(Text)  # relative to the share; NULL if never written
    status: Mapped[str] = mapped_column(String(20), default=TaskStatus.PENDING.value)
    failure_reason: Mapped[str | None] = mapped_column(String(40))  # states.FailureReason
    error_message: Mapped[str | None] = mapped_column(Text)
    result_file_path: Mapped[str | None] = mapped_column(Text)  # relative to the share
    violation_count: Mapped[int | None] = mapped_column(Integer)
    rule_counts: Mapped[str | None] = mapped_column(Text)  # JSON {"LT01": 3, ...}, for summaries without re-reading results
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    encoding: Mapped[str | None] = mapped_column(String(40))
    worker_hostname: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    duration_s: Mapped[float | None] = mapped_column(Float)
