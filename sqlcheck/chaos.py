"""The chaos run behind `bin/chaos`: two nodes, one big job, real faults, one line of figures.

Two nodes are two supervisord instances (`sqlcheckctl start` with their own
SERVICE_ID and SQLCHECK_HOME) sharing a private Redis (append-only), a private
PostgreSQL cluster and one share directory. While they process one job the run:
SIGKILLs random analysis pool children, SIGKILLs one whole node (supervisord,
workers, children), restarts Redis and restarts PostgreSQL. Then it waits and
checks the outcome from the database, the share and the node logs.

Faults only ever hit servers and processes this run started.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from sqlcheck.chaos_services import PrivatePostgres, PrivateRedis, stop_on_sigterm

SQLCHECKCTL = str(Path(sys.executable).parent / "sqlcheckctl")
#: one statement lints in about 50 ms: a few per file keeps the job running while faults land
STATEMENT = ("select a.x, b.y, sum(c.z) as total from alpha a join beta b on a.id = b.id "
             "left join gamma c on c.k = b.k where a.q > 1 and b.r < 2 group by a.x, b.y;\n")


@dataclass
class ChaosPlan:
    files: int = 500
    statements_per_file: int = 4
    child_kills: int = 10
    concurrency: int = 2
    timeout_s: float = 600
    #: fractions of files done at which each fault lands
    kill_children_from: float = 0.05
    kill_node_at: float = 0.25
    restart_redis_at: float = 0.40
    restart_postgres_at: float = 0.55
    seed: int = 0
    keep: bool = False


#: short limits so recovery after a whole-node kill takes seconds, not the production hour
CHAOS_SETTINGS = {
    "SQLCHECK_SOFT_TIME_LIMIT_S": "20",
    "SQLCHECK_HARD_TIME_LIMIT_S": "25",
    "SQLCHECK_ZIP_SOFT_TIME_LIMIT_S": "60",
    "SQLCHECK_ZIP_HARD_TIME_LIMIT_S": "70",
    "SQLCHECK_REAPER_INTERVAL_S": "2",
    "SQLCHECK_REAPER_MARGIN_S": "5",
    "SQLCHECK_REAPER_LOST_AFTER_S": "30",
    "SQLCHECK_VISIBILITY_TIMEOUT_S": "90",
    "SQLCHECK_LOCK_RETRY_DELAY_S": "2",
    "SQLCHECK_RETRY_BASE_DELAY_S": "1",
    "SQLCHECK_RETRY_MAX_DELAY_S": "10",
    "SQLCHECK_MAX_RETRIES": "10",
    "SQLCHECK_MAX_ATTEMPTS": "5",
    "SQLCHECK_EMBEDDED_REDIS": "off",
    "SQLCHECK_LOG_LEVEL": "INFO",
}


@dataclass
class Figures:
    files: int = 0
    tasks_terminal: int = 0
    result_files: int = 0
    duplicates: int = 0
    unlogged: int = 0
    lost: int = 0
    stuck: int = 0
    seconds: float = 0.0
    job_status: str = ""
    finalized_ok: bool = False
    problems: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        return (f"chaos: files={self.files} tasks_terminal={self.tasks_terminal} result_files={self.result_files} "
                f"duplicates={self.duplicates} unlogged={self.unlogged} lost={self.lost} stuck={self.stuck} "
                f"seconds={self.seconds:.1f} "
                f"job={self.job_status} finalized_once={'yes' if self.finalized_ok else 'no'} "
                f"faults={len(self.faults)} -> {'PASS' if self.ok else 'FAIL'}")


def build_zip(files: int, statements: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(files):
            zf.writestr(f"dir{i % 10}/file{i:04}.sql", f"-- file {i}\n" + STATEMENT * statements)
    return buf.getvalue()


class Node:
    """One supervisord instance with its workers, started and killed through its pid file."""

    def __init__(self, name: str, env: dict[str, str]):
        self.name, self.env = name, env
        self.home = Path(env["SQLCHECK_HOME"])

    def start(self) -> None:
        out = subprocess.run([SQLCHECKCTL, "start", "--timeout", "180"], env=self.env, capture_output=True,
                             text=True, timeout=240)
        if out.returncode != 0:
            raise RuntimeError(f"node {self.name} did not start: {out.stderr[-2000:]}")

    def supervisord(self) -> psutil.Process | None:
        try:
            return psutil.Process(int((self.home / "run" / "supervisord.pid").read_text().strip()))
        except (OSError, ValueError, psutil.NoSuchProcess):
            return None

    def analysis_children(self) -> list[psutil.Process]:
        sup = self.supervisord()
        if sup is None:
            return []
        found = []
        for worker in sup.children():
            try:
                if "sql_analysis" in " ".join(worker.cmdline()):
                    found.extend(worker.children())
            except psutil.NoSuchProcess:
                continue
        return found

    def kill_all(self) -> int:
        """SIGKILL supervisord and every descendant at once, as a host losing power would."""
        sup = self.supervisord()
        if sup is None:
            return 0
        procs = [sup] + sup.children(recursive=True)
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        return len(procs)

    def stop(self) -> None:
        if self.supervisord() is not None:
            subprocess.run([SQLCHECKCTL, "stop", "--timeout", "30"], env=self.env, capture_output=True, timeout=120)
        self.kill_all()

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted((self.home / "logs").glob("*.log*")))


def _base_env(root: Path, redis: PrivateRedis, pg: PrivatePostgres, plan: ChaosPlan) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SQLCHECK_", "CELERY_", "NFS_", "DATABASE_"))}
    env.update(CHAOS_SETTINGS)
    env.update(CELERY_BROKER_URL=redis.url, DATABASE_URL=pg.url, NFS_SHARE_ROOT_PATH=str(root / "share"),
               CELERY_WORKER_CONCURRENCY=str(plan.concurrency))
    return env


def _progress(db, job_id: str) -> tuple[str, int, int]:
    from sqlcheck import repository as repo

    try:
        with db.session() as s:
            job = repo.get_job(s, job_id)
            counts = repo.task_progress(s, job_id)
            return job.status, job.total_tasks, counts.get("SUCCESS", 0) + counts.get("FAILURE", 0)
    except Exception:  # noqa: BLE001 - PostgreSQL is being restarted on purpose
        return "?", 0, 0


def run(plan: ChaosPlan, say: Callable[[str], None] = print) -> Figures:
    """Set up, inject the faults, wait, check; always tears down what it started."""
    from sqlcheck.client import submit_zip
    from sqlcheck.database import Database
    from sqlcheck.settings import load_settings

    root = Path(tempfile.mkdtemp(prefix="sqlcheck-chaos-"))
    rng = random.Random(plan.seed or None)
    redis, pg = PrivateRedis(root / "redis"), PrivatePostgres(root / "pg")
    nodes: list[Node] = []
    figures = Figures()
    try:
        redis.start()
        pg.init()
        pg.start()
        say(f"private redis {redis.url} (appendonly), private postgresql {pg.url}, work dir {root}")
        base = _base_env(root, redis, pg, plan)
        for name in ("A", "B"):
            node = Node(name, {**base, "SQLCHECK_HOME": str(root / f"node{name}"), "SERVICE_ID": f"chaos{name}"})
            node.start()
            nodes.append(node)
            say(f"node {name} started: supervisord pid {node.supervisord().pid}")
        settings = load_settings(environ={**base, "SQLCHECK_HOME": str(root / "client")})
        zip_path = root / "job.zip"
        zip_path.write_bytes(build_zip(plan.files, plan.statements_per_file))
        db = Database(settings.resolved_database_url)
        started = time.monotonic()
        job_id = submit_zip(settings, zip_path)
        say(f"job {job_id}: {plan.files} files submitted")
        _inject_faults(plan, rng, db, job_id, nodes, redis, pg, figures, say)
        status = _wait_terminal(db, job_id, started + plan.timeout_s, say)
        figures.seconds = time.monotonic() - started
        _wait_for_log(nodes, f"job={job_id} {status}: ", time.monotonic() + 30)  # logged after the commit
        _check(db, settings, job_id, plan, nodes, status, figures)
        db.engine.dispose()
        return figures
    finally:
        for node in nodes:
            node.stop()
        pg.destroy()
        redis.stop(kill=True)
        if figures.ok and not plan.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            say(f"kept for inspection: {root}")


def _inject_faults(plan, rng, db, job_id, nodes, redis, pg, figures, say) -> None:
    pending = [("children", plan.kill_children_from), ("node", plan.kill_node_at), ("redis", plan.restart_redis_at),
               ("postgres", plan.restart_postgres_at)]
    kills_left = plan.child_kills
    killed: set[int] = set()
    deadline = time.monotonic() + plan.timeout_s
    while (pending or kills_left) and time.monotonic() < deadline:
        status, total, done = _progress(db, job_id)
        if status in ("SUCCESS", "PARTIAL_SUCCESS", "FAILED"):
            break
        frac = done / total if total else 0.0
        if kills_left and frac >= plan.kill_children_from:
            live = [c for n in nodes for c in n.analysis_children() if c.pid not in killed and _alive(c)]
            if live:
                victim = rng.choice(live)
                try:
                    victim.send_signal(signal.SIGKILL)
                    killed.add(victim.pid)
                    kills_left -= 1
                    figures.faults.append(f"SIGKILL child {victim.pid}")
                    say(f"[{done}/{total}] SIGKILL analysis child pid {victim.pid}")
                except psutil.NoSuchProcess:
                    pass
        for what, at in list(pending):
            if what == "children" or frac < at:
                continue
            pending.remove((what, at))
            if what == "node":
                count = nodes[1].kill_all()
                figures.faults.append("SIGKILL node B")
                say(f"[{done}/{total}] SIGKILL node B: supervisord and {count - 1} descendants")
            elif what == "redis":
                redis.restart(down_s=2.0, kill=True)
                figures.faults.append("restart redis")
                say(f"[{done}/{total}] Redis SIGKILLed and restarted from its append-only file")
            elif what == "postgres":
                pg.restart(down_s=2.0)
                figures.faults.append("restart postgresql")
                say(f"[{done}/{total}] PostgreSQL stopped (immediate) and restarted")
        if ("children", plan.kill_children_from) in pending and frac >= plan.kill_children_from:
            pending.remove(("children", plan.kill_children_from))
        time.sleep(rng.uniform(0.3, 1.0))


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_terminal(db, job_id: str, deadline: float, say) -> str:
    last = -1
    while time.monotonic() < deadline:
        status, total, done = _progress(db, job_id)
        if status in ("SUCCESS", "PARTIAL_SUCCESS", "FAILED"):
            return status
        if done // 50 != last:
            last = done // 50
            say(f"waiting: {done}/{total} files done, job {status}")
        time.sleep(1)
    return "TIMEOUT"


def _wait_for_log(nodes, text: str, deadline: float) -> None:
    """Until a node's log has `text` (supervisord writes the workers' lines after they happen), or
    the deadline: the check then says what is missing."""
    while time.monotonic() < deadline and not any(text in n.logs() for n in nodes):
        time.sleep(0.2)


def success_writes(success_ids: set[str], result_names: set[str], logs: str) -> tuple[int, int]:
    """(duplicates, unlogged) of a job's SUCCESS writes.

    Duplicates: SUCCESS log lines beyond one per task, and result files of tasks that did not
    end SUCCESS. Unlogged: SUCCESS rows with their result file but no log line, which is not a
    fault of the pipeline: the finish commits before its line is logged, so a process killed in
    between, or a node killed whole with lines still in its supervisord's pipes, loses the line,
    not the write.
    """
    lines = {tid: logs.count(f"task={tid} SUCCESS:") for tid in success_ids}
    duplicates = sum(max(0, n - 1) for n in lines.values()) + len(result_names - {f"{t}.json" for t in success_ids})
    unlogged = sum(1 for tid, n in lines.items() if n == 0 and f"{tid}.json" in result_names)
    return duplicates, unlogged


def _check(db, settings, job_id, plan, nodes, status, figures: Figures) -> None:
    from sqlcheck import repository as repo
    from sqlcheck.share import SharePaths

    share = SharePaths(settings.resolved_share_root)
    with db.session() as s:
        job = repo.get_job(s, job_id)
        tasks = repo.list_tasks(s, job_id)
    figures.job_status = status
    figures.files = plan.files
    by_status = {st: sum(1 for t in tasks if t.status == st) for st in ("PENDING", "IN_PROGRESS", "SUCCESS", "FAILURE")}
    figures.tasks_terminal = by_status["SUCCESS"] + by_status["FAILURE"]
    figures.stuck = by_status["PENDING"] + by_status["IN_PROGRESS"]
    figures.lost = plan.files - len(tasks)
    results_dir = share.job_dir(job_id) / "results"
    result_names = {p.name for p in results_dir.glob("*.json")} if results_dir.exists() else set()
    figures.result_files = len(result_names)
    success_ids = {t.id for t in tasks if t.status == "SUCCESS"}
    logs = "".join(n.logs() for n in nodes)
    figures.duplicates, figures.unlogged = success_writes(success_ids, result_names, logs)
    finalized_lines = logs.count(f"job={job_id} {status}: ")
    summary = share.job_dir(job_id) / "summary.json"
    doc = json.loads(summary.read_text()) if summary.exists() else {}
    exact = (job.total_tasks == len(tasks) and job.succeeded_tasks == by_status["SUCCESS"]
             and job.failed_tasks == by_status["FAILURE"] and doc.get("succeeded_tasks") == job.succeeded_tasks
             and doc.get("failed_tasks") == job.failed_tasks and doc.get("status") == job.status)
    figures.finalized_ok = exact and finalized_lines == 1
    if status == "TIMEOUT":
        figures.problems.append("the job did not reach a terminal status in time")
    if figures.stuck or figures.lost:
        figures.problems.append(f"{figures.stuck} tasks stuck, {figures.lost} files without a task row")
    missing = [t for t in success_ids if f"{t}.json" not in result_names]
    if missing:
        figures.problems.append(f"{len(missing)} SUCCESS tasks without a result file")
    if figures.duplicates:
        figures.problems.append(f"{figures.duplicates} duplicate result writes")
    if not exact:
        figures.problems.append("job counts or summary.json do not match the task rows")
    if finalized_lines != 1:
        figures.problems.append(f"job finalization logged {finalized_lines} times, expected once")
    if by_status["FAILURE"]:
        reasons = {t.failure_reason for t in tasks if t.status == "FAILURE"}
        figures.problems.append(f"{by_status['FAILURE']} files FAILED ({', '.join(sorted(map(str, reasons)))})")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="bin/chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=500, help="files in the job (default 500)")
    parser.add_argument("--statements", type=int, default=4, help="statements per file: how long each lint takes")
    parser.add_argument("--child-kills", type=int, default=10, help="analysis children to SIGKILL (default 10)")
    parser.add_argument("--concurrency", type=int, default=2, help="analysis children per node (default 2)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds the job may take (default 600)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the victims (0 = random)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, share) even on success")
    args = parser.parse_args(argv)
    plan = ChaosPlan(files=args.files, statements_per_file=args.statements, child_kills=args.child_kills,
                     concurrency=args.concurrency, timeout_s=args.timeout, seed=args.seed, keep=args.keep)
    stop_on_sigterm("bin/chaos")
    figures = run(plan, say=lambda line: print(line, file=sys.stderr, flush=True))
    for problem in figures.problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(figures.line(), flush=True)
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
