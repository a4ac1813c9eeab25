"""`sqlcheckctl`: the operator's CLI. Each command calls one core function and formats the result."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console

from sqlcheck.errors import ConfigError, ControlError, SqlcheckError, UserInputError, describe, first_line
from sqlcheck.settings import Settings, load_settings

#: exit codes (status follows LSB: 3 = not running)
EXIT_OK = 0  # success
EXIT_FAIL = 1  # the job or check ran and did not succeed
EXIT_ERROR = 2  # bad input or configuration
EXIT_NOT_RUNNING = 3  # LSB status: program is not running
EXIT_UNKNOWN = 4  # LSB status: unknown

app = typer.Typer(help="Control the sqlcheck workers and submit jobs.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
job_app = typer.Typer(help="Inspect jobs.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(job_app, name="job")
metrics_app = typer.Typer(help="Prometheus metrics.", no_args_is_help=True)
app.add_typer(metrics_app, name="metrics")
config_app = typer.Typer(help="The generated supervisord configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

out = Console()
err = Console(stderr=True)


class State:
    config: Optional[Path] = None


@app.callback()
def _main(config: Optional[Path] = typer.Option(None, "--config", "-c", envvar="SQLCHECK_CONFIG",
                                                help="TOML settings file")) -> None:
    State.config = config


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected errors into one red line on stderr and an exit code (never wrapped: a log
    line or a pipe reads it whole)."""
    try:
        yield
    except (ConfigError, UserInputError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None
    except SqlcheckError as exc:  # ControlError among them
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAIL) from None
    except Exception as exc:
        from sqlcheck.retries import is_transient  # imports the drivers: only when something failed

        if not is_transient(exc):
            raise
        err.print(f"[red]error:[/red] {describe(exc)} (the database, the broker or the share failed; it may pass: "
                  "try again)", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAIL) from None


def settings() -> Settings:
    with user_errors():
        return load_settings(State.config)


def _print_json(doc) -> None:
    sys.stdout.write(json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=True, default=str) + "\n")


# ---- db ---------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the jobs/tasks tables to the newest schema."""
    from sqlcheck.database import redacted_url, upgrade_schema

    s = settings()
    with user_errors():
        try:
            upgrade_schema(s.resolved_database_url)
        except Exception as exc:  # driver errors: show one line, not a traceback
            raise ConfigError(f"setting DATABASE_URL: migration failed: {first_line(exc)}") from None
    out.print(f"database schema is up to date ({redacted_url(s.resolved_database_url)})", highlight=False)


# ---- worker -----------------------------------------------------------------------


@app.command()
def worker(
    queues: Optional[str] = typer.Option(None, "--queues", "-Q", help="comma list; default CELERY_WORKER_QUEUES"),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="pool children; default per queue"),
    node_name: Optional[str] = typer.Option(None, "--name", "-n", help="Celery node name, e.g. analysis@host"),
) -> None:
    """Run one Celery worker in the foreground (the command supervisord runs)."""
    from sqlcheck.logs import configure_logging
    from sqlcheck.worker import parse_queues, run_worker

    s = settings()
    configure_logging(s.log_level, s.log_format)
    with user_errors():
        run_worker(s, parse_queues(queues or s.worker_queues), concurrency, node_name)


# ---- jobs -------------------------------------------------------------------------


