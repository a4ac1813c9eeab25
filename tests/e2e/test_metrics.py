"""Monitoring against real workers: the Prometheus endpoint, Celery events/inspect, JSON logs."""

import json
import signal
import socket
import subprocess
import threading
import urllib.request

import psutil
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from sqlcheck.chaos_services import free_port
from tests.helpers import SQLCHECKCTL, VENV_BIN, make_zip, wait_until

FILES = {
    "small.sql": "select a,b from t\n",
    "big/medium.sql": "SELECT a, b FROM t WHERE c = 1;\n" * 80,  # ~2.6 KB: the 1-10 KiB size bucket
    "clean.sql": "SELECT 1\n",
    "broken.sql": b"\x00\x01\x02\xff\xfe not text",
}


def signal_delivered(pid: int, signum: int) -> bool:
    """The kernel has handed the signal to the process (no longer pending in /proc/<pid>/status)."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    return not any(int(fields[k].strip(), 16) >> (signum - 1) & 1 for k in ("SigPnd", "ShdPnd"))


class Exporter:
    """A real `sqlcheckctl metrics serve` process, stopped by its pid."""

    def __init__(self, stack):
        self.port = free_port()
        self.log = open(stack.root / "metrics.log", "ab")
        self.proc = subprocess.Popen([SQLCHECKCTL, "metrics", "serve", "--port", str(self.port)], env=stack.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(self._answers, 30, "metrics endpoint up")

    def _answers(self):
        assert self.proc.poll() is None, (self.log.name, self.proc.returncode)
        try:
            return self.scrape_text()
        except OSError:
            return None

    def scrape_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as resp:
            return resp.read().decode("utf-8")

    def scrape(self) -> dict[str, list]:
        """{sample name: [(labels, value), ...]} parsed by prometheus_client's own text parser."""
        samples: dict[str, list] = {}
        for family in text_string_to_metric_families(self.scrape_text()):
            for s in family.samples:
                samples.setdefault(s.name, []).append((s.labels, s.value))
        return samples

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        finally:  # a stop that hangs fails the test, and leaves no process behind
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self.log.close()


@pytest.fixture
def exporter(stack):
    e = Exporter(stack)
    yield e
    if e.proc.poll() is None:
        e.stop()


def matching(samples, name, **labels) -> list[float]:
    return [v for lab, v in samples.get(name, []) if all(lab.get(k) == want for k, want in labels.items())]


def value(samples, name, **labels) -> float:
    found = matching(samples, name, **labels)
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def test_metrics_after_a_real_job(stack, exporter):
    worker = stack.start_worker(concurrency=2)
    job_id = stack.submit(make_zip(FILES), dialect="ansi")
    view = stack.wait_job(job_id, 90)
    assert view["status"] == "PARTIAL_SUCCESS"
    m = exporter.scrape()

    files = m["sqlcheck_files_linted_total"]
    assert sum(v for _, v in files) == view["total_tasks"] == 4
    assert value(m, "sqlcheck_files_linted_total", dialect="ansi", outcome="success", failure_reason="") == 3
    assert value(m, "sqlcheck_files_linted_total", dialect="ansi", outcome="failure",
                 failure_reason="decode_error") == 1
    assert value(m, "sqlcheck_watchdog_kills_total") == 0

    succeeded = [t for t in view["tasks"] if t["status"] == "SUCCESS"]
    counts = {lab["size"]: v for lab, v in m["sqlcheck_lint_duration_seconds_count"]}
    assert counts == {"le_1KiB": 2, "le_10KiB": 1, "le_100KiB": 0, "gt_100KiB": 0}
    total_s = sum(v for _, v in m["sqlcheck_lint_duration_seconds_sum"])
    assert total_s == pytest.approx(sum(t["duration_s"] for t in succeeded), rel=1e-6)
    inf = value(m, "sqlcheck_lint_duration_seconds_bucket", size="le_1KiB", le="+Inf")
    assert inf == 2

    assert value(m, "sqlcheck_jobs", status="PARTIAL_SUCCESS") == 1
    assert value(m, "sqlcheck_jobs", status="PENDING") == 0
    assert value(m, "sqlcheck_tasks", status="SUCCESS") == 3
    assert value(m, "sqlcheck_queue_depth", queue="sql_analysis") == 0
    assert value(m, "sqlcheck_queue_depth", queue="zip_processing") == 0

    rss = {int(lab["pid"]): v for lab, v in m["sqlcheck_worker_child_rss_bytes"] if lab["node"] == worker.name}
    assert set(rss) == set(worker.child_pids()) and len(rss) == 2
    assert all(v > 20 * 1024 * 1024 for v in rss.values())  # a warmed-up sqlfluff child is far above 20 MiB
    assert all(v == 0 for _, v in m["sqlcheck_scrape_error"])
    assert exporter.stop() == 0  # SIGTERM: clean exit, as under supervisord


