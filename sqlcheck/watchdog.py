"""Memory watchdog for pool children, run in each worker's main process.

Every few hundred ms it reads each child's RSS with psutil. A busy child over
SQLCHECK_CHILD_MAX_RSS_MB gets its file recorded FAILURE/memory first, then is
SIGKILLed (a ballooning child might not survive a polite signal); Celery starts a
new one. Runs on the worker's own timer, so no thread races the event loop.

Children over SQLCHECK_CHILD_RECYCLE_RSS_MB are not this module's business: each child
checks its own RSS after every message and exits gracefully (Celery's
worker_max_memory_per_child). From outside, a child just handed a message looks idle
until it reports the start, so a signal from here could cut a file short.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any, Callable, Mapping

import psutil
from celery import bootsteps

log = logging.getLogger(__name__)

MIB = 1024 * 1024


def children_to_kill(rss_mb: Mapping[int, float], task_by_pid: Mapping[int, str], max_rss_mb: int) -> dict[int, str]:
    """Pure decision: the busy children over the limit, pid -> the task id running there."""
    return {pid: task_by_pid[pid] for pid, rss in rss_mb.items() if pid in task_by_pid and rss > max_rss_mb}


def child_rss_mb(pids: list[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        try:
            found[pid] = psutil.Process(pid).memory_info().rss / MIB
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


#: set by worker_hooks.install: records the memory failure of (task name, first argument, RSS MiB,
#: message id) before the kill
record_memory_failure: Callable[[str, Any, float, str], None] | None = None


class RssWatchdog(bootsteps.StartStopStep):
    """Celery worker bootstep; its limits come from the app config keys below."""

    requires = {"celery.worker.components:Pool", "celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        conf = worker.app.conf
        self.max_rss_mb = int(conf.get("sqlcheck_child_max_rss_mb", 0))
        self.interval_s = float(conf.get("sqlcheck_watchdog_interval_s", 0.25))
        self.tref = None

    def start(self, worker):
        if self.max_rss_mb > 0:
            self.tref = worker.timer.call_repeatedly(self.interval_s, self.check, (worker,), priority=10)

    def stop(self, worker):
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def check(self, worker):
        from celery.worker import state

        pool = getattr(worker.pool, "_pool", None)
        processes = getattr(pool, "_pool", None) or []  # billiard's Process list (private; pinned, tested)
        pids = [p.pid for p in processes if p.pid]
        requests = {r.worker_pid: r for r in list(state.active_requests) if r.worker_pid}
        task_by_pid = {pid: r.id for pid, r in requests.items()}
        for pid, task_id in children_to_kill(child_rss_mb(pids), task_by_pid, self.max_rss_mb).items():
            request = requests[pid]
            target = (list(request.args or ()) or [task_id])[0]  # a task row id, a batch's list of them, or a job id
            rss = child_rss_mb([pid]).get(pid, 0.0)
            log.warning("task=%s child pid=%d RSS %.0f MiB > %d MiB: failing the file and killing the child",
                        task_id, pid, rss, self.max_rss_mb)
            if record_memory_failure is not None:
                try:
                    record_memory_failure(request.name, target, rss, request.id)
                except Exception:  # the kill must happen even if the DB is down
                    log.exception("task=%s could not record the memory failure", task_id)
            _kill(pid, signal.SIGKILL)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
