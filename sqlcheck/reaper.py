"""The stuck-work reaper: brings every row to a terminal state when no message will.

Messages can be lost for good (Redis without persistence, a send that failed while
Redis was down) or parked for the visibility timeout (a whole worker host SIGKILLed:
its messages wait in Redis `unacked`). One pass looks at the database, decides per
row, and acts:

- IN_PROGRESS task past hard limit + margin and no `task_lock:<id>`  -> re-sent (or FAILURE worker_lost)
- PENDING task sent (or created, never sent) over `lost_after` ago and not in the queue -> re-sent
- PENDING/PROCESSING job without tasks over its limit and not in the zip queue -> expand re-sent (or FAILED)
- PROCESSING job whose tasks all ended -> finalized
- terminal job without summary.json -> summary written

Re-sending is always safe: task ids are the row ids, a duplicate waits on the task
lock and then skips a terminal row. Attempts are bounded by SQLCHECK_MAX_ATTEMPTS.
`sqlcheckctl reap --loop` runs passes forever (a supervisord program); a Redis
lock lets only one reaper of the cluster act per pass.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

import redis

from sqlcheck import counters
from sqlcheck import repository as repo
from sqlcheck import workflow
from sqlcheck.celery_app import ANALYSIS_QUEUE, EXPAND_TASK, LINT_TASK, ZIP_QUEUE, make_sender
from sqlcheck.errors import describe
from sqlcheck.locks import lock_key
from sqlcheck.states import FailureReason, TaskStatus
from sqlcheck.workflow import Runtime

log = logging.getLogger(__name__)

REAPER_LOCK = "sqlcheck:reaper"
#: how often a job's expand message may be re-sent before the job is failed
JOB_RESEND_KEY = "sqlcheck:reaper:expand_resends:{}"
#: terminal jobs finished this long ago are checked for a missing summary.json
SUMMARY_LOOKBACK = timedelta(hours=6)


# ---- pure decisions ----------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    in_progress_before: datetime  # IN_PROGRESS started before this is past hard limit + margin
    lost_before: datetime  # PENDING sent/created before this should have been picked up
    job_before: datetime  # jobs without tasks claimed/created before this should be expanded
    max_attempts: int


def thresholds(settings, now: datetime) -> Thresholds:
    return Thresholds(
        in_progress_before=now - timedelta(seconds=settings.hard_time_limit_s + settings.reaper_margin_s),
        lost_before=now - timedelta(seconds=settings.reaper_lost_after_s),
        job_before=now - timedelta(seconds=max(settings.zip_hard_time_limit_s + settings.reaper_margin_s,
                                               settings.reaper_lost_after_s)),
        max_attempts=settings.max_attempts,
    )


def decide_in_progress(attempts: int, lock_held: bool, max_attempts: int) -> str:
    """'skip' (a live holder), 'fail' (attempts used up) or 'resend'."""
    if lock_held:
        return "skip"
    return "fail" if attempts >= max_attempts else "resend"


def decide_pending(attempts: int, queued: bool, lock_held: bool, max_attempts: int) -> str:
    """'skip' (its message waits in the queue, or someone is on it), 'fail' or 'resend'."""
    if queued or lock_held:
        return "skip"
    return "fail" if attempts >= max_attempts else "resend"


def decide_job(queued: bool, resends: int, max_attempts: int) -> str:
    if queued:
        return "skip"
    return "fail" if resends >= max_attempts else "resend"


def message_task_id_and_args(raw: bytes | str) -> tuple[str | None, list[Any]]:
    """The Celery task id and positional args of one kombu Redis message (protocol 2, JSON)."""
    try:
        payload = json.loads(raw)
        task_id = payload.get("headers", {}).get("id")
        body = payload.get("body", "")
        if payload.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return task_id, list(args) if isinstance(args, (list, tuple)) else []
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None, []


def queued_args(client: redis.Redis, queue: str) -> set[str]:
    """First argument of every message waiting in a queue's ready list: task ids (every id of a
    batch message) or job ids."""
    found = set()
    for raw in client.lrange(queue, 0, -1):
        _task_id, args = message_task_id_and_args(raw)
        if args:
            first = args[0]
            if isinstance(first, list):
                found.update(str(a) for a in first)
            else:
                found.add(str(first))
    return found


# ---- one pass ---------------------------------------------------------------------------


@dataclass
class ReapReport:
    resent_tasks: int = 0
    failed_tasks: int = 0
    resent_jobs: int = 0
    failed_jobs: int = 0
    finalized_jobs: int = 0
    summaries_written: int = 0
    skipped: int = 0
    actions: list[str] = field(default_factory=list)

    @property
    def acted(self) -> int:
        return (self.resent_tasks + self.failed_tasks + self.resent_jobs + self.failed_jobs
                + self.finalized_jobs + self.summaries_written)

    def line(self) -> str:
        return (f"resent_tasks={self.resent_tasks} failed_tasks={self.failed_tasks} resent_jobs={self.resent_jobs} "
                f"failed_jobs={self.failed_jobs} finalized_jobs={self.finalized_jobs} "
                f"summaries_written={self.summaries_written} skipped={self.skipped}")

    def note(self, text: str) -> None:
        self.actions.append(text)
        log.info("reaper: %s", text)


class Sender:
    """Sends by task name, exactly like the web service and expand_job do."""

    def __init__(self, settings):
        self.app = make_sender(settings)

    def lint(self, task_ids: Iterable[str]) -> None:
        with self.app.producer_or_acquire() as producer:
            for task_id in task_ids:
                self.app.send_task(LINT_TASK, args=[task_id], task_id=task_id, queue=ANALYSIS_QUEUE, producer=producer)

    def expand(self, job_id: str) -> None:
        self.app.send_task(EXPAND_TASK, args=[job_id], queue=ZIP_QUEUE)


def reap_once(rt: Runtime, client: redis.Redis, sender: Sender, now: datetime | None = None,
              still_leading: Callable[[], bool] = lambda: True) -> ReapReport:
    """One pass over the database; each action is logged on one line.

    `still_leading` is asked before each step: a pass that outlasts the leader lock (a slow
    database, a backlog) stops there instead of acting beside the reaper that took over.
    """
    now = now or datetime.now(timezone.utc)
    limits = thresholds(rt.settings, now)
    report = ReapReport()
    steps = (lambda: _reap_in_progress(rt, client, sender, limits, report),
             lambda: _reap_pending(rt, client, sender, limits, report),
             lambda: _reap_jobs(rt, client, sender, limits, report),
             lambda: _finish_jobs(rt, now, report))
    for i, step in enumerate(steps):
        if i and not still_leading():
            log.warning("reaper pass stopped: another reaper leads now (this pass outlasted the lock)")
            break
        step()
    return report


def _locks_held(client: redis.Redis, task_ids: list[str]) -> set[str]:
    """Which of these tasks a live delivery holds the lock of: one round trip for them all."""
    pipe = client.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.exists(lock_key(task_id))
    return {task_id for task_id, held in zip(task_ids, pipe.execute()) if held}


def _reap_in_progress(rt, client, sender, limits: Thresholds, report: ReapReport) -> None:
    with rt.db.session() as s:
        rows = [(t.id, t.job_id, t.attempts, t.started_at) for t in repo.stale_in_progress_tasks(s, limits.in_progress_before)]
    held = _locks_held(client, [row[0] for row in rows])
    for task_id, job_id, attempts, started_at in rows:
        action = decide_in_progress(attempts, task_id in held, limits.max_attempts)
        if action == "skip":
            report.skipped += 1
        elif action == "fail":
            _give_up(rt, report, job_id, task_id, attempts, "the worker was lost each time", "no live holder")
        else:
            with rt.db.session() as s:
                moved = repo.requeue_task(s, task_id, started_at)
            if moved:
                sender.lint([task_id])
                report.resent_tasks += 1
                report.note(f"job={job_id} task={task_id} re-sent: IN_PROGRESS since {started_at:%H:%M:%S} "
                            f"with no live holder (attempt {attempts} of {limits.max_attempts})")


def _give_up(rt, report: ReapReport, job_id: str, task_id: str, attempts: int, why: str, short: str) -> None:
    """Attempts used up: SUCCESS if an earlier attempt wrote the whole result file (killed before
    recording it, whether the row was put back to PENDING since or not), else FAILURE worker_lost."""
    ended = workflow.record_cut_short(rt, task_id, FailureReason.WORKER_LOST, f"gave up after {attempts} attempts: {why}")
    if ended == TaskStatus.FAILURE:
        report.failed_tasks += 1
        report.note(f"job={job_id} task={task_id} FAILURE worker_lost after {attempts} attempts ({short})")
    elif ended == TaskStatus.SUCCESS:
        report.note(f"job={job_id} task={task_id} SUCCESS from the result file an earlier attempt wrote")


#: stale PENDING rows are looked at in pages, up to 20 per pass: rows whose messages wait in a
#: long queue (a backlog) must not hide the lost ones behind them
PENDING_PAGE_ROWS = 2500
PENDING_PAGES_PER_PASS = 20


def _reap_pending(rt, client, sender, limits: Thresholds, report: ReapReport) -> None:
    queued = None
    after = None
    for _page in range(PENDING_PAGES_PER_PASS):
        with rt.db.session() as s:
            page = repo.stale_pending_tasks(s, limits.lost_before, PENDING_PAGE_ROWS, after)
            rows = [(t.id, t.job_id, t.attempts, t.dispatched_at) for t in page]
            after = (page[-1].created_at, page[-1].id) if page else None
        if not rows:
            return
        if queued is None:  # read once per pass: a long queue is costly to read
            queued = queued_args(client, ANALYSIS_QUEUE)
        _reap_pending_rows(rt, client, sender, limits, report, rows, queued)


def _reap_pending_rows(rt, client, sender, limits: Thresholds, report: ReapReport, rows, queued) -> None:
    to_send: list[str] = []
    held = _locks_held(client, [row[0] for row in rows if row[0] not in queued])  # a queued one waits anyway
    for task_id, job_id, attempts, dispatched_at in rows:
        action = decide_pending(attempts, task_id in queued, task_id in held, limits.max_attempts)
        if action == "skip":
            report.skipped += 1
        elif action == "fail":
            _give_up(rt, report, job_id, task_id, attempts, "its message was lost each time", "message lost")
        else:
            to_send.append(task_id)
            why = "never sent" if dispatched_at is None else "its message is gone"
            report.note(f"job={job_id} task={task_id} re-sent: PENDING and {why}")
    if to_send:
        sender.lint(to_send)
        with rt.db.session() as s:
            repo.mark_dispatched(s, to_send)
        report.resent_tasks += len(to_send)


def _reap_jobs(rt, client, sender, limits: Thresholds, report: ReapReport) -> None:
    with rt.db.session() as s:
        rows = [(j.id, j.status) for j in repo.stale_unexpanded_jobs(s, limits.job_before)]
    if not rows:
        return
    queued = queued_args(client, ZIP_QUEUE)
    for job_id, status in rows:
        key = JOB_RESEND_KEY.format(job_id)
        resends = int(client.get(key) or 0)
        action = decide_job(job_id in queued, resends, limits.max_attempts)
        if action == "skip":
            report.skipped += 1
        elif action == "fail":
            if workflow.fail_job(rt, job_id, f"the archive was never expanded: its message was re-sent {resends} "
                                             "times and lost each time (zip workers down?)"):
                report.failed_jobs += 1
                report.note(f"job={job_id} FAILED: expand message lost {resends} times")
        else:
            sender.expand(job_id)
            client.set(key, resends + 1, ex=86_400)
            report.resent_jobs += 1
            report.note(f"job={job_id} expand re-sent: {status} without tasks and no message queued "
                        f"(re-send {resends + 1} of {limits.max_attempts})")


def _finish_jobs(rt, now: datetime, report: ReapReport) -> None:
    with rt.db.session() as s:
        unfinalized = repo.processing_jobs_without_open_tasks(s)
    for job_id in unfinalized:
        if workflow.finalize_job(rt, job_id):
            report.finalized_jobs += 1
            report.note(f"job={job_id} finalized: every task had ended but nobody finalized it")
    with rt.db.session() as s:
        recent = repo.terminal_jobs_finished_between(s, now - SUMMARY_LOOKBACK, now - timedelta(seconds=10))
    for job_id in recent:
        if repo.is_job_id(job_id) and not rt.share.absolute(rt.share.summary_rel(job_id)).exists():
            workflow.write_summary(rt, job_id)
            report.summaries_written += 1
            report.note(f"job={job_id} summary.json was missing; written")


# ---- the loop ---------------------------------------------------------------------------


#: renew the lock only if it is still ours, in one step (a GET then an EXPIRE could renew the
#: lock another reaper took in between)
_RENEW_IF_MINE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end return 0"


def _lead(client: redis.Redis, me: str, ttl_s: int) -> bool:
    """True while this reaper leads: it took the lock, or holds it and renews it.

    A leader that dies stops renewing; another reaper takes over within ``ttl_s``.
    """
    if client.set(REAPER_LOCK, me, nx=True, ex=ttl_s):
        return True
    return bool(client.eval(_RENEW_IF_MINE, 1, REAPER_LOCK, me, ttl_s))


def run(rt: Runtime, loop: bool, interval_s: float, stop: Callable[[], bool] = lambda: False) -> ReapReport:
    """One pass, or passes forever (until ``stop()``); only one reaper of the cluster acts per pass.

    An outage (database, Redis) skips the pass with one log line; the next pass tries again.
    """
    from sqlcheck.retries import is_transient

    client = redis.Redis.from_url(rt.settings.broker_url, socket_timeout=10, socket_connect_timeout=5)
    sender = Sender(rt.settings)
    me = f"{rt.settings.node_name}|{os.getpid()}"
    last = ReapReport()
    while True:
        started = time.monotonic()
        try:
            ttl_s = max(2, int(2 * interval_s) + 1)
            if not loop or _lead(client, me, ttl_s):
                last = reap_once(rt, client, sender, still_leading=lambda: not loop or _lead(client, me, ttl_s))
                counters.bump_many(client, counters.REAPER_ACTIONS,  # for the metrics endpoint
                                   {k: v for k, v in vars(last).items() if isinstance(v, int) and k != "skipped"})
                if last.acted or not loop:
                    log.info("reaper pass: %s", last.line())
        except Exception as exc:  # noqa: BLE001
            if not (loop and is_transient(exc)):
                raise
            log.warning("reaper pass skipped: %s", describe(exc))
        if not loop or stop():
            return last
        time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