@app.command()
def submit(
    zip_file: Path = typer.Argument(..., help="ZIP of .sql files"),
    dialect: Optional[str] = typer.Option(None, help="sqlfluff dialect; default SQLCHECK_DEFAULT_DIALECT"),
    rules: Optional[str] = typer.Option(None, help="comma list of rule codes to run"),
    exclude_rules: Optional[str] = typer.Option(None, help="comma list of rule codes to skip"),
    option: list[str] = typer.Option([], "--option", "-o", help="KEY=VALUE lint option, repeatable: max_line_length, "
                                     "tab_space_size, indent_unit, keywords_capitalisation_policy, ... (README)"),
    wait: bool = typer.Option(False, "--wait", help="wait for the job and exit 0 only on SUCCESS"),
    timeout: float = typer.Option(3600, help="seconds to wait with --wait"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """Submit a ZIP the way the web service does: share, job row, Celery message."""
    from sqlcheck.client import job_view, submit_zip
    from sqlcheck.database import Database
    from sqlcheck.job_config import options_from_pairs

    s = settings()
    options = {k: v for k, v in (("rules", rules), ("exclude_rules", exclude_rules)) if v}
    with user_errors():
        options.update(options_from_pairs(option))
    with user_errors():
        job_id = submit_zip(s, zip_file, dialect, options or None)
    if not wait:
        _print_json({"job_id": job_id}) if as_json else out.print(job_id)
        return
    db = Database(s.resolved_database_url)
    with user_errors():
        status = _wait_with_progress(db, job_id, timeout, quiet=as_json)
    if as_json:
        view = job_view(db, job_id)
        view.pop("tasks")
        _print_json(view)
    else:
        out.print(f"job {job_id}: {status}")
    raise typer.Exit(EXIT_OK if status == "SUCCESS" else EXIT_FAIL)


def _wait_with_progress(db, job_id: str, timeout: float, quiet: bool) -> str:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from sqlcheck.client import wait_for_job

    if quiet:
        try:
            return wait_for_job(db, job_id, timeout)
        except TimeoutError as exc:
            raise ControlError(str(exc)) from None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err) as bar:
        handle = bar.add_task("waiting", total=None)

        def show(done: int, total: int, status: str) -> None:
            bar.update(handle, completed=done, total=total or None, description=f"{status:<15}")

        try:
            return wait_for_job(db, job_id, timeout, show)
        except TimeoutError as exc:
            raise ControlError(str(exc)) from None


@job_app.command("show")
def job_show(job_id: str, as_json: bool = typer.Option(False, "--json", help="print one JSON document")) -> None:
    """The job row, its counts and every task."""
    from rich.table import Table

    from sqlcheck.client import job_view
    from sqlcheck.database import Database

    s = settings()
    with user_errors():
        view = job_view(Database(s.resolved_database_url), job_id)
        if view is None:
            raise ControlError(f"job {job_id} not found")
    if as_json:
        _print_json(view)
        return
    out.print(
        f"job {view['id']}  [bold]{view['status']}[/bold]  dialect={view['dialect'] or s.default_dialect}  "
        f"tasks={view['total_tasks']} ok={view['succeeded_tasks']} failed={view['failed_tasks']}",
        highlight=False,
    )
    if view["error_message"]:
        out.print(f"error: {view['error_message']}", highlight=False)
    table = Table("member", "status", "reason", "violations", "result")
    for t in view["tasks"]:
        table.add_row(t["archive_member"], t["status"], t["failure_reason"] or "",
                      "" if t["violation_count"] is None else str(t["violation_count"]), t["result_file_path"] or "")
    out.print(table)


@app.command()
def report(
    job_id: str,
    fmt: str = typer.Option("text", "--format", "-f", help="text, json, sarif or csv (UTF-8 with BOM)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write to this file instead of stdout"),
) -> None:
    """The job's report, from its summary.json and result files."""
    from sqlcheck.reports import job_report
    from sqlcheck.share import SharePaths

    s = settings()
    with user_errors():
        data = job_report(SharePaths(s.resolved_share_root), job_id, fmt).encode("utf-8")
    if not data.endswith(b"\n"):
        data += b"\n"
    if output:
        with user_errors():
            try:
                output.write_bytes(data)
            except OSError as exc:
                raise ControlError(f"cannot write {output}: {exc.strerror}") from None
    else:
        sys.stdout.buffer.write(data)  # bytes: the console's encoding must not mangle Chinese text
        sys.stdout.flush()


@app.command()
def reap(
    loop: bool = typer.Option(False, "--loop", help="keep reaping (the supervisord program); default one pass"),
    interval: Optional[float] = typer.Option(None, "--interval", help="seconds between passes; default SQLCHECK_REAPER_INTERVAL_S"),
) -> None:
    """Bring stuck work to an end: re-send lost messages, fail what used up its attempts, finalize jobs."""
    from sqlcheck.logs import configure_logging
    from sqlcheck.reaper import run
    from sqlcheck.workflow import Runtime

    s = settings()
    configure_logging(s.log_level, s.log_format)
    with user_errors():
        report = run(Runtime.from_settings(s), loop, interval or s.reaper_interval_s)
    out.print(f"reaper: {report.line()}", highlight=False)


# ---- daemon (supervisord) ---------------------------------------------------------


@config_app.command("render")
def config_render(
    out_dir: Optional[Path] = typer.Option(None, "--out", help="directory; default SQLCHECK_HOME"),
    bin_dir: Optional[Path] = typer.Option(None, "--bin-dir", help="venv bin dir named in commands; default this one"),
) -> None:
    """Write supervisord/supervisord.conf and systemd/sqlcheck.service rendered from the settings."""
    from sqlcheck.control import make_plan, write_config

    s = settings()
    with user_errors():
        for path in write_config(make_plan(s, bin_dir), out_dir):
            out.print(str(path), highlight=False)


def _say(line: str) -> None:
    err.print(line, highlight=False, soft_wrap=True)  # one event per line, never wrapped


@app.command()
def start(timeout: float = typer.Option(120, help="seconds to wait until every worker answers")) -> None:
    """Start supervisord and the workers; return when every node answers a ping. Idempotent."""
    from sqlcheck.control import start as start_daemon

    s = settings()
    with user_errors():
        result = start_daemon(s, timeout, _say)
    verb = "was already running" if result.already_running else f"started in {result.seconds:.1f} s"
    out.print(f"sqlcheck {verb}: {', '.join(f'{n} {st}' for n, st in result.programs.items())}", highlight=False,
              soft_wrap=True)
    answering = ", ".join(result.nodes) or "not pinged (the settings differ from the running configuration)"
    out.print(f"nodes answering: {answering}", highlight=False)
    out.print(f"supervisorctl -c {result.conf} status", highlight=False)


@app.command()
def stop(timeout: Optional[float] = typer.Option(None, help="seconds to wait for files in flight, then cold "
                                                 "shutdown (they go back to Redis); default each worker's stopwaitsecs - 15")) -> None:
    """Stop the workers warm (files in flight finish, queued messages stay in Redis), then supervisord."""
    from sqlcheck.control import stop as stop_daemon

    s = settings()
    with user_errors():
        result = stop_daemon(s, timeout, _say)
    if not result.was_running:
        out.print("sqlcheck is not running")
        return
    waited = f"; waited for {len(result.waited_for)} file(s) in flight" if result.waited_for else ""
    how = "cold (timeout ran out; unfinished files went back to Redis)" if result.cold else "warm"
    out.print(f"sqlcheck stopped {how} in {result.seconds:.1f} s{waited}", highlight=False)


@app.command()
def restart(timeout: float = typer.Option(300, help="seconds to wait for each program to come back")) -> None:
    """Rolling restart: one program at a time, each stopped warm and pinged before the next."""
    from sqlcheck.control import restart as restart_daemon

    s = settings()
    with user_errors():
        names = restart_daemon(s, timeout, _say)
    out.print(f"restarted: {', '.join(names) or 'everything (it was not running)'}", highlight=False)


@app.command()
def reload(timeout: float = typer.Option(300, help="seconds to wait for replaced programs")) -> None:
    """Re-render the configuration and apply only the programs whose sections changed."""
    from sqlcheck.control import reload as reload_daemon

    s = settings()
    with user_errors():
        result = reload_daemon(s, timeout, _say)
    if not (result.added or result.changed or result.removed):
        out.print("configuration unchanged; nothing restarted")
        return
    out.print(f"added: {result.added or '-'}  changed: {result.changed or '-'}  removed: {result.removed or '-'}",
              highlight=False)


STATUS_EXIT = {"running": EXIT_OK, "stopped": EXIT_NOT_RUNNING, "partial": EXIT_FAIL, "unknown": EXIT_UNKNOWN}


def _status_table(doc) -> None:
    sup = doc["supervisord"] or {}
    out.print(f"[bold]{doc['state']}[/bold]  supervisord: "
              f"{sup.get('error') or 'pid %s %s' % (sup.get('pid'), sup.get('state'))}  ({doc['conf']})",
              highlight=False, soft_wrap=True)
    nodes = dict(doc["nodes"])
    for p in doc["programs"]:
        node = next((n for n in nodes if n.split("@")[0] == p["name"].split(":")[-1]), None)
        line = f"  {p['name']:<20} {p['state']:<9} pid {p['pid'] or '-':<7} RSS {p.get('rss_mb') or '-'} MiB"
        if node:
            info = nodes[node]
            line += f"  node {node} ping={'yes' if info['ping'] else 'NO'} active={len(info['active'])}"
        children = ", ".join(f"{c['pid']}:{c['rss_mb']}" for c in p.get("children", []))
        if children:
            line += f"  children pid:MiB {children}"
        out.print(line, highlight=False, soft_wrap=True)
    queues = "  ".join(f"{q}={n if n is not None else '?'}" for q, n in doc["queues"].items())
    out.print(f"queues: {queues}", highlight=False)
    jobs = doc["jobs"]
    if "error" in jobs:
        out.print(f"jobs: unavailable ({jobs['error']})", highlight=False)
        return
    out.print("jobs: " + ("  ".join(f"{k}={v}" for k, v in sorted(jobs["counts"].items())) or "none"), highlight=False)
    for j in jobs["running"]:
        out.print(f"  running {j['job_id']}: {j['done']}/{j['total']} files", highlight=False)


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="print one JSON document"),
    watch: Optional[float] = typer.Option(None, "--watch", help="refresh every N seconds until Ctrl-C"),
) -> None:
    """Processes, Celery nodes, queues, jobs and memory in one view. Exit 0 running, 3 stopped, 1 partial, 4 unknown."""
    import time

    from sqlcheck.control import status as daemon_status

    s = settings()
    doc = {"state": "unknown"}
    try:
        while True:
            doc = daemon_status(s)
            if as_json:
                _print_json(doc)
            else:
                if watch:
                    out.clear()
                _status_table(doc)
            if not watch:
                break
            time.sleep(watch)
    except KeyboardInterrupt:  # the way out of --watch
        pass
    raise typer.Exit(STATUS_EXIT[doc["state"]])


