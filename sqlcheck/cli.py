"""`sqlcheckctl`: the operator's CLI. Each command calls one core function and formats the result."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console

from sqlcheck.errors import ConfigError, ControlError, SqlcheckError, UserInputError
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
    """Turn expected errors into one red line on stderr and an exit code."""
    try:
        yield
    except (ConfigError, UserInputError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    except ControlError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_FAIL) from None
    except SqlcheckError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
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
            raise ConfigError(f"setting DATABASE_URL: migration failed: {str(exc).splitlines()[0]}") from None
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
    wait: bool = typer.Option(False, "--wait", help="wait for the job and exit 0 only on SUCCESS"),
    timeout: float = typer.Option(3600, help="seconds to wait with --wait"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """Submit a ZIP the way the web service does: share, job row, Celery message."""
    from sqlcheck.client import job_view, submit_zip, wait_for_job
    from sqlcheck.database import Database

    s = settings()
    options = {k: v for k, v in (("rules", rules), ("exclude_rules", exclude_rules)) if v}
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
        return wait_for_job(db, job_id, timeout)
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
    view = job_view(Database(s.resolved_database_url), job_id)
    if view is None:
        err.print(f"[red]error:[/red] job {job_id} not found")
        raise typer.Exit(EXIT_FAIL)
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
        output.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)  # bytes: the console's encoding must not mangle Chinese text
        sys.stdout.flush()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
