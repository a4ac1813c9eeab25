"""Fixtures: real Redis, PostgreSQL and worker processes, each test isolated.

- Redis: this session claims a free database number (1-15) for itself.
- PostgreSQL: this session creates its own database and drops it at the end.
- Each `stack` gets its own SQLCHECK_HOME and share under tmp_path.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.helpers import WorkerProcess, wait_until

REDIS_HOST = os.environ.get("SQLCHECK_TEST_REDIS", "redis://127.0.0.1:6379")
PG_ADMIN_URL = os.environ.get("SQLCHECK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
CLAIM_KEY = "sqlcheck-test-claim"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis database number no other test session is using right now."""
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_HOST}/{db}")
        if client.set(CLAIM_KEY, str(os.getpid()), nx=True, ex=3600):
            _reset_redis(f"{REDIS_HOST}/{db}")
            yield f"{REDIS_HOST}/{db}"
            client.flushdb()
            return
    pytest.fail("no free Redis database 1-15 for this test session")


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """A PostgreSQL database created for this session and dropped after it."""
    from sqlalchemy import create_engine, text

    name = f"sqlcheck_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _reset_redis(url: str) -> None:
    """Empty a claimed database, keeping its claim: flush and re-claim are one MULTI, else a
    session starting at that moment (bin/test runs several with pytest-xdist) could claim it too."""
    client = redis.Redis.from_url(url)
    claim = client.get(CLAIM_KEY)
    pipe = client.pipeline(transaction=True).flushdb()
    if claim:
        pipe.set(CLAIM_KEY, claim, ex=3600)
    pipe.execute()


def _reset_pg(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS tasks, jobs, alembic_version CASCADE"))
    engine.dispose()


@dataclass
class Stack:
    """Settings, database and workers of one isolated sqlcheck installation."""

    env: dict[str, str]
    root: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def settings(self):
        from sqlcheck.settings import load_settings

        return load_settings(environ=self.env)

    @property
    def share(self) -> Path:
        return Path(self.env["NFS_SHARE_ROOT_PATH"])

    def db(self):
        from sqlcheck.database import Database

        return Database(self.settings.resolved_database_url)

    def start_worker(self, queues: str = "zip_processing,sql_analysis", concurrency: int = 2, name: str | None = None,
                     extra_env: dict[str, str] | None = None) -> WorkerProcess:
        name = name or f"w{len(self.workers)}@{uuid.uuid4().hex[:6]}"
        env = {**self.env, **(extra_env or {})}
        w = WorkerProcess(env, self.root / f"{name.split('@')[0]}.log", queues, concurrency, name)
        self.workers.append(w)
        w.wait_ready()
        return w

    def submit(self, zip_bytes: bytes, dialect: str | None = None, options: dict | None = None) -> str:
        """Store the ZIP, insert the job and send the message by name, as the web service does."""
        from sqlcheck.client import submit_zip

        path = self.root / f"upload-{uuid.uuid4().hex[:8]}.zip"
        path.write_bytes(zip_bytes)
        return submit_zip(self.settings, path, dialect, options)

    def wait_job(self, job_id: str, timeout_s: float = 120) -> dict:
        from sqlcheck.client import job_view

        db = self.db()
        terminal = {"SUCCESS", "PARTIAL_SUCCESS", "FAILED"}
        view = wait_until(lambda: (v := job_view(db, job_id)) and v["status"] in terminal and v,
                          timeout_s, f"job {job_id} terminal", interval_s=0.2)
        db.engine.dispose()
        return view


def _make_stack(tmp_path: Path, database_url: str | None, redis_url: str, **overrides: str) -> Stack:
    from sqlcheck.database import upgrade_schema

    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SQLCHECK_", "CELERY_", "NFS_", "DATABASE_"))}
    env.update(
        SQLCHECK_HOME=str(home),
        NFS_SHARE_ROOT_PATH=str(tmp_path / "share"),
        CELERY_BROKER_URL=redis_url,
        SERVICE_ID=f"test-{uuid.uuid4().hex[:6]}",
        SQLCHECK_LOG_LEVEL="INFO",
    )
    if database_url:
        env["DATABASE_URL"] = database_url
    env.update(overrides)
    stack = Stack(env, tmp_path)
    upgrade_schema(stack.settings.resolved_database_url)
    return stack


@pytest.fixture(params=["sqlite", "postgresql"])
def stack(request, tmp_path, redis_url) -> Stack:
    """An empty installation on SQLite or PostgreSQL; workers are started by the test."""
    _reset_redis(redis_url)
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_server_url")
        _reset_pg(url)
    s = _make_stack(tmp_path, url, redis_url)
    yield s
    for w in s.workers:
        w.stop()


@pytest.fixture
def pg_stack(tmp_path, redis_url, pg_server_url) -> Stack:
    """An empty installation on PostgreSQL only (for tests that need real concurrency)."""
    _reset_redis(redis_url)
    _reset_pg(pg_server_url)
    s = _make_stack(tmp_path, pg_server_url, redis_url)
    yield s
    for w in s.workers:
        w.stop()


@pytest.fixture
def rt(tmp_path, redis_url):
    """A worker's Runtime in this process (SQLite, this session's Redis, a temporary share), for
    driving workflow steps directly; messages it sends wait in Redis, where no worker reads them."""
    from sqlcheck.workflow import Runtime

    _reset_redis(redis_url)
    stack = _make_stack(tmp_path, None, redis_url, SQLCHECK_REAPER_LOST_AFTER_S="0", SQLCHECK_REAPER_MARGIN_S="5")
    runtime = Runtime.from_settings(stack.settings)
    runtime.stack = stack
    yield runtime
    runtime.db.engine.dispose()
    _reset_redis(redis_url)  # the messages this test sent must not reach a later test's worker
