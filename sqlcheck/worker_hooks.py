"""Celery signal handlers: one small function per lifecycle hook.

- task_failure (main process): a hard time limit killed a child; record it.
- worker_process_init (each child): warm the Linter so the first file is not slow.
"""

from __future__ import annotations

import logging

from celery import signals
from celery.exceptions import TimeLimitExceeded

from sqlcheck import lint_engine, tasks, watchdog, workflow
from sqlcheck.celery_app import EXPAND_TASK, LINT_TASK, app
from sqlcheck.settings import Settings
from sqlcheck.states import FailureReason

log = logging.getLogger(__name__)


def on_task_failure(sender=None, task_id=None, exception=None, args=None, **_kwargs) -> None:
    """Hard time limit: the child is gone, so the main process records the outcome.

    Celery 5.7 sends this signal twice for one hard timeout; both writes are
    conditional, so the second changes nothing.
    """
    if not isinstance(exception, TimeLimitExceeded):
        return
    rt = tasks.runtime()
    name = getattr(sender, "name", None)
    target = (args or [task_id])[0]
    try:
        if name == LINT_TASK:
            workflow.record_failure(
                rt, target, FailureReason.TIMEOUT,
                f"linting took longer than {rt.settings.hard_time_limit_s} s (hard limit); the child was killed",
            )
        elif name == EXPAND_TASK:
            limit = rt.settings.zip_hard_time_limit_s
            workflow.fail_job(rt, target, f"expanding the archive took longer than {limit} s")
    except Exception:
        log.exception("task=%s could not record the hard time limit", target)


def on_worker_process_init(**_kwargs) -> None:
    """Each new child: build and warm the default dialect's Linter once."""
    try:
        settings = tasks.runtime().settings
        lint_engine.warm_up(settings.default_dialect, settings.rust_parser == "on")
    except Exception:
        log.exception("linter warm-up failed; files will still be linted")


def record_memory_failure(task_name: str, target: str, rss_mb: float) -> None:
    """The watchdog is about to kill a child: fail its file, or its job when it was expanding a ZIP
    (otherwise the redelivered ZIP message would balloon again, forever)."""
    rt = tasks.runtime()
    why = f"the worker child used {rss_mb:.0f} MiB, above SQLCHECK_CHILD_MAX_RSS_MB={rt.settings.child_max_rss_mb}"
    if task_name == EXPAND_TASK:
        workflow.fail_job(rt, target, f"expanding the archive: {why}")
    else:
        workflow.record_failure(rt, target, FailureReason.MEMORY, why)


def install(settings: Settings) -> None:
    """Connect the handlers and add the watchdog bootstep; call once, before the worker starts."""
    signals.task_failure.connect(on_task_failure, weak=False)
    signals.worker_process_init.connect(on_worker_process_init, weak=False)
    app.conf.update(
        sqlcheck_child_max_rss_mb=settings.child_max_rss_mb,
        sqlcheck_child_recycle_rss_mb=settings.child_recycle_rss_mb,
        sqlcheck_watchdog_interval_s=settings.watchdog_interval_s,
        # Celery's own check runs between files, on peak RSS: it recycles slow leaks.
        worker_max_memory_per_child=settings.child_recycle_rss_mb * 1024,
    )
    watchdog.record_memory_failure = record_memory_failure
    if watchdog.RssWatchdog not in app.steps["worker"]:
        app.steps["worker"].add(watchdog.RssWatchdog)
