"""The Celery tasks: thin wrappers that map Celery events onto workflow steps.

No business logic here: open the runtime, call the workflow, turn time limits
and outages into row states or retries.
"""

from __future__ import annotations

import logging
import os
import time
from typing import NoReturn, Sequence

import redis
from celery.exceptions import Retry, SoftTimeLimitExceeded

from sqlcheck import counters, workflow
from sqlcheck.celery_app import EXPAND_TASK, LINT_BATCH_TASK, LINT_TASK, app
from sqlcheck.errors import describe
from sqlcheck.locks import TaskLock, acquire_many, release_many
from sqlcheck.retries import backoff_delay_s, is_transient
from sqlcheck.soft_limit import SoftLimitReached
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


def send_lint_messages(messages: Sequence[Sequence[str]]) -> None:
    """One Celery message per list of task ids, all through one producer.

    A lone file goes as process_sql_file(task_id) with the row id as its Celery id; a batch of
    small files as process_sql_files(task_ids) with the id ``batch-<first row id>``.
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
        for task_ids in messages:
            if len(task_ids) == 1:
                task, args, celery_id = process_sql_file, (task_ids[0],), task_ids[0]
            else:
                task, args, celery_id = process_sql_files, (list(task_ids),), f"batch-{task_ids[0]}"
            task.apply_async(args, task_id=celery_id, producer=producer, declare=declare,
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
    lock = TaskLock(redis_client(), task_id, hostname, rt.settings.lock_ttl_s, owner=self.request.id or "")
    try:
        acquired = lock.acquire()
    except redis.RedisError as exc:
        _retry_lock_outage(self, exc, transient_retries, args=(task_id,))
    if not acquired:
        # Another delivery is linting it right now. Do not drop this message: the holder may die.
        log.info("task=%s is being linted elsewhere; checking again in %ss", task_id, rt.settings.lock_retry_delay_s)
        _count_retry("lock_busy")
        # Celery reads max_retries=None as "the task default" (3), which dropped the message after
        # three waits; "always one more" keeps it until the holder ends or its lock expires (TTL).
        raise self.retry(countdown=rt.settings.lock_retry_delay_s, max_retries=more)
    try:
        workflow.lint_task(rt, task_id, hostname, outage_retried=transient_retries < rt.settings.max_retries)
        if transient_retries:  # a retry: finalizing may be what the outage cut short
            with workflow.file_connections(rt) as (conn, _claims):
                workflow.finalize_jobs_of(rt, conn, [task_id])
    except SoftLimitReached:
        _record_soft_timeout(rt, task_id)
    except Exception as exc:
        if _retries_left(exc, transient_retries):
            _release_quietly([lock])
            _retry_outage(self, task_id, exc, transient_retries, args=(task_id,))
        _record_lint_error(rt, task_id, exc, transient_retries)
    finally:
        _release_quietly([lock])


@app.task(name=LINT_BATCH_TASK, bind=True)
def process_sql_files(self, task_ids: list[str], transient_retries: int = 0) -> None:
    """Lint a batch of small files of one job, one after the other, on the same database connections.

    Each file keeps its own soft time limit (a timer in this child) and its own outcome. Files
    whose lock another delivery holds are sent on as single messages (those wait for the lock);
    once the batch has run longer than the soft limit, the files not started are sent on as a
    new batch, so a batch message always ends within soft + hard limit (its Celery hard limit).
    """
    rt = runtime()
    settings = rt.settings
    hostname = self.request.hostname or settings.node_name
    client = redis_client()
    try:
        # A file of the batch may start up to the soft limit after this: its lock must last that long too.
        locks, busy = acquire_many(client, list(task_ids), hostname, settings.lock_ttl_s + settings.soft_time_limit_s,
                                   owner=self.request.id or "")
    except redis.RedisError as exc:
        _retry_lock_outage(self, exc, transient_retries, args=(list(task_ids),))
    held = [lock.task_id for lock in locks]
    try:
        if busy:
            log.info("tasks %s are being linted elsewhere; each is sent on alone to wait for its lock", ",".join(busy))
            send_lint_messages([[task_id] for task_id in busy])
        with workflow.file_connections(rt) as (conn, claims):
            with workflow.deferred_cache_writes(rt):
                job_ids, not_started = _lint_in_turn(self, rt, conn, claims, held, locks, hostname,
                                                     transient_retries)
            for job_id in job_ids:
                workflow.finalize_if_complete(rt, conn, job_id)
            if transient_retries and held:  # a retry: finalizing may be what the outage cut short
                workflow.finalize_jobs_of(rt, conn, held)
    except Retry:
        raise
    except Exception as exc:  # an outage outside a file's own steps: the connection, a send, finalize
        if not _retries_left(exc, transient_retries):
            raise
        _release_quietly(locks)
        # the whole batch again: a file already recorded is not claimed again, and ends nothing twice
        _retry_outage(self, task_ids[0], exc, transient_retries, args=(list(task_ids),))
    finally:
        _release_quietly(locks)
    if not_started:  # after the release: their next message must find them free
        log.info("task=%s and %d more: batch ran past the soft limit; sent on as a new batch",
                 not_started[0], len(not_started) - 1)
        try:
            send_lint_messages([not_started])
        except Exception as exc:
            if not _retries_left(exc, transient_retries):
                raise
            _retry_outage(self, not_started[0], exc, transient_retries, args=(not_started,))


def _lint_in_turn(task, rt: Runtime, conn, claims, held: list[str], locks: list[TaskLock], hostname: str,
                  transient_retries: int) -> tuple[set[str], list[str]]:
    """Lint the batch's files one after the other, each under its own soft limit, and record the
    linted ones together at the end: one wait for the disk per message, not one per file.
    Returns the jobs touched and the files not started because the batch ran past the soft limit.

    A killed child leaves its linted files IN_PROGRESS with their result files written: the kill
    handlers, and the next claim of a redelivered file, record those without linting again.
    """
    settings = rt.settings
    outage_retried = transient_retries < settings.max_retries
    started = time.monotonic()
    job_ids: set[str] = set()
    linted: list[workflow.LintedFile] = []  # result files written, rows not yet recorded

    def record(rest: list[str]) -> None:
        _record_or_retry(task, rt, conn, linted, rest, locks, transient_retries)
        job_ids.update(f.job_id for f in linted)
        linted.clear()

    for i, task_id in enumerate(held):
        if i and time.monotonic() - started > settings.soft_time_limit_s:
            record(held[i:])
            return job_ids, held[i:]
        try:
            done = workflow.lint_file(rt, conn, claims, task_id, hostname, outage_retried)
        except SoftLimitReached:
            _record_soft_timeout(rt, task_id)
            continue
        except Exception as exc:
            if _retries_left(exc, transient_retries):
                record(held[i:])  # the outage may be Redis's alone: keep what is done (else they go with the retry)
                _release_quietly(locks)
                _retry_outage(task, task_id, exc, transient_retries, args=(held[i:],))
            _record_lint_error(rt, task_id, exc, transient_retries)
            continue
        if done is not None:
            linted.append(done)
            if done.attempts > 1:  # a delivery of this batch died before: keep what is done so far
                record(held[i + 1:])
    record([])
    return job_ids, []


def _record_or_retry(task, rt: Runtime, conn, linted: list[workflow.LintedFile], rest: list[str],
                     locks: list[TaskLock], transient_retries: int) -> None:
    """Record the linted files in one transaction. On an outage, send them and `rest` again later:
    their next claim finds their result files and records them without linting."""
    if not linted:
        return
    try:
        workflow.record_linted(rt, conn, linted)
    except Exception as exc:
        if _retries_left(exc, transient_retries):
            _release_quietly(locks)
            _retry_outage(task, linted[0].result.task_id, exc, transient_retries, args=(_ids(linted) + rest,))
        # given up: the rows stay IN_PROGRESS, and the reaper sends them again (to the same end)
        first, more = linted[0].result.task_id, len(linted) - 1
        if is_transient(exc):
            log.error("task=%s and %d more: results written but not recorded, gave up after %d retries: %s; "
                      "the reaper sends them again", first, more, transient_retries, describe(exc))
        else:
            log.exception("task=%s and %d more: results written but not recorded; the reaper sends them again",
                          first, more)


def _ids(linted: list[workflow.LintedFile]) -> list[str]:
    return [f.result.task_id for f in linted]


def _retry_lock_outage(task, exc: Exception, transient_retries: int, args: tuple) -> NoReturn:
    """Redis was down when the lock was wanted: retry the message, or let it fail at the bound
    (its rows stay PENDING and the reaper sends them again later)."""
    if transient_retries >= runtime().settings.max_retries:
        raise exc
    _retry_later(task, args, transient_retries, _retry_delay(transient_retries), exc)


def _retries_left(exc: Exception, transient_retries: int) -> bool:
    return is_transient(exc) and transient_retries < runtime().settings.max_retries


def _retry_outage(task, task_id: str, exc: Exception, transient_retries: int, args: tuple) -> NoReturn:
    """A transient error (database or Redis outage): send the message again later, from this file on."""
    delay = _retry_delay(transient_retries)
    log.warning("task=%s transient error (%s); retry %d in %.1fs", task_id, describe(exc), transient_retries + 1, delay)
    _retry_later(task, args, transient_retries, delay)


def _retry_later(task, args: tuple, transient_retries: int, delay: float, exc: Exception | None = None) -> NoReturn:
    """Count one outage retry and send the message again (with `args`) after `delay` seconds."""
    _count_retry("transient")
    # Celery's own bound is always one more: `transient_retries` is the one that stops us
    raise task.retry(exc=exc, args=args, countdown=delay, max_retries=task.request.retries + 1,
                     kwargs={"transient_retries": transient_retries + 1}) from None


def _record_soft_timeout(rt: Runtime, task_id: str) -> None:
    workflow.record_failure(
        rt, task_id, FailureReason.TIMEOUT, f"linting took longer than {rt.settings.soft_time_limit_s} s (soft limit)"
    )


def _record_lint_error(rt: Runtime, task_id: str, exc: Exception, transient_retries: int) -> None:
    """An error that ends the file: an outage that outlasted every retry, or our own bug."""
    if is_transient(exc):
        # the outage outlasted every retry: say so, with the real error, and no traceback
        log.error("task=%s gave up after %d retries: %s", task_id, transient_retries, describe(exc))
        message = f"gave up after {transient_retries} retries of a transient error: {exc.__class__.__name__}: {exc}"
    else:
        log.exception("task=%s lint failed with an internal error", task_id)
        message = f"internal error: {exc.__class__.__name__}: {exc}"
    workflow.record_failure(rt, task_id, FailureReason.INTERNAL, message)


def _release_quietly(locks: list[TaskLock]) -> None:
    try:
        release_many(redis_client(), locks)
    except redis.RedisError:
        log.warning("task=%s lock release failed; it expires by itself", ",".join(lock.task_id for lock in locks))