@pytest.mark.parametrize("stack", ["postgresql"], indirect=True)
def test_queue_depth_retries_and_memory_failures(stack, exporter):
    """Messages waiting, a duplicate delivery retrying on the task lock, a memory failure as the
    watchdog records it (recorded here directly: the kill itself is tests/e2e/test_limits.py's)."""
    from sqlcheck import workflow
    from sqlcheck.client import job_view
    from sqlcheck.locks import TaskLock
    from sqlcheck.states import FailureReason

    stack.start_worker(queues="zip_processing", concurrency=1, name="zip@metrics")
    job_id = stack.submit(make_zip({"a.sql": "SELECT 1\n", "b.sql": "SELECT 2\n", "c.sql": "select 3\n"}))
    db = stack.db()
    view = wait_until(lambda: (v := job_view(db, job_id)) and v["total_tasks"] == 3 and v, 60, "tasks created")
    # three small files: one batch message (the locked file is then sent on alone and waits)
    wait_until(lambda: value(exporter.scrape(), "sqlcheck_queue_depth", queue="sql_analysis") == 1, 30,
               "1 lint message queued")

    ids = sorted(t["id"] for t in view["tasks"])
    held = TaskLock(redis.Redis.from_url(stack.env["CELERY_BROKER_URL"]), ids[0], "elsewhere@test", 300)
    assert held.acquire()  # another delivery "is linting" a.sql: the worker must retry, not lint
    rt = workflow.Runtime.from_settings(stack.settings)
    assert workflow.record_failure(rt, ids[1], FailureReason.MEMORY, "the worker child used 2048 MiB")

    stack.start_worker(queues="sql_analysis", concurrency=1, name="analysis@metrics",
                       extra_env={"SQLCHECK_LOCK_RETRY_DELAY_S": "1"})
    wait_until(lambda: sum(matching(exporter.scrape(), "sqlcheck_retries_total", reason="lock_busy")) >= 1, 60,
               "a lock_busy retry counted")
    held.release()
    final = stack.wait_job(job_id, 60)
    assert final["status"] == "PARTIAL_SUCCESS"
    m = exporter.scrape()
    assert value(m, "sqlcheck_watchdog_kills_total") == 1
    assert value(m, "sqlcheck_files_linted_total", failure_reason="memory") == 1
    assert value(m, "sqlcheck_files_linted_total", outcome="success") == 2
    assert value(m, "sqlcheck_queue_depth", queue="sql_analysis") == 0
    assert value(m, "sqlcheck_cache_hits_total") == 0  # three different files: nothing to reuse


def test_workers_answer_inspect_and_emit_task_events(stack):
    """What Flower relies on: remote control replies and task events on the broker."""
    from celery import Celery

    worker = stack.start_worker(concurrency=1)
    monitor = Celery("monitor", broker=stack.env["CELERY_BROKER_URL"])
    replies = monitor.control.inspect(destination=[worker.name], timeout=5).active_queues()
    assert replies and {q["name"] for q in replies[worker.name]} == {"zip_processing", "sql_analysis"}

    ping = subprocess.run([str(VENV_BIN / "celery"), "-b", stack.env["CELERY_BROKER_URL"],
                           "inspect", "ping", "-d", worker.name, "-t", "5"], capture_output=True, timeout=60)
    assert ping.returncode == 0 and b"pong" in ping.stdout, ping.stdout + ping.stderr

    events: list[dict] = []
    ready = threading.Event()
    with monitor.connection() as conn:
        receiver = monitor.events.Receiver(conn, handlers={"*": events.append})

        def capture():
            ready.set()
            try:
                receiver.capture(limit=None, timeout=60, wakeup=False)
            except (socket.timeout, TimeoutError):
                pass

        thread = threading.Thread(target=capture, daemon=True)
        thread.start()
        ready.wait(10)
        # consuming: the worker's heartbeats (every 2 s) arrive, so the job's events will too
        wait_until(lambda: any(e["type"] == "worker-heartbeat" for e in events), 30, "the receiver consuming")
        job_id = stack.submit(make_zip({"x.sql": "SELECT 1\n", "y.sql": "select a,b from t\n"}))
        view = stack.wait_job(job_id, 60)
        task_ids = {t["id"] for t in view["tasks"]}

        def files_in_succeeded_messages() -> set[str]:
            """Both files are small: they travel in one batch message, whose received event lists them."""
            args = {e["uuid"]: e.get("args", "") for e in events if e["type"] == "task-received"}
            done = [args.get(e.get("uuid"), "") for e in events if e["type"] == "task-succeeded"]
            return {t for t in task_ids if any(t in a for a in done)}

        wait_until(lambda: files_in_succeeded_messages() == task_ids, 30, "task-succeeded events for every file")
        receiver.should_stop = True
        thread.join(15)
    kinds = {e["type"] for e in events}
    assert {"task-received", "task-started", "task-succeeded"} <= kinds
    assert all(e["hostname"] == worker.name for e in events if e["type"] == "task-succeeded")