@app.command()
def health(as_json: bool = typer.Option(False, "--json", help="print one JSON document")) -> None:
    """For systemd/Consul checks: exit 0 only when broker, database, share and every worker node answer."""
    from sqlcheck.control import health as daemon_health

    s = settings()
    checks = daemon_health(s)
    healthy = all(c["ok"] for c in checks.values())
    if as_json:
        _print_json({"healthy": healthy, "checks": checks})
    else:
        for name, c in checks.items():
            out.print(f"{'ok  ' if c['ok'] else 'FAIL'} {name}: {c['detail']}", highlight=False)
    raise typer.Exit(EXIT_OK if healthy else EXIT_FAIL)


# ---- metrics ----------------------------------------------------------------------


@metrics_app.command("serve")
def metrics_serve(
    port: Optional[int] = typer.Option(None, "--port", "-p", help="default SQLCHECK_METRICS_PORT"),
    bind: Optional[str] = typer.Option(None, "--bind", help="default SQLCHECK_METRICS_BIND"),
) -> None:
    """Serve /metrics for Prometheus in the foreground (the supervisord program runs this)."""
    from sqlcheck.logs import configure_logging
    from sqlcheck.metrics import serve

    s = settings()
    configure_logging(s.log_level, s.log_format)
    with user_errors():
        if not (port or s.metrics_port):
            raise ConfigError("setting SQLCHECK_METRICS_PORT is 0 (off); set it or pass --port")
        serve(s, port or s.metrics_port, bind or s.metrics_bind)


@metrics_app.command("dump")
def metrics_dump() -> None:
    """Print one scrape in the Prometheus text format."""
    from sqlcheck.metrics import exposition

    sys.stdout.write(exposition(settings()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
