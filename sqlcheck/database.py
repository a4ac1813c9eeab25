"""Engine and sessions. One engine per process: a forked child must build its own."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: PostgreSQL advisory lock key that serialises concurrent `db upgrade` runs
MIGRATION_LOCK_ID = 0x5C1C4EC


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for another database or an in-memory one."""
    if not url.startswith("sqlite"):
        return None
    if "///" not in url:  # sqlite:// is a database in memory
        return None
    path = url.split("///", 1)[1].split("?", 1)[0]  # sqlite:///x.db?timeout=5 names x.db
    return Path(path) if path and path != ":memory:" else None


def make_engine(url: str, durable: bool = True) -> Engine:
    """Create an engine; SQLite gets WAL and a busy timeout so several workers can share it.

    durable=False (PostgreSQL only): its commits return before their WAL reaches the disk
    (synchronous_commit=off). A server crash can lose the last few of them, never out of
    order: the next durable commit on any connection flushes them too.
    """
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, pool_pre_ping=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(
        url,
        pool_pre_ping=True,  # a restarted PostgreSQL must not fail the next task
        pool_size=2,
        max_overflow=2,
        connect_args={"connect_timeout": 5,  # the main process's failure handler must not hang
                      **({} if durable else {"options": "-c synchronous_commit=off"})},
    )


class Database:
    """Lazily builds the engine in the process that uses it (safe across fork)."""

    def __init__(self, url: str):
        self.url = url
        self._engine: Engine | None = None
        self._claims_engine: Engine | None = None  # see autocommit(durable=False)
        self._pid: int | None = None
        self._sessions: sessionmaker | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None or self._pid != os.getpid():
            for inherited in (self._engine, self._claims_engine):
                if inherited is not None:
                    # Inherited from the parent: drop its sockets without closing them under the parent.
                    inherited.dispose(close=False)
            self._engine = make_engine(self.url)
            self._claims_engine = None
            self._pid = os.getpid()
            self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        return self._engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        self.engine  # noqa: B018 - builds the sessionmaker for this pid
        assert self._sessions is not None
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def autocommit(self, durable: bool = True) -> Iterator[Connection]:
        """A connection on which each statement commits by itself.

        For the per-file hot path, whose steps are single conditional statements: a
        transaction around each would only add BEGIN/COMMIT round trips. durable=False is for
        the claims: on PostgreSQL their commits do not wait for the disk (~0.15 ms a file).
        Losing a claim in a server crash loses nothing else: the file's result is recorded by a
        durable commit, which also flushes every claim before it, and a lost claim only means
        the file is claimed again (with one attempt fewer counted).
        """
        engine = self.engine
        if not durable and not self.url.startswith("sqlite"):
            if self._claims_engine is None:
                self._claims_engine = make_engine(self.url, durable=False)
            engine = self._claims_engine
        with engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")


def redacted_url(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def upgrade_schema(url: str) -> None:
    """Bring the schema to the newest migration (`sqlcheckctl db upgrade`)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Two nodes migrating a fresh database at once: the second waits, then finds it done.
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()
