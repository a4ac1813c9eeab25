"""Running one Celery worker: the seed's `worker_main` and `start_worker.py`, in one place.

`sqlcheckctl worker` calls `run_worker`; supervisord runs that command. Before
Celery starts, the prerequisites are checked so a misconfigured node fails with
one clear line naming the setting, not a traceback in a restart loop.
"""

from __future__ import annotations

import logging
import os

from sqlcheck.celery_app import ANALYSIS_QUEUE, ZIP_QUEUE, configure_app
from sqlcheck.errors import ConfigError, describe
from sqlcheck.settings import Settings
from sqlcheck.workflow import Runtime

log = logging.getLogger(__name__)

KNOWN_QUEUES = (ZIP_QUEUE, ANALYSIS_QUEUE)


def parse_queues(raw: str) -> list[str]:
    queues = [q.strip() for q in raw.split(",") if q.strip()]
    unknown = [q for q in queues if q not in KNOWN_QUEUES]
    if not queues or unknown:
        raise ConfigError(f"setting CELERY_WORKER_QUEUES: unknown queue(s) {unknown or raw!r}; known: {', '.join(KNOWN_QUEUES)}")
    return queues


def check_prerequisites(settings: Settings) -> None:
    """Fail fast, naming the setting, when the share, database or broker is unusable."""
    import redis
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from sqlcheck.database import make_engine

    share = settings.resolved_share_root
    try:
        share.mkdir(parents=True, exist_ok=True)
        probe = share / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"setting NFS_SHARE_ROOT_PATH: {share} is not writable: {exc.strerror}") from None
    engine = make_engine(settings.resolved_database_url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
    except SQLAlchemyError as exc:
        raise ConfigError(f"setting DATABASE_URL: cannot connect: {describe(exc)}") from None
    finally:
        engine.dispose()
    if not {"jobs", "tasks"} <= tables:
        raise ConfigError("setting DATABASE_URL: tables jobs/tasks missing; run `sqlcheckctl db upgrade` first")
    try:
        redis.Redis.from_url(settings.broker_url, socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        raise ConfigError(f"setting CELERY_BROKER_URL: cannot reach {settings.broker_url}: {exc}") from None


def worker_argv(settings: Settings, queues: list[str], concurrency: int, node_name: str) -> list[str]:
    """The `celery worker` arguments; pure, so tests and the supervisor config can show them."""
    return [
        "worker",
        f"--queues={','.join(queues)}",
        f"--concurrency={concurrency}",
        f"--hostname={node_name}",
        "--pool=prefork",
        f"--loglevel={settings.log_level}",
        "--without-gossip",  # nodes need not chat; saves a message per second per node
        "--without-mingle",  # no revoked-id sync at start: faster start, we do not revoke
        "--task-events",  # Flower / `celery events`
    ]


def default_node_name(settings: Settings, queues: list[str]) -> str:
    role = "zip" if queues == [ZIP_QUEUE] else "analysis" if queues == [ANALYSIS_QUEUE] else "worker"
    return f"{role}@{settings.node_name}"


def run_worker(settings: Settings, queues: list[str], concurrency: int | None = None, node_name: str | None = None) -> None:
    """Check prerequisites, configure Celery, and run the worker in the foreground until stopped."""
    check_prerequisites(settings)
    from sqlcheck import tasks, worker_hooks

    tasks.set_runtime(Runtime.from_settings(settings))
    if ANALYSIS_QUEUE in queues:
        worker_hooks.warm_linter(settings.dialects_to_warm)  # before the pool forks: children start warm
    app = configure_app(settings)
    worker_hooks.install(settings)
    concurrency = concurrency or (1 if queues == [ZIP_QUEUE] else settings.analysis_concurrency)
    node_name = node_name or default_node_name(settings, queues)
    log.info("starting worker %s: queues=%s concurrency=%d", node_name, ",".join(queues), concurrency)
    app.worker_main(worker_argv(settings, queues, concurrency, node_name))