def test_json_log_lines_carry_job_and_task_ids(stack):
    worker = stack.start_worker(concurrency=1, extra_env={"SQLCHECK_LOG_FORMAT": "json"})
    job_id = stack.submit(make_zip({"x.sql": "select a,b from t\n"}))
    view = stack.wait_job(job_id, 60)
    task_id = view["tasks"][0]["id"]
    docs = []
    for line in worker.log().splitlines():
        if line.startswith("{"):
            docs.append(json.loads(line))  # every JSON-looking line parses
    ours = [d for d in docs if d["logger"].startswith("sqlcheck")]
    assert ours and all({"ts", "level", "logger", "pid", "msg"} <= set(d) for d in ours)
    assert any(f"job={job_id}" in d["msg"] and f"task={task_id}" in d["msg"] for d in ours)
    text_lines = [ln for ln in worker.log().splitlines() if "sqlcheck." in ln and not ln.startswith("{")]
    assert text_lines == []  # no sqlcheck log line escaped the JSON formatter


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_metrics_program_under_supervisord(stack):
    """SQLCHECK_METRICS_PORT > 0: `sqlcheckctl start` runs the endpoint as a supervisord program."""
    port = free_port()
    env = {**stack.env, "SQLCHECK_METRICS_PORT": str(port), "CELERY_WORKER_CONCURRENCY": "1",
           "SQLCHECK_EMBEDDED_REDIS": "off"}
    pidfile = stack.settings.home.resolve() / "run" / "supervisord.pid"
    try:
        start = subprocess.run([SQLCHECKCTL, "start"], env=env, capture_output=True, text=True, timeout=240)
        assert start.returncode == 0, start.stdout + start.stderr
        status = json.loads(subprocess.run([SQLCHECKCTL, "status", "--json"], env=env, capture_output=True,
                                           text=True, timeout=60).stdout)
        assert {p["name"]: p["state"] for p in status["programs"]}.get("metrics:metrics") == "RUNNING"

        def scrape():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
                    return resp.read().decode()
            except OSError:
                return None

        text = wait_until(scrape, 30, "endpoint of the supervisord program")
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples.setdefault(s.name, []).append((s.labels, s.value))
        nodes = {lab["node"] for lab, _ in samples["sqlcheck_worker_child_rss_bytes"]}
        node = stack.settings.node_name
        assert nodes == {f"zip@{node}", f"analysis@{node}"}
        stop = subprocess.run([SQLCHECKCTL, "stop"], env=env, capture_output=True, text=True, timeout=240)
        assert stop.returncode == 0, stop.stdout + stop.stderr
    finally:
        try:  # teardown by the pid supervisord wrote, never by name
            proc = psutil.Process(int(pidfile.read_text()))
            family = [proc, *proc.children(recursive=True)]
            proc.send_signal(signal.SIGTERM)
            _, alive = psutil.wait_procs(family, 90)
            for p in alive:
                p.kill()
        except (OSError, ValueError, psutil.NoSuchProcess):
            pass


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_a_source_that_is_down_is_reported_not_fatal(stack):
    """Redis unreachable: the scrape still has the database metrics and says which source failed."""
    env = {**stack.env, "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}
    run = subprocess.run([SQLCHECKCTL, "metrics", "dump"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    samples = {}
    for family in text_string_to_metric_families(run.stdout):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    assert value(samples, "sqlcheck_scrape_error", source="redis") == 1
    assert value(samples, "sqlcheck_scrape_error", source="database") == 0
    assert value(samples, "sqlcheck_jobs", status="SUCCESS") == 0
    assert "sqlcheck_queue_depth" not in samples


@pytest.mark.parametrize("stack", ["postgresql"], indirect=True)
def test_sigterm_during_a_scrape_lets_it_finish_then_exits(stack, exporter):
    """A stop that lands mid-scrape must not be swallowed by the HTTP server (it once was: a hang)."""
    from sqlalchemy import text

    db = stack.db()
    with db.engine.connect() as locker:  # the scrape's first query waits on this lock
        locker.execute(text("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE"))
        got: dict = {}
        client = threading.Thread(target=lambda: got.update(text=exporter.scrape_text()), daemon=True)
        client.start()
        wait_until(lambda: locker.execute(text(
            "SELECT count(*) FROM pg_locks WHERE relation = 'tasks'::regclass AND NOT granted")).scalar(), 30,
            "the scrape waiting on the tasks table")
        exporter.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: signal_delivered(exporter.proc.pid, signal.SIGTERM), 10, "SIGTERM delivered mid-scrape")
        assert exporter.proc.poll() is None, "the exporter dropped a scrape in flight"
        locker.rollback()
    client.join(30)
    assert "sqlcheck_files_linted_total" in got.get("text", ""), "the scrape in flight was not answered"
    assert exporter.proc.wait(15) == 0


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_a_silent_client_cannot_hold_the_stop(stack, exporter):
    from sqlcheck.metrics import REQUEST_TIMEOUT_S

    with socket.create_connection(("127.0.0.1", exporter.port)) as silent:  # connects, never sends a request
        me = silent.getsockname()
        wait_until(lambda: any(c.raddr and tuple(c.raddr) == me for c in psutil.Process(exporter.proc.pid).net_connections()),
                   10, "the server accepted the silent client (and reads its request line)")
        exporter.proc.send_signal(signal.SIGTERM)
        assert exporter.proc.wait(REQUEST_TIMEOUT_S + 10) == 0
