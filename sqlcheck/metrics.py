"""Prometheus endpoint: lint-domain metrics, computed from the database and Redis at scrape time.

Nothing is kept in this process: every scrape asks the database (files and jobs),
Redis (queue depth, event counters from sqlcheck/counters.py) and the process
table (worker child RSS). So any number of exporters, on any node, report the
same cluster-wide numbers, and a restart loses nothing. A source that cannot be
read is skipped and reported as ``sqlcheck_scrape_error{source=...} 1``.

`sqlcheckctl metrics serve` runs it (a supervisord program when SQLCHECK_METRICS_PORT > 0).
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Iterable, Iterator

import psutil
import redis
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from sqlcheck import counters
from sqlcheck import repository as repo
from sqlcheck.celery_app import ANALYSIS_QUEUE, ZIP_QUEUE
from sqlcheck.errors import describe
from sqlcheck.database import Database
from sqlcheck.settings import Settings
from sqlcheck.states import FailureReason, JobStatus, TaskStatus

log = logging.getLogger(__name__)

#: file size bucket edges (bytes) of the lint duration histogram; the last bucket holds the rest
SIZE_EDGES = (1024, 10 * 1024, 100 * 1024)
SIZE_LABELS = ("le_1KiB", "le_10KiB", "le_100KiB", "gt_100KiB")
#: lint duration bucket edges, seconds
DURATION_EDGES = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: kombu's Redis transport keeps priority messages in extra lists named <queue>\x06\x16<priority>
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
QUEUES = (ZIP_QUEUE, ANALYSIS_QUEUE)
#: how long the exporter waits on one client's socket, and how often its loop looks for a stop
REQUEST_TIMEOUT_S = 10.0
STOP_POLL_S = 0.5


# ---- worker processes (psutil) ----------------------------------------------------------


def _is_worker_cmdline(cmdline: list[str]) -> bool:
    for i, arg in enumerate(cmdline):
        if os.path.basename(arg) == "sqlcheckctl":
            return "worker" in cmdline[i + 1:]
    return False


def node_of(cmdline: list[str]) -> str | None:
    """The Celery node name a `sqlcheckctl worker` command line gives (--name / -n)."""
    for i, arg in enumerate(cmdline):
        if arg in ("--name", "-n") and i + 1 < len(cmdline):
            return cmdline[i + 1]
        if arg.startswith("--name="):
            return arg.split("=", 1)[1]
    return None


def _home_of(proc: psutil.Process) -> Path:
    home = Path(proc.environ().get("SQLCHECK_HOME") or ".sqlcheck")
    return (home if home.is_absolute() else Path(proc.cwd()) / home).resolve()


def worker_children_rss(home: Path) -> dict[tuple[str, int], int]:
    """{(node, child pid): RSS bytes} for the pool children of this installation's workers.

    A worker main process is a `sqlcheckctl worker` whose SQLCHECK_HOME is ``home``
    and whose parent is not one (pool children are forks with the same command line).
    """
    home = home.resolve()
    candidates = {}
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        if _is_worker_cmdline(proc.info["cmdline"] or []):
            candidates[proc.info["pid"]] = proc
    found = {}
    for pid, proc in candidates.items():
        if proc.info["ppid"] in candidates:
            continue
        try:
            if _home_of(proc) != home:
                continue
            node = node_of(proc.info["cmdline"]) or f"pid{pid}"
            children = proc.children()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        for child in children:
            try:
                found[(node, child.pid)] = child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # replaced meanwhile: its siblings still count
    return found


# ---- the collector ----------------------------------------------------------------------


class LintCollector(Collector):
    """Builds every metric family on each scrape."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.db = Database(settings.resolved_database_url)
        self.redis = redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=5)

    def collect(self) -> Iterator:
        errors = GaugeMetricFamily("sqlcheck_scrape_error", "1 when a source could not be read in this scrape",
                                   labels=["source"])
        for source, build in (("database", self._from_database), ("redis", self._from_redis),
                              ("processes", self._from_processes)):
            try:
                families = list(build())
            except Exception as exc:  # noqa: BLE001 - one source down must not hide the others
                log.warning("metrics: %s not read: %s", source, describe(exc))
                errors.add_metric([source], 1)
                continue
            errors.add_metric([source], 0)
            yield from families
        yield errors

    # -- database
    def _from_database(self) -> Iterable:
        with self.db.session() as s:
            ended = repo.ended_task_counts(s)
            durations = repo.lint_duration_buckets(s, SIZE_EDGES, DURATION_EDGES)
            jobs = repo.job_counts_by_status(s)
            tasks = repo.task_counts_by_status(s)
        yield from file_families(ended, self.settings.default_dialect)
        yield duration_family(durations)
        jobs_family = GaugeMetricFamily("sqlcheck_jobs", "jobs by status", labels=["status"])
        for status in JobStatus:
            jobs_family.add_metric([status.value], jobs.get(status.value, 0))
        yield jobs_family
        tasks_family = GaugeMetricFamily("sqlcheck_tasks", "files (task rows) by status", labels=["status"])
        for status in TaskStatus:
            tasks_family.add_metric([status.value], tasks.get(status.value, 0))
        yield tasks_family

    # -- Redis
    def _from_redis(self) -> Iterable:
        pipe = self.redis.pipeline(transaction=False)
        for queue in QUEUES:
            for suffix in PRIORITY_SUFFIXES:
                pipe.llen(queue + suffix)
        pipe.hlen("unacked")
        lengths = pipe.execute()
        depth = GaugeMetricFamily("sqlcheck_queue_depth", "messages waiting in each Celery queue (Redis LLEN)",
                                  labels=["queue"])
        per_queue = len(PRIORITY_SUFFIXES)
        for i, queue in enumerate(QUEUES):
            depth.add_metric([queue], sum(lengths[i * per_queue:(i + 1) * per_queue]))
        yield depth
        yield GaugeMetricFamily("sqlcheck_unacked_messages", "messages delivered to a worker and not yet acked",
                                value=lengths[-1])
        yield from counter_families(counters.read_all(self.redis))

    # -- processes
    def _from_processes(self) -> Iterable:
        rss = GaugeMetricFamily("sqlcheck_worker_child_rss_bytes", "resident memory of each worker pool child",
                                labels=["node", "pid"])
        for (node, pid), value in sorted(worker_children_rss(self.settings.home).items()):
            rss.add_metric([node, str(pid)], value)
        yield rss


