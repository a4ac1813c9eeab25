"""Celery signal handlers: one small function per lifecycle hook.

- task_failure (main process): a hard time limit killed a child; record it.
- worker_process_init (each child): warm the default dialect's Linter, unless forked warm.
- task_postrun (each child): give the memory freed by a lint message back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from typing import Sequence

import redis
from celery import signals
from celery.exceptions import TimeLimitExceeded

from sqlcheck import lint_engine, tasks, watchdog, workflow
from sqlcheck.celery_app import EXPAND_TASK, LINT_BATCH_TASK, LINT_TASK, app
from sqlcheck.errors import UserInputError
from sqlcheck.locks import held_by_another_message, release_owned
from sqlcheck.settings import Settings
from sqlcheck.states import FailureReason

log = logging.getLogger(__name__)


#: Celery id -> when its hard timeout was recorded. Celery 5.7 sends task_failure twice for one
#: timeout, back to back; the same id timing out again later is a new timeout (the reaper
#: re-sends a file under its own id when recording the first one failed).
_timeouts_recorded: dict[str, float] = {}
DUPLICATE_SIGNAL_WINDOW_S = 5.0


def first_report_of_timeout(seen: dict[str, float], task_id: str, now: float) -> bool:
    """True unless this is the duplicate signal of a timeout just recorded; remembers the id."""
    if now - seen.get(task_id, -DUPLICATE_SIGNAL_WINDOW_S) < DUPLICATE_SIGNAL_WINDOW_S:
        return False
    seen.pop(task_id, None)
    seen[task_id] = now
    if len(seen) > 1000:
        seen.pop(next(iter(seen)))  # the oldest
    return True


def on_task_failure(sender=None, task_id=None, exception=None, args=None, **_kwargs) -> None:
    """Hard time limit: the child is gone, so the main process records the outcome.

    A single file ends FAILURE (timeout). Of a batch, the file it was linting ends FAILURE, the
    files it had linted but not yet recorded end SUCCESS from their result files, and the files
    it had not started are sent again (the message itself is acked: timeouts are final).
    """
    if not isinstance(exception, TimeLimitExceeded):
        return
    if not first_report_of_timeout(_timeouts_recorded, task_id, time.monotonic()):
        return
    rt = tasks.runtime()
    name = getattr(sender, "name", None)
    target = (args or [task_id])[0]
    why = f"linting took longer than {rt.settings.hard_time_limit_s} s (hard limit); the child was killed"
    try:
        if name in (LINT_TASK, LINT_BATCH_TASK):
            waiting = _end_killed_message(rt, name, target, task_id, FailureReason.TIMEOUT, why)
            if waiting:
                log.info("task=%s and %d more: not started when the batch was killed; sent again",
                         waiting[0], len(waiting) - 1)
                tasks.send_lint_messages([waiting])
        elif name == EXPAND_TASK:
            limit = rt.settings.zip_hard_time_limit_s
            workflow.fail_job(rt, target, f"expanding the archive took longer than {limit} s")
    except Exception:
        log.exception("task=%s could not record the hard time limit", task_id)
    finally:  # Celery's second signal comes after this handler returns, however long it took
        _timeouts_recorded[task_id] = time.monotonic()


def warm_linter(dialects: Sequence[str] = ()) -> None:
    """Build and warm the Linters of `dialects`, else of the default dialect (a no-op for those
    warm already). Building one costs 0.05-0.3 s: in the worker's main process, before the pool
    forks, every child inherits them, and so does each child replaced later."""
    settings = tasks.runtime().settings
    for dialect in dialects or [settings.default_dialect]:
        try:
            lint_engine.check_dialect(dialect, settings.use_rust_parser)  # builds its warm Linter
        except UserInputError as exc:  # a misspelt SQLCHECK_WARM_DIALECTS entry: say so and go on
            log.error("linter for %r not warmed: %s", dialect, exc)
        except Exception:
            log.exception("linter warm-up of %r failed; files will still be linted", dialect)


def on_worker_process_init(**_kwargs) -> None:
    """Each new child: warm, unless it was forked from a warm main process."""
    warm_linter()


def _load_malloc_trim():
    """glibc's malloc_trim, or None elsewhere (musl, macOS): then nothing is trimmed."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "malloc_trim", None)
    except OSError:
        return None


_malloc_trim = _load_malloc_trim()


