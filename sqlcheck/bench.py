"""bin/bench: sqlcheck against `sqlfluff lint --processes N` on the same files, on real services.

One run, in turns per repetition (order rotated each repetition), medians of the repetitions:
  (a) `sqlfluff lint --dialect D --format json --processes N` on the unzipped files;
  (b) the warm sqlcheck pipeline (workers started with `sqlcheckctl start`), submit to job terminal,
      result cache emptied before each run so every file is really linted; submitted through one
      client.Submitter that keeps its connections, as the web service's long-lived process would;
  (c) one warm Linter in this process (lint_engine, same parser): the N-core limit is N x its rate;
      checked by N forked warm processes linting the files in parallel, with nothing else to do.
Then: an identical re-submission (served by the result cache), a 10,000-file ZIP (time until every
task row is dispatched), RSS of the analysis children (psutil samples), and (b) == (a) violations.

Private resources only: Redis db --redis-db (flushed at start and end), a PostgreSQL database it
creates and drops, a temporary SQLCHECK_HOME. Exit 1 if (b)'s violations differ from (a)'s.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path

import psutil
import redis

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "corpus" / "sqlfluff-dialect-fixtures"
BIN = Path(sys.executable).parent
MIB = 1024 * 1024


def say(text: str) -> None:
    print(text, flush=True)


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


# ---- corpus ---------------------------------------------------------------------------------


def generated_sql(seed: int, lines: int) -> str:
    """Our own generator: typical reporting/ETL SQL with a few style slips (lower-case keywords,
    unaliased expressions, trailing spaces), valid in ansi, postgres and mysql."""
    rng = random.Random(seed)
    tables = ["orders", "customers", "products", "invoices", "payments"]
    out: list[str] = []
    while len(out) < lines:
        t, u = rng.sample(tables, 2)
        kind = rng.random()
        if kind < 0.35:
            out += [f"INSERT INTO {t} (id, customer_id, amount, status)", "VALUES"]
            rows = [f"    ({rng.randint(1, 99999)}, {rng.randint(1, 999)}, {rng.randint(1, 9999) / 100}, 'new')"
                    for _ in range(rng.randint(2, 6))]
            out += [r + "," for r in rows[:-1]] + [rows[-1] + ";"]
        elif kind < 0.8:
            kw = "select" if rng.random() < 0.3 else "SELECT"
            out += [
                f"{kw}",
                "    a.id,",
                "    b.status,",
                f"    SUM(a.amount) AS total_{len(out)},",
                "    COUNT(*) AS n" + ("  " if rng.random() < 0.2 else ""),
                f"FROM {t} AS a",
                f"INNER JOIN {u} AS b ON a.id = b.id",
                f"WHERE a.amount > {rng.randint(1, 500)}",
                "GROUP BY a.id, b.status",
                "ORDER BY total_%d DESC;" % len(out),
            ]
        else:
            out += [f"UPDATE {t}", "SET status = 'done', amount = amount * 1.1",
                    f"WHERE id IN (SELECT id FROM {u} WHERE amount > {rng.randint(1, 50)});"]
        out.append("")
    return "\n".join(out) + "\n"


def build_corpus(dialects: list[str], large_lines: list[int],
                 root: Path | None = None) -> tuple[dict[str, dict[str, bytes]], str]:
    """Real SQL per dialect (`root`/<dialect>/*.sql; by default sqlfluff's dialect fixtures if
    present, else tests/corpus) + generated files."""
    corpus: dict[str, dict[str, bytes]] = {}
    if root is None:
        root = FIXTURES if FIXTURES.is_dir() else REPO / "tests" / "corpus"
    source = "sqlfluff dialect fixtures (../shared/corpus)" if root == FIXTURES else str(root)
    for i, d in enumerate(dialects):
        src = root / d
        files = {p.name: p.read_bytes() for p in sorted(src.glob("*.sql"))}
        if not files:
            raise SystemExit(f"bin/bench: no .sql files for dialect {d} in {src}")
        for lines in large_lines:
            files[f"generated_{lines}_lines.sql"] = generated_sql(1000 * i + lines, lines).encode()
        corpus[d] = files
    return corpus, source


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def small_files(n: int) -> dict[str, bytes]:
    """n distinct small files (distinct, so the result cache does not help)."""
    return {f"batch_{i // 1000:02d}/q_{i:05d}.sql": f"SELECT c{i % 7}, c{i % 11} FROM t{i % 13} WHERE id = {i};\n".encode()
            for i in range(n)}


# ---- the private stack -----------------------------------------------------------------------


class Stack:
    """SQLCHECK_HOME, PostgreSQL database and Redis db of this run, and the processes started on them."""

    def __init__(self, work: Path, redis_db: int, processes: int, rust: bool, batch_files: int | None = None):
        self.work = work
        self.pg_name = f"sqlcheck_bench_{uuid.uuid4().hex[:8]}"
        self.redis_db = claim_redis_db(redis_db)
        self.broker = f"redis://127.0.0.1:6379/{self.redis_db}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SQLCHECK_", "CELERY_", "NFS_", "DATABASE_"))}
        self.env.update(
            SQLCHECK_HOME=str(work / "home"),
            DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.pg_name}",
            CELERY_BROKER_URL=self.broker,
            CELERY_WORKER_CONCURRENCY=str(processes),
            SERVICE_ID=f"bench-{uuid.uuid4().hex[:6]}",
            SQLCHECK_EMBEDDED_REDIS="off",
            SQLCHECK_RUST_PARSER="on" if rust else "off",
            SQLCHECK_REAPER_LOST_AFTER_S="3600",  # the 10k job's purged messages must not be re-sent
        )
        if batch_files is not None:
            self.env["SQLCHECK_LINT_BATCH_MAX_FILES"] = str(batch_files)
        self.redis = redis.Redis.from_url(self.broker)
        self.started = False
        self.submitter = None  # the web service's side: one client, connections kept (see up)

    @property
    def settings(self):
        from sqlcheck.settings import load_settings

        return load_settings(environ=self.env)

    def ctl(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "sqlcheckctl"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def _pg(self, sql: str) -> None:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(sql)

    def up(self) -> None:
        reset_redis_db(self.redis)
        self._pg(f'CREATE DATABASE "{self.pg_name}"')
        for args in (("db", "upgrade"), ("start",)):
            done = self.ctl(*args)
            if done.returncode != 0:
                raise SystemExit(f"bin/bench: sqlcheckctl {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
            self.started = self.started or args == ("start",)
        from sqlcheck.client import Submitter

        # Submits as a long-lived web process would, keeping its database pool and broker
        # connection; a one-shot submit_zip per job opened both again (~30 ms of each job's wall).
        self.submitter = Submitter(self.settings)

    def down(self) -> None:
        if self.submitter is not None:
            self.submitter.close()
        if self.started:
            self.ctl("stop", timeout=600)
        try:
            self._pg(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
        except Exception as exc:  # noqa: BLE001 - report, keep cleaning up
            say(f"warning: could not drop database {self.pg_name}: {exc}")
        self.redis.flushdb()  # also drops our claim

    def analysis_children(self) -> list[psutil.Process]:
        """The analysis worker's pool children. The worker is looked up by its command line only
        when it is not known yet: scanning every process costs CPU the measured run needs."""
        main = getattr(self, "_analysis_main", None)
        if main is None or not main.is_running():
            node = f"analysis@{self.env['SERVICE_ID']}"
            main = next((p for p in psutil.process_iter(["cmdline"])
                         if node in (p.info["cmdline"] or []) and "worker" in p.info["cmdline"]), None)
            self._analysis_main = main
        try:
            return main.children() if main is not None else []
        except psutil.Error:
            return []


#: the key tests/conftest.py uses to claim a Redis db: the bench takes part in the same protocol
CLAIM_KEY = "sqlcheck-test-claim"


def claim_redis_db(preferred: int) -> int:
    """Claim a free db: `preferred` if given, else the first of 1..15 (test sessions count down from 15).

    Free = nobody holds the claim key (SET NX, as test sessions do) *and* the db is empty, so a
    session whose claim was lost is never disturbed."""
    candidates = [preferred] if preferred else list(range(1, 16))
    me = f"bench-{os.getpid()}"
    for db in candidates:
        client = redis.Redis(host="127.0.0.1", port=6379, db=db)
        if client.set(CLAIM_KEY, me, nx=True, ex=3600):
            if client.dbsize() == 1:
                return db
            client.delete(CLAIM_KEY)  # holds someone's keys: leave it alone
    raise SystemExit(f"bin/bench: no free, empty Redis db among {candidates}")


def reset_redis_db(client: redis.Redis) -> None:
    """Flush our claimed db but keep the claim: flush and re-claim are one MULTI (as in the test
    sessions' reset), else a test session starting in between could claim the db too."""
    claim = client.get(CLAIM_KEY)
    client.pipeline(transaction=True).flushdb().set(CLAIM_KEY, claim or f"bench-{os.getpid()}", ex=3600).execute()


class RssSampler(threading.Thread):
    """Samples the RSS of every analysis child while `active` is set."""

    def __init__(self, stack: Stack, interval_s: float = 0.2):
        super().__init__(daemon=True)
        self.stack, self.interval_s = stack, interval_s
        self.active = threading.Event()
        self.stop = threading.Event()
        self.samples: list[tuple[str, int, float]] = []  # (phase, pid, MiB)
        self.phase = ""

    def run(self) -> None:
        children: list[psutil.Process] = []
        last_scan = 0.0
        while not self.stop.is_set():
            if self.active.is_set():
                if time.monotonic() - last_scan > 2 or not children:
                    children, last_scan = self.stack.analysis_children(), time.monotonic()
                for c in children:
                    try:
                        self.samples.append((self.phase, c.pid, c.memory_info().rss / MIB))
                    except psutil.Error:
                        last_scan = 0
            time.sleep(self.interval_s)


# ---- the three measurements ------------------------------------------------------------------


def cli_config(work: Path, rust: bool) -> Path:
    """The same sqlfluff settings the pipeline uses: nothing skipped for size, same parser."""
    path = work / "cli.sqlfluff"
    path.write_text(f"[sqlfluff]\nlarge_file_skip_byte_limit = 0\nuse_rust_parser = {'auto' if rust else 'False'}\n")
    return path


def run_cli(dialect: str, folder: Path, processes: int, config: Path) -> tuple[float, dict[str, list]]:
    started = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "sqlfluff"), "lint", "--dialect", dialect, "--format", "json", "--processes", str(processes),
         "--config", str(config), "--nofail", str(folder)],
        capture_output=True, text=True, cwd=folder, check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bin/bench: sqlfluff lint failed ({done.returncode}): {done.stderr[-2000:]}")
    found = {Path(f["filepath"]).name: sorted((v["code"], v["start_line_no"], v["start_line_pos"]) for v in f["violations"])
             for f in json.loads(done.stdout)}
    return wall, found


def run_pipeline(stack: Stack, zip_path: Path, dialect: str, timeout_s: float = 900) -> tuple[float, str, float]:
    """(wall seconds from submit until the job is done as a client sees it, job id, submit time).

    Done = its report.sarif is on the share: finalize writes summary.json and then report.sarif
    just before the commit that makes the row terminal. (The row's finished_at is stamped when
    finalize starts, before those two files, so it would leave their writing out.) The end is
    the report's mtime, so the share is looked at only every 20 ms: a look every 2 ms cost next
    to no CPU but woke this process 500 times a second, each time taking a core from a linting
    child (twice the children's involuntary context switches, ~5% of (b)'s wall). The database
    is asked every 0.5 s only, and to confirm the status at the end.
    """
    from sqlcheck.client import wait_for_job
    from sqlcheck.database import Database

    from sqlcheck import repository as repo
    from sqlcheck.states import TERMINAL_JOB_STATUSES

    settings = stack.settings
    db = Database(settings.resolved_database_url)
    started = time.time()
    job_id = stack.submitter.submit(zip_path, dialect)
    report = settings.resolved_share_root / "jobs" / job_id / "report.sarif"
    deadline, next_ask = time.monotonic() + timeout_s, time.monotonic() + 0.5
    done_at = None
    while done_at is None and time.monotonic() < deadline:
        try:
            done_at = report.stat().st_mtime
            break
        except FileNotFoundError:
            pass
        if time.monotonic() >= next_ask:  # a job that ends without a report must still end the wait
            next_ask = time.monotonic() + 0.5
            with db.session() as s:
                job = repo.get_job(s, job_id)
                if job.status in TERMINAL_JOB_STATUSES:
                    done_at = job.finished_at.timestamp()
        time.sleep(0.02)
    if done_at is None:
        raise SystemExit(f"bin/bench: job {job_id} not done after {timeout_s:.0f} s")
    status = wait_for_job(db, job_id, 60, poll_s=0.01)  # committing right after the report
    db.engine.dispose()
    if status != "SUCCESS":
        raise SystemExit(f"bin/bench: job {job_id} ended {status}")
    return done_at - started, job_id, started


def pipeline_findings(stack: Stack, job_id: str) -> tuple[dict[str, list], list, int]:
    """Violations per member, each task row's (started, finished, lint s), and how many came from the cache."""
    from sqlcheck import repository as repo
    from sqlcheck.database import Database

    settings = stack.settings
    db = Database(settings.resolved_database_url)
    with db.session() as s:
        rows = [(t.archive_member, t.result_file_path, t.started_at, t.finished_at, t.duration_s)
                for t in repo.list_tasks(s, job_id)]
    db.engine.dispose()
    found, timing, cached = {}, [], 0
    for member, rel, started, finished, lint_s in rows:
        doc = json.loads((settings.resolved_share_root / rel).read_text("utf-8"))
        found[member] = sorted((v["code"], v["start_line_no"], v["start_line_pos"]) for v in doc["violations"])
        cached += bool(doc.get("from_cache"))
        timing.append((started.timestamp(), finished.timestamp(), lint_s))
    return found, timing, cached


def per_file_overheads(timing: list[tuple[float, float, float]], children: int) -> list[tuple[float, float]]:
    """(in task, queue) seconds per file of one job.

    Both stamps are taken by the child: started_at just before it sends the claim, finished_at
    when the file's result file is written (a message's results are then recorded together, in
    one durable commit at its end). In task: finished - started minus the lint itself (the
    claim's round trip, reading, the cache, the result file). Queue: from the previous file's
    finished_at to this file's started_at on the same child: between messages that holds the
    message's durable commit of its results, the ack, the next message, Celery's hand-over and
    the lock. The children are reconstructed from the rows: each file goes to the child that
    became free last before it started."""
    ends = [float("-inf")] * children
    out = []
    for started, finished, lint_s in sorted(timing):
        free = [i for i, end in enumerate(ends) if end <= started] or [min(range(children), key=ends.__getitem__)]
        child = max(free, key=ends.__getitem__)
        queue = started - ends[child] if ends[child] != float("-inf") else None
        ends[child] = finished
        if lint_s is not None and queue is not None:
            out.append((finished - started - lint_s, queue))
    return out


def wall_split(timing: list[tuple[float, float, float]], submitted: float, finished: float,
               children: int) -> dict[str, float]:
    """Where (b)'s wall went: submit to the first claim (expand, rows, first message), first claim to
    last recorded result (linting), then to the job's end (finalize, summary); and the children's
    lint seconds per child ("busy": divided by the linting span, the share of it spent linting)."""
    first = min(started for started, _, _ in timing)
    last = max(ended for _, ended, _ in timing)
    return {"start": first - submitted, "lint": last - first, "end": finished - last,
            "busy": sum(lint_s or 0.0 for _, _, lint_s in timing) / children}


def run_single_process(texts: list[tuple[str, str]], dialect: str, rust: bool, plain: bool = False) -> float:
    """Sum of lint times of one warm, reused Linter: sqlcheck's lint path (lint_engine.lint_sql), or
    with `plain` sqlfluff's own Linter.lint_string on the same warm Linter (rules and config rebuilt per file)."""
    from sqlcheck.lint_engine import get_linter, lint_sql

    linter = get_linter(dialect, (), rust).linter
    total = 0.0
    for name, text in texts:
        started = time.perf_counter()
        if plain:
            linter.lint_string(text, fname=name)
        else:
            lint_sql(text, name, dialect, (), rust)
        total += time.perf_counter() - started
    return total


#: what the forked processes of the parallel check lint: set before the pool forks, inherited
_PARALLEL: dict = {}


def start_parallel_pool(texts: dict[str, list[tuple[str, str]]], rust: bool, n: int):
    """N processes forked from this one with every dialect's Linter warm, as Celery's children are
    forked from a warm main process. Started before any thread or connection of the bench."""
    import multiprocessing
    import signal

    from sqlcheck.lint_engine import get_linter

    for dialect in texts:
        get_linter(dialect, (), rust)
    _PARALLEL.update(texts=texts, rust=rust)
    # The pool's processes must not inherit the bench's SIGTERM handler: terminating the pool
    # would have each of them print "bin/bench: stopped by signal 15".
    return multiprocessing.get_context("fork").Pool(n, initializer=signal.signal,
                                                    initargs=(signal.SIGTERM, signal.SIG_DFL))


def _lint_one(item: tuple[str, int]) -> None:
    from sqlcheck.lint_engine import lint_sql

    dialect, index = item
    name, text = _PARALLEL["texts"][dialect][index]
    lint_sql(text, name, dialect, (), _PARALLEL["rust"])


def run_parallel(pool, texts: list[tuple[str, str]], dialect: str) -> float:
    """Wall seconds for the pool to lint every file, largest first, one file per hand-out: the
    pipeline's scheduling without its queue, database, cache and share."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i][1]))
    started = time.perf_counter()
    for _ in pool.imap_unordered(_lint_one, [(dialect, i) for i in order], chunksize=1):
        pass
    return time.perf_counter() - started


def clear_cache(stack: Stack) -> None:
    from sqlcheck.result_cache import ResultCache

    ResultCache(stack.redis, 1, 1).clear()


def dispatch_10k(stack: Stack, path: Path, n: int) -> float:
    """Seconds from submit until the job has n task rows and every one was sent (its row's
    dispatched_at, so the figure does not include this function's polling interval)."""
    from sqlcheck import repository as repo
    from sqlcheck.database import Database

    settings = stack.settings
    db = Database(settings.resolved_database_url)
    started = time.time()
    job_id = stack.submitter.submit(path, "ansi")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.2)  # light polling: this loop shares the cores with the zip worker
        with db.session() as s:
            job = repo.get_job(s, job_id)
            if job.status == "FAILED":
                raise SystemExit(f"bin/bench: 10k job failed: {job.error_message}")
            if job.total_tasks != n:
                continue
            sent, last = repo.dispatched_tasks(s, job_id)
            if sent == n:
                break
    else:
        raise SystemExit("bin/bench: the 10k-file ZIP was not dispatched within 300 s")
    db.engine.dispose()
    # The lint messages are not needed: drop them from this run's private Redis db.
    for key in stack.redis.scan_iter(match="sql_analysis*"):
        stack.redis.delete(key)
    return last.timestamp() - started


# ---- main ---------------------------------------------------------------------------------------


def med(values):
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    from sqlcheck.chaos_services import stop_on_sigterm

    stop_on_sigterm("bin/bench")  # `timeout` or a test's deadline still stops the services
    ap = argparse.ArgumentParser(prog="bin/bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="repetitions of (a)/(b)/(c), medians taken (default 3)")
    ap.add_argument("--dialects", default="ansi,postgres,mysql", help="comma list (default ansi,postgres,mysql)")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 2, help="N: CLI --processes = analysis children")
    ap.add_argument("--parser", choices=("rust", "python"), default="rust",
                    help="rust = SQLCHECK_RUST_PARSER=on (default), python = off; the CLI uses the same")
    ap.add_argument("--batch-files", type=int, default=None,
                    help="SQLCHECK_LINT_BATCH_MAX_FILES for (b); default the setting's default, 1 = one message per file")
    ap.add_argument("--large-lines", default="150,300", help="line counts of the generated larger files per dialect")
    ap.add_argument("--corpus", type=Path, default=None,
                    help="folder with one folder of .sql files per dialect (default: ../shared/corpus/"
                         "sqlfluff-dialect-fixtures if present, else tests/corpus)")
    ap.add_argument("--small-files", type=int, default=10_000, help="files in the small-file ZIP (0 = skip)")
    ap.add_argument("--redis-db", type=int, default=0,
                    help="Redis db on 127.0.0.1:6379 (default 0 = the first free, empty one of 1..15); claimed "
                         "the way test sessions claim theirs; flushed at the end")
    args = ap.parse_args(argv)
    dialects = [d for d in args.dialects.split(",") if d]
    rust = args.parser == "rust"
    n = args.processes

    work = Path(tempfile.mkdtemp(prefix="sqlcheck-bench-"))
    corpus, source = build_corpus(dialects, [int(x) for x in args.large_lines.split(",") if x], args.corpus)
    zips, folders, texts = {}, {}, {}
    for d, files in corpus.items():
        folders[d] = work / "unzipped" / d
        folders[d].mkdir(parents=True)
        for name, data in files.items():
            (folders[d] / name).write_bytes(data)
        zips[d] = work / f"{d}.zip"
        zips[d].write_bytes(zip_bytes(files))
        texts[d] = [(name, data.decode("utf-8")) for name, data in files.items()]
    total_files = sum(len(f) for f in corpus.values())
    config = cli_config(work, rust)

    from sqlcheck.lint_engine import SQLFLUFF_VERSION, parser_kind

    say(f"corpus: {total_files} files ({', '.join(f'{d} {len(f)}' for d, f in corpus.items())}) from {source}, "
        f"incl. generated files of {args.large_lines} lines per dialect; sqlfluff {SQLFLUFF_VERSION}, "
        f"parser {parser_kind(rust)}; N={n}; {args.reps} reps, order rotated, medians")
    pool = start_parallel_pool(texts, rust, n)
    stack = Stack(work, args.redis_db, n, rust, args.batch_files)
    say(f"sqlcheck lint messages: small files in batches of up to {stack.settings.lint_batch_max_files} files / "
        f"{stack.settings.lint_batch_max_bytes} bytes (SQLCHECK_LINT_BATCH_MAX_FILES / _BYTES)")
    progress(f"Redis db {stack.redis_db}, PostgreSQL database {stack.pg_name}, SQLCHECK_HOME {work / 'home'}")
    sampler = RssSampler(stack)
    mismatches: list[str] = []
    try:
        progress("starting services (sqlcheckctl db upgrade, sqlcheckctl start)")
        stack.up()
        sampler.start()
        # warm: one job per dialect so every child has built that dialect's Linter
        for d in dialects:
            run_pipeline(stack, zips[d], d)
        split: list[dict[str, float]] = []
        a_s: list[float] = []
        b_s: list[float] = []
        c_s: list[float] = []
        c_plain_s: list[float] = []
        p_s: list[float] = []
        per_dialect = {d: {"a": [], "b": [], "c": [], "p": []} for d in dialects}
        overheads: list[tuple[float, float]] = []
        last_found: dict[str, dict] = {}
        for rep in range(args.reps):
            sums = {"a": 0.0, "b": 0.0, "c": 0.0, "c_plain": 0.0, "p": 0.0}
            split.append(dict.fromkeys(("start", "lint", "end", "busy"), 0.0))
            # empty once per repetition: keys differ per dialect, so every (b) job lints every file
            # (duplicates inside one ZIP excepted), and the last repetition leaves the cache warm
            clear_cache(stack)
            order = ["a", "b", "c", "p"][rep % 4:] + ["a", "b", "c", "p"][:rep % 4]
            for d in dialects:
                for kind in order:
                    if kind == "a":
                        wall, cli_found = run_cli(d, folders[d], n, config)
                    elif kind == "b":
                        sampler.phase, _ = f"b{rep}", sampler.active.set()
                        wall, job_id, submitted = run_pipeline(stack, zips[d], d)
                        sampler.active.clear()
                    elif kind == "p":
                        wall = run_parallel(pool, texts[d], d)
                    else:
                        # the second of two passes over the same files runs up to ~10% faster on
                        # this VM, so the two lint paths take turns going first
                        plain_first = (rep + dialects.index(d)) % 2 == 1
                        if plain_first:
                            sums["c_plain"] += run_single_process(texts[d], d, rust, plain=True)
                        wall = run_single_process(texts[d], d, rust)
                        if not plain_first:
                            sums["c_plain"] += run_single_process(texts[d], d, rust, plain=True)
                    sums[kind] += wall
                    per_dialect[d][kind].append(wall)
                found, timing, _cached = pipeline_findings(stack, job_id)
                overheads += per_file_overheads(timing, n)
                for part, seconds in wall_split(timing, submitted, submitted + per_dialect[d]["b"][-1], n).items():
                    split[-1][part] += seconds
                last_found[d] = found
                if found != cli_found:
                    bad = sorted(m for m in set(found) | set(cli_found) if found.get(m) != cli_found.get(m))
                    mismatches.append(f"rep {rep} {d}: {len(bad)} files differ, e.g. {bad[:3]}")
            a_s.append(sums["a"])
            b_s.append(sums["b"])
            c_s.append(sums["c"])
            c_plain_s.append(sums["c_plain"])
            p_s.append(sums["p"])
            progress(f"rep {rep + 1}/{args.reps}: (a) {sums['a']:.1f}s (b) {sums['b']:.1f}s (c) {sums['c']:.1f}s "
                     f"(c, {n} in parallel) {sums['p']:.1f}s")
        # identical re-submission, as many repetitions (median): the cache holds the last (b) run's results
        resubs, resub_cached, resub_same = [], total_files, True
        for _rep in range(args.reps):
            walls, cached_here = 0.0, 0
            for d in dialects:
                wall, job_id, _ = run_pipeline(stack, zips[d], d)
                walls += wall
                found, _, cached = pipeline_findings(stack, job_id)
                cached_here += cached
                resub_same &= found == last_found[d]
            resubs.append(walls)
            resub_cached = min(resub_cached, cached_here)
        resub = med(resubs)
        dispatch_s = None
        if args.small_files:
            path = work / "small.zip"
            path.write_bytes(zip_bytes(small_files(args.small_files)))
            progress(f"{args.small_files}-file ZIP: {path.stat().st_size // 1024} KiB")
            dispatch_s = dispatch_10k(stack, path, args.small_files)
    finally:
        pool.terminate()
        sampler.stop.set()
        progress("stopping services (sqlcheckctl stop), dropping the database")
        stack.down()
        shutil.rmtree(work, ignore_errors=True)

    a, b, c = med(a_s), med(b_s), med(c_s)
    fa, fb, fc = total_files / a, total_files / b, total_files / c
    limit = n * fc
    limit_plain = n * total_files / med(c_plain_s)
    in_task = sorted(1000 * a for a, _ in overheads)
    queue = sorted(1000 * q for _, q in overheads)
    per_file = sorted(1000 * (a + q) for a, q in overheads)
    overhead_resub = 1000 * n * resub / total_files
    say(f"(a) sqlfluff lint -p {n} files/s: {fa:.1f}  (median wall {a:.2f}s for {total_files} files)")
    say(f"(b) sqlcheck pipeline files/s: {fb:.1f}  (median wall {b:.2f}s, submit -> job SUCCESS, result cache emptied "
        f"before each repetition)")
    say(f"(c) single-process warm Linter files/s: {fc:.1f}; {n}-core limit = {limit:.1f} files/s  (sqlcheck's lint "
        f"path; sqlfluff's own Linter.lint_string on the same warm Linter: {limit_plain / n:.1f}; limit {limit_plain:.1f})")
    fp = total_files / med(p_s)
    say(f"(c) check of the limit: {n} forked warm Linters in parallel, files largest first, nothing else (no queue, "
        f"database, cache or share): {fp:.1f} files/s = {fp / limit:.2f} of the limit; (b) reaches {fb / fp:.2f} of it")
    for d in dialects:
        pd = per_dialect[d]
        nf = len(corpus[d])
        say(f"    {d:<10} {nf:4d} files: (a) {nf / med(pd['a']):6.1f}  (b) {nf / med(pd['b']):6.1f}  "
            f"(c) limit {n * nf / med(pd['c']):6.1f} files/s")
    mid = sorted(range(len(split)), key=lambda i: b_s[i])[len(split) // 2]  # the median (b) repetition
    sp = split[mid]
    say(f"(b) wall split (median repetition, all dialects): {sp['start']:.2f} s submit -> first claim, "
        f"{sp['lint']:.2f} s linting (children busy linting {100 * sp['busy'] / max(sp['lint'], 1e-9):.0f}% of it), "
        f"{sp['end']:.2f} s last result -> job SUCCESS")
    say(f"ratio b/a: {fb / fa:.2f}  (target >= 2.0: {'met' if fb / fa >= 2.0 else 'NOT met'}; the ceiling: the "
        f"{n}-core limit is {limit / fa:.2f}x (a), the parallel check {fp / fa:.2f}x)")
    say(f"ratio b/limit: {fb / limit:.2f}  (target >= 0.9 with the pure-Python parser; this run: {args.parser}); "
        f"against the limit of Linter.lint_string: {fb / limit_plain:.2f}")
    say(f"per-file overhead (queue + DB + result write), median: {med(per_file):.2f} ms "
        f"(p90 {per_file[int(0.9 * len(per_file))]:.2f} ms; target <= 3 ms: {'met' if med(per_file) <= 3 else 'NOT met'})"
        f" = in task {med(in_task):.2f} ms (claim round trip, read, cache, result write: claim to finish minus lint) "
        f"+ queue {med(queue):.2f} ms (from the previous file's result written to this claim on the same child; "
        f"between messages also the message's durable commit of its results and the hand-over)")
    say(f"per-file overhead, mean: {sum(per_file) / len(per_file):.2f} ms (every gap between two lints of a child, "
        f"spread over its files: hand-overs, commits and child replacements included)")
    say(f"per-file overhead, whole pipeline without lint (identical re-submission, every file a cache hit: "
        f"N x wall / files, incl. expand, queue, DB, result write, finalize): {overhead_resub:.2f} ms")
    if dispatch_s is not None:
        say(f"{args.small_files}-file ZIP expanded + every task dispatched: {dispatch_s:.2f} s "
            f"(target <= 5 s: {'met' if dispatch_s <= 5 else 'NOT met'})")
    say(f"identical re-submission (median of {len(resubs)}): {resub:.2f} s vs {b:.2f} s first run = "
        f"{b / resub:.1f}x faster (at least {resub_cached}/{total_files} files from the result cache in each, "
        f"results identical: {resub_same}; "
        f"target >= 20x: {'met' if b / resub >= 20 else 'NOT met'})")
    rss = [mib for phase, _, mib in sampler.samples]
    last = [mib for phase, _, mib in sampler.samples if phase == f"b{args.reps - 1}"]
    if rss:
        say(f"analysis child RSS: peak {max(rss):.0f} MiB, steady (median in the last (b) run) {med(last):.0f} MiB "
            f"({len(rss)} samples; target steady <= 150 MiB: {'met' if med(last) <= 150 else 'NOT met'})")
    else:
        say("analysis child RSS: no samples (analysis worker not found)")
    if mismatches:
        say("violations (b) == (a): NO")
        for m in mismatches:
            say(f"    {m}")
        return 1
    say(f"violations (b) == (a): yes, per file (code, line, position), every repetition, {total_files} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