# ---- pure builders (tested without a server) -----------------------------------------------


def file_families(ended: Iterable[tuple], default_dialect: str) -> list:
    files = CounterMetricFamily("sqlcheck_files_linted", "files that ended, by dialect, outcome and failure reason",
                                labels=["dialect", "outcome", "failure_reason"])
    kills = 0
    merged: dict[tuple[str, str, str], int] = {}
    for dialect, status, reason, count in ended:
        outcome = "success" if status == TaskStatus.SUCCESS.value else "failure"
        labels = (dialect or default_dialect, outcome, reason or "")
        merged[labels] = merged.get(labels, 0) + count
        if reason == FailureReason.MEMORY.value:
            kills += count
    for labels, count in sorted(merged.items()):
        files.add_metric(list(labels), count)
    watchdog = CounterMetricFamily("sqlcheck_watchdog_kills",
                                   "files whose worker child the RSS watchdog killed (failure_reason=memory)",
                                   value=kills)
    return [files, watchdog]


def duration_family(rows: Iterable[tuple[int, int, float, list[int]]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily("sqlcheck_lint_duration_seconds", "lint time of analysed files, by file size",
                                   labels=["size"])
    by_bucket = {bucket: (count, total, cumulative) for bucket, count, total, cumulative in rows}
    for i, label in enumerate(SIZE_LABELS):
        count, total, cumulative = by_bucket.get(i, (0, 0.0, [0] * len(DURATION_EDGES)))
        buckets = [(repr(edge), n) for edge, n in zip(DURATION_EDGES, cumulative)] + [("+Inf", count)]
        family.add_metric([label], buckets, sum_value=total)
    return family


def counter_families(values: dict[str, dict[str, int]]) -> list:
    docs = {
        counters.RETRIES: "task retries (transient outage, or a duplicate delivery waiting for the task lock)",
        counters.REAPER_ACTIONS: "actions of the stuck-work reaper",
        counters.CACHE_HITS: "files answered from the result cache without linting",
    }
    families = []
    for counter, label in counters.KNOWN.items():
        found = values.get(counter, {})
        if label:
            family = CounterMetricFamily(f"sqlcheck_{counter}", docs[counter], labels=[label])
            for value_label, n in sorted(found.items()):
                family.add_metric([value_label], n)
        else:
            family = CounterMetricFamily(f"sqlcheck_{counter}", docs[counter], value=sum(found.values()))
        families.append(family)
    return families


# ---- serving ----------------------------------------------------------------------------


def make_registry(settings: Settings) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LintCollector(settings))
    return registry


def exposition(settings: Settings) -> str:
    """One scrape, as text (for `sqlcheckctl metrics dump`)."""
    from prometheus_client import generate_latest

    return generate_latest(make_registry(settings)).decode("utf-8")


def serve(settings: Settings, port: int, bind: str) -> None:
    """Serve /metrics in the foreground, one scrape at a time, until SIGTERM/SIGINT.

    The signal only sets a flag that the loop checks between requests: raising from the
    handler could land inside a scrape, where wsgiref's catch-all turns it into a 500 and
    keeps serving (a stop that never happened). A scrape in flight is answered first.
    """
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app

    class QuietHandler(WSGIRequestHandler):
        timeout = REQUEST_TIMEOUT_S  # a client that connects and sends nothing cannot hold the stop

        def log_message(self, format, *args):  # noqa: A002 - one access line per scrape is noise
            pass

    try:
        httpd = make_server(bind, port, make_wsgi_app(make_registry(settings)), handler_class=QuietHandler)
    except OSError as exc:
        from sqlcheck.errors import ConfigError

        raise ConfigError(f"setting SQLCHECK_METRICS_PORT: cannot listen on {bind}:{port}: {exc.strerror}") from None

    stop_requested: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: stop_requested.append(signum))
    httpd.timeout = STOP_POLL_S
    log.info("metrics endpoint listening on http://%s:%d/metrics", bind, httpd.server_port)
    try:
        while not stop_requested:
            httpd.handle_request()
    finally:
        httpd.server_close()
    log.info("metrics endpoint stopped (signal %d)", stop_requested[0])
