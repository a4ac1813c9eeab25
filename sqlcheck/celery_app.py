"""The Celery app: names, queues and settings that make up the wire contract.

The web service sends, by name, with JSON arguments::

    send_task("app.celery_app.tasks.expand_zip_and_dispatch_tasks", args=[job_id], queue="zip_processing")

Settings follow what we measured (../shared/notes/celery-facts.md): a dead child
or worker must lead to redelivery, never to a silently acked message.
"""

from __future__ import annotations

from celery import Celery

from sqlcheck.settings import Settings

ZIP_QUEUE = "zip_processing"
ANALYSIS_QUEUE = "sql_analysis"
EXPAND_TASK = "app.celery_app.tasks.expand_zip_and_dispatch_tasks"
LINT_TASK = "app.celery_app.tasks.process_sql_file"
LINT_BATCH_TASK = "app.celery_app.tasks.process_sql_files"

app = Celery("sqlcheck")


def celery_config(settings: Settings) -> dict:
    """Celery settings for these sqlcheck settings; each line says why."""
    return dict(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend or None,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        timezone="Asia/Shanghai",
        enable_utc=True,
        task_routes={EXPAND_TASK: {"queue": ZIP_QUEUE}, LINT_TASK: {"queue": ANALYSIS_QUEUE},
                     LINT_BATCH_TASK: {"queue": ANALYSIS_QUEUE}},
        task_default_queue=ANALYSIS_QUEUE,
        task_acks_late=True,  # ack after the task ends: a dead worker means redelivery
        task_reject_on_worker_lost=True,  # a SIGKILLed child requeues its message (bounded by SQLCHECK_MAX_ATTEMPTS)
        task_acks_on_failure_or_timeout=True,  # a hard timeout is final: no endless poison loop
        task_ignore_result=True,  # status lives in the database; a Redis blip cannot fail a finished file
        task_track_started=False,
        worker_prefetch_multiplier=1,  # reserve only what the pool can run; keeps children evenly loaded
        # sqlfluff's Rust bridge leaks a little per file (~9 KiB, see README "Performance"): a child
        # is replaced after this many messages; forked from the warm main process, it starts warm
        worker_max_tasks_per_child=settings.child_max_messages,
        worker_cancel_long_running_tasks_on_connection_loss=False,  # keep linting through broker blips
        worker_soft_shutdown_timeout=0,  # SIGTERM = plain warm shutdown
        worker_send_task_events=True,  # Flower and `celery events` work unchanged
        task_send_sent_event=False,  # a task-sent event per file doubled the cost of dispatch; received/started/succeeded remain
        worker_hijack_root_logger=False,  # we configure logging ourselves: one line per event
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # reconnect forever; supervisord restarts are not needed for a blip
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,  # > hard limit: no duplicate of a live task
            "unacked_restore_throttle": 1,  # sweep unacked messages every 10 s, not every ~100 s
        },
        broker_pool_limit=4,
    )


def configure_app(settings: Settings) -> Celery:
    """Apply the settings to the module-level app and give each task its time limits."""
    app.conf.update(celery_config(settings))
    from sqlcheck import tasks  # noqa: F401 - registers the tasks on `app`

    app.tasks[EXPAND_TASK].soft_time_limit = settings.zip_soft_time_limit_s
    app.tasks[EXPAND_TASK].time_limit = settings.zip_hard_time_limit_s
    # A file's soft limit is a timer of its own around its lint (sqlcheck/soft_limit.py): Celery's
    # SoftTimeLimitExceeded is an Exception, which sqlfluff's rule runner swallows.
    app.tasks[LINT_TASK].soft_time_limit = None
    app.tasks[LINT_TASK].time_limit = settings.hard_time_limit_s
    # A batch hands its remaining files on once it has run longer than the soft limit; so a
    # message ends within soft + hard.
    app.tasks[LINT_BATCH_TASK].soft_time_limit = None
    app.tasks[LINT_BATCH_TASK].time_limit = settings.lint_batch_time_limit_s
    return app


def make_sender(settings: Settings) -> Celery:
    """A bare app that sends by name, as the web service does (no sqlcheck.tasks import)."""
    sender = Celery("sqlcheck-client")
    sender.conf.update(
        broker_url=settings.broker_url,
        task_serializer="json",
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
    )
    return sender


def send_expand(sender: Celery, job_id: str) -> None:
    sender.send_task(EXPAND_TASK, args=[job_id], queue=ZIP_QUEUE)
