"""Schema migrations: concurrent `db upgrade` runs on one fresh PostgreSQL database all succeed."""

import threading
import uuid

from sqlalchemy import create_engine, inspect, text

from sqlcheck.database import upgrade_schema
from tests.conftest import PG_ADMIN_URL


def test_concurrent_upgrades_of_a_fresh_database_all_succeed():
    name = f"sqlcheck_migrace_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    errors = []

    def upgrade():
        try:
            upgrade_schema(url)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=upgrade) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "an upgrade hung"
        assert errors == []
        engine = create_engine(url)
        with engine.connect() as conn:
            assert {"jobs", "tasks", "alembic_version"} <= set(inspect(conn).get_table_names())
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_only_claim_connections_skip_the_wait_for_the_disk(pg_server_url, tmp_path):
    """Claims commit without waiting for the WAL flush (PostgreSQL); results stay durable."""
    from sqlcheck.database import Database

    db = Database(pg_server_url)
    with db.autocommit() as results, db.autocommit(durable=False) as claims:
        assert results.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
        assert claims.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
    with db.session() as s:  # sessions (expansion, failures, finalize) are durable too
        assert s.execute(text("SHOW synchronous_commit")).scalar() == "on"
    sqlite = Database(f"sqlite:///{tmp_path / 'x.db'}")
    with sqlite.autocommit(durable=False) as conn:  # SQLite: the same engine
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    assert sqlite._claims_engine is None


def test_sqlite_path_of_a_url():
    from pathlib import Path

    from sqlcheck.database import sqlite_path

    assert sqlite_path("sqlite:////var/lib/x.db") == Path("/var/lib/x.db")
    assert sqlite_path("sqlite:////var/lib/x.db?timeout=5") == Path("/var/lib/x.db")
    assert sqlite_path("sqlite://") is None and sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("postgresql+psycopg://u@h/db") is None
