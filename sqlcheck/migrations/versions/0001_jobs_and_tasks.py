"""Create the jobs and tasks tables.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("status", sa.String(20), nullable=False, server_default="PENDING"),
        sa.Column("source_path", sa.Text(), nullable=False),
        sa.Column("dialect", sa.String(40)),
        sa.Column("options", sa.Text()),
        sa.Column("error_message", sa.Text()),
        sa.Column("total_tasks", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("succeeded_tasks", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failed_tasks", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
    )
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("archive_member", sa.Text(), nullable=False),
        sa.Column("source_file_path", sa.Text()),
        sa.Column("status", sa.String(20), nullable=False, server_default="PENDING"),
        sa.Column("failure_reason", sa.String(40)),
        sa.Column("error_message", sa.Text()),
        sa.Column("result_file_path", sa.Text()),
        sa.Column("violation_count", sa.Integer()),
        sa.Column("rule_counts", sa.Text()),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("content_sha256", sa.String(64)),
        sa.Column("size_bytes", sa.Integer()),
        sa.Column("encoding", sa.String(40)),
        sa.Column("worker_hostname", sa.String(255)),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("dispatched_at", TS),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.Column("duration_s", sa.Float()),
        sa.UniqueConstraint("job_id", "archive_member", name="uq_tasks_job_member"),
    )
    op.create_index("ix_tasks_job_status", "tasks", ["job_id", "status"])


def downgrade() -> None:
    op.drop_table("tasks")
    op.drop_table("jobs")