def on_task_postrun(sender=None, **_kwargs) -> None:
    """After each lint message: memory freed by parsing stays in glibc's heap and the child's
    RSS only grows (about 8 MiB per pass over the bench corpus); trimming returns the free
    top and free pages to the system (0.3-0.7 ms, once per message, not per file)."""
    if _malloc_trim is not None and getattr(sender, "name", None) in (LINT_TASK, LINT_BATCH_TASK):
        _malloc_trim(0)


def killed_batch_files(rt, client: redis.Redis, task_ids: list[str], message_id: str,
                       holder: str = "") -> tuple[list[str], list[str]]:
    """(running, waiting) of a killed batch, as workflow.running_and_waiting says, less the files
    another message is linting now: the batch had sent those on to wait for their lock, and
    their row is IN_PROGRESS because of that other delivery, which records them itself."""
    running, waiting = workflow.running_and_waiting(rt, task_ids)
    try:
        others = held_by_another_message(client, running, message_id, holder)
    except redis.RedisError as exc:
        # Which of them another delivery is linting cannot be told: ending one would throw that
        # delivery's result away. Left IN_PROGRESS, the reaper sends them again after the hard limit.
        log.warning("task=%s batch killed; its locks unreadable (%s): its %d open files are left to the reaper",
                    message_id, exc.__class__.__name__, len(running))
        return [], waiting
    for task_id in others:
        log.info("task=%s being linted by another delivery; left to it", task_id)
    return [t for t in running if t not in others], waiting


def record_memory_failure(task_name: str, target, rss_mb: float, message_id: str, holder: str = "") -> None:
    """The watchdog killed a child: fail its file, or its job when it was expanding a ZIP
    (otherwise the redelivered ZIP message would balloon again, forever). Files of a batch that
    it had linted but not yet recorded end SUCCESS from their result files; the batch is
    redelivered and goes on with the files it had not started. `holder` (locks.holder_prefix)
    names the killed child's locks: during a warm stop this runs beside the main thread, and the
    redelivery, under the same message id, may already hold locks of its own elsewhere."""
    rt = tasks.runtime()
    why = f"the worker child used {rss_mb:.0f} MiB, above SQLCHECK_CHILD_MAX_RSS_MB={rt.settings.child_max_rss_mb}"
    if task_name == EXPAND_TASK:
        workflow.fail_job(rt, target, f"expanding the archive: {why}")
    else:  # a batch is redelivered: its files not started go with it
        _end_killed_message(rt, task_name, target, message_id, FailureReason.MEMORY, why, holder)


def _end_killed_message(rt, task_name: str, target, message_id: str, reason: FailureReason, why: str,
                        holder: str = "") -> list[str]:
    """A killed lint message (hard limit, memory): the files it was running end `reason` (or
    SUCCESS from a whole result file), and its locks are freed, so its files may run again on any
    node at once, not after the locks' TTL. Returns a batch's files it had not started."""
    if task_name == LINT_BATCH_TASK:
        task_ids = list(target)
        running, waiting = killed_batch_files(rt, tasks.redis_client(), task_ids, message_id, holder)
    else:
        task_ids, running, waiting = [target], [target], []
    for file_task_id in running:
        workflow.record_cut_short(rt, file_task_id, reason, why)
    try:
        release_owned(tasks.redis_client(), task_ids, message_id, holder)
    except redis.RedisError as exc:
        log.warning("task=%s locks of the killed message not released (%s); they expire by themselves",
                    message_id, exc.__class__.__name__)
    return waiting


def install(settings: Settings) -> None:
    """Connect the handlers and add the watchdog bootstep; call once, before the worker starts."""
    signals.task_failure.connect(on_task_failure, weak=False)
    signals.worker_process_init.connect(on_worker_process_init, weak=False)
    signals.task_postrun.connect(on_task_postrun, weak=False)
    app.conf.update(
        sqlcheck_child_max_rss_mb=settings.child_max_rss_mb,
        sqlcheck_watchdog_interval_s=settings.watchdog_interval_s,
        # Each child checks its own RSS (psutil) after every message and exits gracefully when it
        # is over: the recycling of big children, with no window in which a file could be cut.
        worker_max_memory_per_child=min(settings.child_recycle_rss_mb, settings.child_max_rss_mb) * 1024,
    )
    watchdog.record_memory_failure = record_memory_failure
    if watchdog.RssWatchdog not in app.steps["worker"]:
        app.steps["worker"].add(watchdog.RssWatchdog)
