"""The two Celery tasks: thin wrappers that map Celery events onto workflow steps.

No business logic here: open the runtime, call the workflow, turn time limits
and outages into row states or retries.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import redis
from celery.exceptions import SoftTimeLimitExceeded

from sqlcheck import counters, workflow
from sqlcheck.celery_app import EXPAND_TASK, LINT_TASK, app
from sqlcheck.locks import TaskLock
from sqlcheck.retries import backoff_delay_s, is_transient
from sqlcheck.states import FailureReason
from sqlcheck.workflow import Runtime

log = logging.getLogger(__name__)

_runtime: Runtime | None = None
_redis: tuple[int, redis.Redis] | None = None


def set_runtime(rt: Runtime) -> None:
    """Called once by the worker command before the pool forks; children inherit it."""
    global _runtime
    _runtime = rt


def runtime() -> Runtime:
    if _runtime is None:
        from sqlcheck.settings import load_settings

        set_runtime(Runtime.from_settings(load_settings()))
    assert _runtime is not None
    return _runtime


def redis_client() -> redis.Redis:
    """One client per process (a forked child must not share the parent's sockets)."""
    global _redis
    if _redis is None or _redis[0] != os.getpid():
        _redis = (os.getpid(), redis.Redis.from_url(runtime().settings.broker_url, socket_timeout=10))
    return _redis[1]


def send_lint_messages(task_ids: Sequence[str]) -> None:
    """One message per file, all through one producer; the Celery id is the task row id.

    kombu's publish batch buffers the Redis LPUSH commands of up to 1,000 messages in one
    pipeline: the messages are the ones apply_async always builds, only the round trips are
    fewer. Leaving the block with an error discards what was not yet flushed; the caller then
    leaves those rows undispatched for the reaper.
    """
    # Two per-message costs avoided, each measured: only the first message declares the queue
    # (kombu re-checked the declaration per message by copying and binding the queue), and the
    # argument reprs shown by Flower are given, not built by Celery's slow saferepr.
    declare = None
    with app.producer_or_acquire() as producer, producer.batch(max_size=1000):
        for task_id in task_ids:
            args = (task_id,)
            process_sql_file.apply_async(args, task_id=task_id, producer=producer, declare=declare,
                                         argsrepr=repr(args), kwargsrepr="{}")
            declare = []


def _count_retry(why: str) -> None:
    """One more retry in the cluster-wide counter the metrics endpoint publishes (never raises)."""
    counters.bump(redis_client(), counters.RETRIES, why)


def _retry_delay(retries: int) -> float:
    s = runtime().settings
    return backoff_delay_s(retries, s.retry_base_delay_s, s.retry_max_delay_s)


@app.task(name=EXPAND_TASK, bind=True)
def expand_zip_and_dispatch_tasks(self, job_id: str) -> None:
    rt = runtime()
    try:
        workflow.expand_job(rt, job_id, send_lint_messages)
    except SoftTimeLimitExceeded:
        workflow.fail_job(rt, job_id, f"expanding the archive took longer than {rt.settings.zip_soft_time_limit_s} s")
    except Exception as exc:
        if is_transient(exc) and self.request.retries < rt.settings.max_retries:
            delay = _retry_delay(self.request.retries)
            log.warning("job=%s expand: transient error (%s); retry %d in %.1fs",
                        job_id, exc.__class__.__name__, self.request.retries + 1, delay)
            _count_retry("transient")
            raise self.retry(countdown=delay, max_retries=rt.settings.max_retries) from None
        log.exception("job=%s expand failed", job_id)
        workflow.fail_job(rt, job_id, f"internal error while expanding the archive: {exc.__class__.__name__}: {exc}")


@app.task(name=LINT_TASK, bind=True)
def process_sql_file(self, task_id: str, transient_retries: int = 0) -> None:
    """Lint one file. Lock waits are unbounded (the lock TTL ends them); outages are retried
    at most SQLCHECK_MAX_RETRIES times, counted apart in `transient_retries` (senders omit it)."""
    rt = runtime()
    more = self.request.retries + 1  # Celery's own bound: never the one that stops us
    hostname = self.request.hostname or rt.settings.node_name
    lock = TaskLock(redis_client(), task_id, hostname, rt.settings.lock_ttl_s)
    try:
        acquired = lock.acquire()
    except redis.RedisError as exc:
        if transient_retries >= rt.settings.max_retries:
            raise  # the message fails; the row stays PENDING and the reaper sends it again later
        _count_retry("transient")
        raise self.retry(exc=exc, countdown=_retry_delay(transient_retries), max_retries=more,
                         kwargs={"transient_retries": transient_retries + 1}) from None
    if not acquired:
        # Another delivery is linting it right now. Do not drop this message: the holder may die.
        log.info("task=%s is being linted elsewhere; checking again in %ss", task_id, rt.settings.lock_retry_delay_s)
        _count_retry("lock_busy")
        # Celery reads max_retries=None as "the task default" (3), which dropped the message after
        # three waits; "always one more" keeps it until the holder ends or its lock expires (TTL).
        raise self.retry(countdown=rt.settings.lock_retry_delay_s, max_retries=more)
    try:
        workflow.lint_task(rt, task_id, hostname, outage_retried=transient_retries < rt.settings.max_retries)
    except SoftTimeLimitExceeded:
        workflow.record_failure(
            rt, task_id, FailureReason.TIMEOUT, f"linting took longer than {rt.settings.soft_time_limit_s} s (soft limit)"
        )
    except Exception as exc:
        if is_transient(exc) and transient_retries < rt.settings.max_retries:
            delay = _retry_delay(transient_retries)
            log.warning("task=%s transient error (%s: %s); retry %d in %.1fs",
                        task_id, exc.__class__.__name__, _first_line(exc), transient_retries + 1, delay)
            _release_quietly(lock)
            _count_retry("transient")
            raise self.retry(countdown=delay, max_retries=more,
                             kwargs={"transient_retries": transient_retries + 1}) from None
        reason = FailureReason.INTERNAL
        if is_transient(exc):
            # the outage outlasted every retry: say so, with the real error, and no traceback
            log.error("task=%s gave up after %d retries: %s: %s", task_id, transient_retries, exc.__class__.__name__,
                      _first_line(exc))
            message = f"gave up after {transient_retries} retries of a transient error: {exc.__class__.__name__}: {exc}"
        else:
            log.exception("task=%s lint failed with an internal error", task_id)
            message = f"internal error: {exc.__class__.__name__}: {exc}"
        workflow.record_failure(rt, task_id, reason, message)
    finally:
        _release_quietly(lock)


def _first_line(exc: BaseException) -> str:
    """Driver errors span several lines; a log event is one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _release_quietly(lock: TaskLock) -> None:
    try:
        lock.release()
    except redis.RedisError:
        log.warning("task=%s lock release failed; it expires by itself", lock.task_id)
