"""Memory watchdog for pool children, run in each worker's main process.

Every few hundred ms it reads each child's RSS with psutil. A busy child over
SQLCHECK_CHILD_MAX_RSS_MB is SIGKILLed at once (a ballooning child might not survive a
polite signal, and every moment it keeps growing), then its file is recorded
FAILURE/memory; Celery starts a new child. It runs on the worker's timer: in the event
loop, which learns of the death only after this returns, and during a warm stop (while the
pool waits for the files in flight) in Celery's shutdown timer thread, so a child is killed
only if it is still the very process that was measured (psutil checks its start time).

Children over SQLCHECK_CHILD_RECYCLE_RSS_MB are not this module's business: each child
checks its own RSS after every message and exits gracefully (Celery's
worker_max_memory_per_child). From outside, a child just handed a message looks idle
until it reports the start, so a signal from here could cut a file short.
"""

from __future__ import annotations

import logging
import signal
from typing import Any, Callable, Mapping

import psutil
from celery import bootsteps

from sqlcheck.locks import holder_prefix

log = logging.getLogger(__name__)

MIB = 1024 * 1024


def children_to_kill(rss_mb: Mapping[int, float], task_by_pid: Mapping[int, str], max_rss_mb: int) -> dict[int, str]:
    """Pure decision: the busy children over the limit, pid -> the task id running there."""
    return {pid: task_by_pid[pid] for pid, rss in rss_mb.items() if pid in task_by_pid and rss > max_rss_mb}


def _measure(pids: list[int]) -> dict[int, tuple[psutil.Process, float]]:
    """pid -> (the process as measured, its RSS in MiB); gone ones are left out."""
    found = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            found[pid] = (proc, proc.memory_info().rss / MIB)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


#: set by worker_hooks.install: records the memory failure of (task name, first argument, RSS MiB,
#: message id, the killed child's lock holder prefix) after the kill
record_memory_failure: Callable[[str, Any, float, str, str], None] | None = None


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
        """Nothing: on a warm stop the steps stop in reverse order, this one before the pool, which
        then waits for the files in flight; the limit must hold through that wait. The check
        ends with the worker's timer (its step stops after the pool's)."""

    def check(self, worker):
        from celery.worker import state

        pool = getattr(worker.pool, "_pool", None)
        processes = getattr(pool, "_pool", None) or []  # billiard's Process list (private; pinned, tested)
        pids = [p.pid for p in processes if p.pid]
        try:
            requests = {r.worker_pid: r for r in list(state.active_requests) if r.worker_pid}
        except RuntimeError:  # a WeakSet the main thread changed meanwhile (warm stop): look again next time
            return
        task_by_pid = {pid: r.id for pid, r in requests.items()}
        measured = _measure(pids)
        rss_mb = {pid: rss for pid, (_proc, rss) in measured.items()}
        for pid, task_id in children_to_kill(rss_mb, task_by_pid, self.max_rss_mb).items():
            request, (proc, rss) = requests[pid], measured[pid]
            target = (list(request.args or ()) or [task_id])[0]  # a task row id, a batch's list of them, or a job id
            try:
                proc.send_signal(signal.SIGKILL)  # psutil refuses a pid that another process took since
            except psutil.NoSuchProcess:
                continue  # it ended by itself meanwhile: nothing to blame it for
            log.warning("task=%s child pid=%d RSS %.0f MiB > %d MiB: killed; failing the file",
                        task_id, pid, rss, self.max_rss_mb)
            if record_memory_failure is not None:
                try:
                    record_memory_failure(request.name, target, rss, request.id,
                                          holder_prefix(worker.hostname, pid, request.id))
                except Exception:
                    log.exception("task=%s could not record the memory failure", task_id)
