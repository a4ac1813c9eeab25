"""Running sqlcheck under supervisord: what `sqlcheckctl start/stop/restart/reload/status/health` do.

Each public function takes the settings and a `say` callback for progress
lines, and returns plain data; the CLI only formats. The supervisord
configuration comes from `supervisor_config`, the daemon is driven through
`supervisor_control` (XML-RPC, the same API supervisorctl uses).
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil
import redis

from sqlcheck.errors import ControlError, describe, first_line
from sqlcheck.settings import Settings
from sqlcheck.share import atomic_write
from sqlcheck.supervisor_config import (
    GROUP,
    ProgramSpec,
    RenderPlan,
    SupervisorPaths,
    programs,
    render_all,
    systemd_word,
    venv_bin_dir,
    wants_embedded_redis,
)
from sqlcheck.supervisor_control import (ALREADY_STARTED, NOT_RUNNING, STOPPED_STATES, ProcessInfo, Supervisor,
                                         SupervisorFault)

Say = Callable[[str], None]
QUEUES = ("zip_processing", "sql_analysis")
LOG_TAIL_BYTES = 3000


@contextmanager
def _already_stopped_is_fine():
    """Asking supervisord to stop what is not running is done, not an error."""
    try:
        yield
    except SupervisorFault as exc:
        if exc.code != NOT_RUNNING:
            raise


def _quiet(_line: str) -> None:
    pass


# ---- rendering -----------------------------------------------------------------


def broker_reachable(settings: Settings, timeout_s: float = 1.0) -> bool:
    try:
        return bool(redis.Redis.from_url(settings.broker_url, socket_connect_timeout=timeout_s,
                                         socket_timeout=timeout_s).ping())
    except (redis.RedisError, OSError):
        return False


def make_plan(settings: Settings, bin_dir: Path | None = None) -> RenderPlan:
    """Look at this machine (venv, broker, redis-server) once; the rendering itself is pure.

    A Redis we already run counts as "none answers": otherwise `reload` would see our own
    embedded Redis answering and remove it from under the workers.
    """
    found = shutil.which("redis-server")
    redis_server = Path(found) if found else None
    embedded = False
    if settings.embedded_redis != "off":
        ours = _runs_embedded_redis(SupervisorPaths(settings.home.resolve()))
        embedded = wants_embedded_redis(settings, not ours and broker_reachable(settings), redis_server)
    return RenderPlan(settings, bin_dir or venv_bin_dir(), redis_server if embedded else None)


def _runs_embedded_redis(paths: SupervisorPaths) -> bool:
    try:
        return "[program:redis]" in paths.conf.read_text() and Supervisor(paths.socket, 5).is_up()
    except OSError:
        return False


def write_config(plan: RenderPlan, out_dir: Path | None = None) -> list[Path]:
    """Write every rendered file under `out_dir` (default SQLCHECK_HOME); 0600 files, also under
    `out_dir` (the environment lines may hold a database password), and 0700 directories of
    SQLCHECK_HOME, with the folders supervisord writes to. Each file goes through a temporary
    file of a random name (share.atomic_write): two renders at once (systemd's ExecStartPre and
    an operator) cannot trip over one temporary name, and a link planted in a shared `out_dir`
    is replaced, never written through."""
    root = (out_dir or plan.paths.home).resolve()
    if out_dir is None:  # supervisord refuses to start without its log and run folders (systemd's first start)
        _prepare_dirs(plan.paths)
    written = []
    for rel, text in render_all(plan).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if out_dir is None:
            path.parent.chmod(0o700)
        atomic_write(path, text.encode(), fsync=False, make_parents=False, mode=0o600)
        written.append(path)
    return written


def config_differs(plan: RenderPlan) -> bool:
    """True when rendering now would change the supervisord.conf on disk."""
    try:
        current = plan.paths.conf.read_text()
    except OSError:
        return True
    return current != render_all(plan)["supervisord/supervisord.conf"]


def running_config_differs(plan: RenderPlan, sup: Supervisor) -> bool:
    """True when supervisord runs another configuration than the settings render: the file on
    disk differs from the rendering, or supervisord's groups differ from the file (a reload that
    stopped half way, a `config render` into SQLCHECK_HOME). Re-reading the file, as
    `supervisorctl reread` does, applies nothing."""
    return config_differs(plan) or any(sup.reload_config())


def _prepare_dirs(paths: SupervisorPaths) -> None:
    for d in (paths.home, paths.run_dir, paths.log_dir, paths.redis_dir):
        d.mkdir(parents=True, exist_ok=True)
    paths.run_dir.chmod(0o700)


# ---- one control command at a time ------------------------------------------------

#: how many one_at_a_time calls this process is inside (restart calls start)
_lock_depth = 0


def one_at_a_time(command=None, *, makes_home: bool = False):
    """start, stop, restart and reload of one SQLCHECK_HOME never run at once: two starts both saw
    supervisord down and both spawned one (the second then failed, "did not start", while the
    first ran), and a start during a warm stop raced it. A flock on run/sqlcheckctl.lock, freed
    by the kernel when the process ends, however it ends; a second command fails at once.
    `makes_home`: the command creates SQLCHECK_HOME (start); the others, on a home never
    started, have nothing to race and create nothing."""
    if command is None:
        return functools.partial(one_at_a_time, makes_home=makes_home)

    @functools.wraps(command)
    def locked(settings: Settings, *args, **kwargs):
        global _lock_depth
        paths = RenderPlan(settings, venv_bin_dir()).paths
        if _lock_depth or not (makes_home or paths.run_dir.is_dir()):
            return command(settings, *args, **kwargs)
        try:
            paths.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock = open(paths.run_dir / "sqlcheckctl.lock", "a")
        except OSError as exc:
            raise ControlError(f"cannot use {paths.run_dir}: {exc.strerror} (run sqlcheckctl as the user that "
                               "owns SQLCHECK_HOME)") from None
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ControlError(f"another sqlcheckctl start, stop, restart or reload is running for "
                                   f"{paths.home}; run this one when it has finished") from None
            _lock_depth += 1
            try:
                return command(settings, *args, **kwargs)
            finally:
                _lock_depth -= 1

    return locked


# ---- small queries ----------------------------------------------------------------


def supervisor_for(settings: Settings, timeout_s: float = 30.0) -> Supervisor:
    return Supervisor(SupervisorPaths(settings.home.resolve()).socket, timeout_s)


#: where the rendered unit is installed (README "systemd"; bin/provision-worker installs it there)
SYSTEMD_UNIT = Path("/etc/systemd/system/sqlcheck.service")


def run_by_systemd(plan: RenderPlan) -> bool:
    """Whether the installed systemd unit runs the supervisord of this home."""
    try:
        unit = SYSTEMD_UNIT.read_text()
    except OSError:
        return False
    return f" -c {systemd_word(plan.paths.conf)}\n" in unit


def pidfile_pid(paths: SupervisorPaths) -> int | None:
    """The supervisord pid from its pidfile, if that process is alive and is a supervisord: the
    pidfile outlives a crash or a reboot, and its pid may belong to anything by then."""
    try:
        pid = int(paths.pidfile.read_text().strip())
        cmdline = psutil.Process(pid).cmdline()
    except (OSError, ValueError, psutil.Error):
        return None
    return pid if any(Path(part).name == "supervisord" for part in cmdline) else None


def worker_specs(plan: RenderPlan) -> list[ProgramSpec]:
    return [s for s in programs(plan) if s.celery_node]


def _full_name(spec: ProgramSpec) -> str:
    return f"{GROUP}:{spec.name}" if spec.in_group else f"{spec.name}:{spec.name}"


def _tail(sup: Supervisor, full_name: str) -> str:
    try:
        return sup.tail_log(full_name, LOG_TAIL_BYTES)
    except ControlError as exc:
        return f"(log unavailable: {exc})"


def _ping(settings: Settings, nodes: list[str], timeout_s: float = 1.5) -> set[str]:
    from sqlcheck.node_probe import ping_nodes

    try:
        return ping_nodes(settings, nodes, timeout_s)
    except Exception:  # broker down: nobody answered
        return set()


# ---- start ------------------------------------------------------------------------


@dataclass
class StartResult:
    already_running: bool
    programs: dict[str, str]  # full name -> state
    nodes: list[str]
    conf: Path
    seconds: float


def _spawn_supervisord(plan: RenderPlan) -> None:
    paths = plan.paths
    stale = pidfile_pid(paths) is None and paths.pidfile.exists()
    if stale:
        paths.pidfile.unlink(missing_ok=True)
    out = paths.log_dir / "supervisord-start.out"
    with open(out, "wb") as fh:  # a file, not a pipe: the daemon must not hold our pipe open
        rc = subprocess.call([str(plan.bin_dir / "supervisord"), "-c", str(paths.conf)],
                             stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, cwd=paths.home)
    if rc != 0:
        raise ControlError(f"supervisord did not start (exit {rc}): {out.read_text(errors='replace').strip()[-1500:]}")


def wait_ready(settings: Settings, plan: RenderPlan, sup: Supervisor, deadline: float, say: Say,
               running_config: bool = False) -> dict[str, str]:
    """Until every program is RUNNING and every Celery node answers a ping; else ControlError with the log tail.

    `running_config`: supervisord runs another configuration than `plan` (the settings changed,
    no reload yet): wait for the programs it has, and ping nobody (the node names may differ).
    """
    if running_config:
        wanted, nodes = {p.full_name for p in sup.processes()}, []
    else:
        wanted = {_full_name(s) for s in programs(plan)}
        nodes = [s.celery_node for s in worker_specs(plan) if s.celery_node]
    last = ""
    while True:
        procs = {p.full_name: p for p in sup.processes() if p.full_name in wanted}
        states = {name: procs[name].state if name in procs else "MISSING" for name in sorted(wanted)}
        fatal = [n for n, st in states.items() if st == "FATAL"]
        if fatal:
            raise ControlError(f"program {fatal[0]} could not start ({procs[fatal[0]].description}); "
                               f"last lines of {fatal[0]}'s log:\n{_tail(sup, fatal[0])}")
        waiting = [f"{n} is {st}" for n, st in states.items() if st != "RUNNING"]
        if not waiting:
            answered = _ping(settings, nodes)
            waiting = [f"node {n} does not answer a ping yet" for n in nodes if n not in answered]
            if not waiting:
                return states
        if waiting[0] != last:
            say(f"waiting: {'; '.join(waiting)}")
            last = waiting[0]
        if time.monotonic() > deadline:
            culprit = next((n for n, st in states.items() if st != "RUNNING"), None)
            if culprit is None:
                spec = next(s for s in worker_specs(plan) if f"node {s.celery_node}" in waiting[0])
                culprit = _full_name(spec)
            raise ControlError(f"not ready in time: {'; '.join(waiting)}; last lines of {culprit}'s log:\n"
                               f"{_tail(sup, culprit)}")
        time.sleep(0.5)


@one_at_a_time(makes_home=True)
def start(settings: Settings, timeout_s: float = 120, say: Say = _quiet, bin_dir: Path | None = None) -> StartResult:
    """Render, migrate, start supervisord daemonised, wait until all is up. Idempotent."""
    from sqlcheck.database import upgrade_schema

    began = time.monotonic()
    deadline = began + timeout_s
    sup = supervisor_for(settings)
    already = sup.is_up()
    differs = False
    if already:
        plan = make_plan(settings, bin_dir)
        paths = plan.paths
        say(f"supervisord is already running (pid {sup.pid()}); making sure every program runs")
        differs = running_config_differs(plan, sup)
        if differs:
            say("note: the settings differ from the running configuration; `sqlcheckctl reload` applies them")
        for p in sup.processes():
            if p.state in STOPPED_STATES:
                say(f"starting {p.full_name}")
                try:
                    sup.start_process(p.full_name, wait=False)
                except SupervisorFault as exc:
                    if exc.code != ALREADY_STARTED:
                        raise
    else:
        plan = make_plan(settings, bin_dir)
        paths = plan.paths
        if run_by_systemd(plan):
            raise ControlError(f"this home is run by systemd ({SYSTEMD_UNIT}): `systemctl start {SYSTEMD_UNIT.name}`; "
                               "a supervisord started here would hold its socket and keep the unit from starting")
        write_config(plan)
        say(f"configuration written to {paths.conf}")
        try:
            upgrade_schema(settings.resolved_database_url)
        except Exception as exc:  # driver errors: one line
            raise ControlError(f"database schema upgrade failed: {first_line(exc)}") from None
        say("database schema is up to date")
        if plan.redis_server:
            say(f"no Redis answers at {settings.broker_url}: supervisord runs {plan.redis_server} (append-only)")
        _spawn_supervisord(plan)
        while not sup.is_up():
            if time.monotonic() > deadline:
                raise ControlError(
                    f"supervisord did not open {paths.socket} in time; see {paths.log_dir}/supervisord.log")
            time.sleep(0.2)
        say(f"supervisord started (pid {sup.pid()})")
    states = wait_ready(settings, plan, sup, deadline, say, running_config=differs)
    nodes = [s.celery_node for s in worker_specs(plan) if s.celery_node] if not differs else []
    return StartResult(already, states, nodes, paths.conf, time.monotonic() - began)


# ---- stop -------------------------------------------------------------------------


@dataclass
class StopResult:
    was_running: bool
    waited_for: list[str] = field(default_factory=list)  # what the warm stop waited for
    cold: bool = False  # the timeout ran out and the workers were sent SIGQUIT
    seconds: float = 0.0


def _in_flight(settings: Settings, nodes: list[str]) -> list[str]:
    from sqlcheck.node_probe import active_tasks

    try:
        active = active_tasks(settings, nodes)
    except Exception:
        return []
    return [f"{node}: task {r['id']} ({r['name'].rsplit('.', 1)[-1]})" for node, reqs in sorted(active.items())
            for r in reqs]


def _wait_group_stopped(sup: Supervisor, group: str, deadline: float, say: Say,
                        on_busy: Callable[[list[ProcessInfo]], None] | None = None) -> bool:
    """Whether the group stopped before `deadline`; `on_busy` sees what still runs at each look."""
    last = None
    while True:
        busy = [p for p in sup.processes() if p.group == group and p.state not in STOPPED_STATES]
        if not busy:
            return True
        if on_busy is not None:
            on_busy(busy)
        names = ", ".join(f"{p.full_name} ({p.state})" for p in busy)
        if names != last:
            say(f"waiting for {names}")
            last = names
        if time.monotonic() > deadline:
            return False
        time.sleep(0.3)


def _wait_pid_gone(pid: int, timeout_s: float) -> bool:
    try:
        psutil.Process(pid).wait(timeout_s)
        return True
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False


#: seconds before supervisord's SIGKILL that a stop still waiting turns cold (stopwaitsecs is the
#: longest a message may run + STOP_MARGIN_S, so the warm wait still outlasts every message)
COLD_BEFORE_KILL_S = 15


@one_at_a_time
def stop(settings: Settings, timeout_s: float | None = None, say: Say = _quiet) -> StopResult:
    """Warm stop: workers finish their files (unstarted messages stay in Redis), then supervisord exits.

    After `timeout_s` the workers get SIGQUIT: Celery's cold shutdown puts the
    files still in flight back into Redis (they run again after `start`).
    """
    began = time.monotonic()
    plan = RenderPlan(settings, venv_bin_dir())
    sup = supervisor_for(settings)
    if not sup.is_up():
        pid = pidfile_pid(plan.paths)
        if pid is None:
            return StopResult(False)
        raise ControlError(f"supervisord (pid {pid}) runs but does not answer on {plan.paths.socket}")
    result = StopResult(True)
    daemon_pid = sup.pid()
    nodes = [s.celery_node for s in worker_specs(plan) if s.celery_node]
    result.waited_for = _in_flight(settings, nodes)
    for line in result.waited_for:
        say(f"in flight, will finish first: {line}")
    # By default each worker turns cold a little before supervisord would SIGKILL it (at its own
    # stopwaitsecs): a cold shutdown gives its messages in flight back to Redis at once; a
    # SIGKILL leaves them to the visibility timeout.
    stopping = time.monotonic()
    cold_at = {_full_name(spec): stopping + (timeout_s if timeout_s is not None else spec.stopwaitsecs - COLD_BEFORE_KILL_S)
               for spec in worker_specs(plan)}
    say(f"stopping the workers warm (TERM), waiting up to {max(cold_at.values()) - stopping:.0f} s")

    def cold_when_due(busy: list[ProcessInfo]) -> None:
        for p in busy:
            if p.full_name in cold_at and time.monotonic() >= cold_at[p.full_name] and p.pid:
                del cold_at[p.full_name]
                result.cold = True
                say(f"{p.full_name} still stopping: SIGQUIT (cold shutdown; its files in flight go back to Redis)")
                try:
                    os.kill(p.pid, signal.SIGQUIT)
                except ProcessLookupError:
                    pass

    with _already_stopped_is_fine():
        sup.stop_group(GROUP, wait=False)
    _wait_group_stopped(sup, GROUP, max(cold_at.values()) + 30, say, cold_when_due)
    say("workers stopped; shutting supervisord down")
    sup.shutdown()
    if not _wait_pid_gone(daemon_pid, 120):
        raise ControlError(f"supervisord (pid {daemon_pid}) is still running 120 s after shutdown")
    result.seconds = time.monotonic() - began
    return result


# ---- restart / reload ---------------------------------------------------------------


@one_at_a_time
def restart(settings: Settings, timeout_s: float = 300, say: Say = _quiet, bin_dir: Path | None = None) -> list[str]:
    """Rolling: one program after the other, each warm-stopped, started and pinged before the next."""
    sup = supervisor_for(settings)
    if not sup.is_up():
        say("supervisord is not running: starting it")
        start(settings, timeout_s, say, bin_dir)
        return []
    plan = make_plan(settings, bin_dir)
    if running_config_differs(plan, sup):  # supervisord would restart the old programs, this loop wait for the new
        raise ControlError("the settings differ from the running configuration: `sqlcheckctl reload` "
                           "applies them (replacing what changed, warm); restart restarts what runs as it is")
    done = []
    for spec in programs(plan):
        if spec.name == "redis":
            continue  # the broker itself stays up: restarting it gains nothing and stalls every worker
        name = _full_name(spec)
        say(f"restarting {name} (warm stop, waits for files in flight)")
        with _already_stopped_is_fine():
            sup.stop_process(name, wait=False)
        deadline = time.monotonic() + spec.stopwaitsecs + 15
        while sup.process(name).state not in STOPPED_STATES:
            if time.monotonic() > deadline:
                raise ControlError(f"{name} did not stop within {spec.stopwaitsecs + 15} s")
            time.sleep(0.3)
        sup.start_process(name, wait=True)
        wait_ready(settings, plan, sup, time.monotonic() + timeout_s, say)
        done.append(name)
    return done


@dataclass
class ReloadResult:
    added: list[str]
    changed: list[str]
    removed: list[str]


@one_at_a_time
def reload(settings: Settings, timeout_s: float = 300, say: Say = _quiet, bin_dir: Path | None = None) -> ReloadResult:
    """Re-render and apply only what changed: supervisord compares groups; unchanged ones keep running.

    The two workers share [group:sqlcheck], so a change to either replaces that
    group (both stop warm, then start with the new sections).
    """
    sup = supervisor_for(settings)
    if not sup.is_up():
        raise ControlError("supervisord is not running; use `sqlcheckctl start`")
    plan = make_plan(settings, bin_dir)
    running_longest = _longest_stop_wait_in(plan.paths.conf)  # what the running programs stop with
    write_config(plan)
    added, changed, removed = sup.reload_config()
    gone: list[str] = []
    longest = max([s.stopwaitsecs for s in programs(plan)] + [running_longest]) or 60
    for group in removed + changed:
        say(f"stopping group {group} (warm)")
        with _already_stopped_is_fine():
            sup.stop_group(group, wait=False)
        if not _wait_group_stopped(sup, group, time.monotonic() + longest + 15, say):
            replaced = [g for g in gone if g in changed]
            for g in replaced:  # stopped already: they run again, with their new configuration
                sup.add_group(g)
            done = f" (replaced before it: {', '.join(replaced)})" if replaced else ""
            raise ControlError(f"group {group} did not stop within {longest + 15} s and is still stopping; "
                               f"run `sqlcheckctl reload` again once `status` shows it stopped{done}")
        sup.remove_group(group)
        gone.append(group)
    for group in changed + added:
        say(f"adding group {group} with its new configuration")
        sup.add_group(group)
    if changed or added:
        wait_ready(settings, plan, sup, time.monotonic() + timeout_s, say)
    return ReloadResult(added, changed, removed)


def _longest_stop_wait_in(conf: Path) -> int:
    """The longest stopwaitsecs of a rendered supervisord.conf (0 when unreadable): a program keeps
    the stop wait it was started with until it is replaced."""
    try:
        return max((int(v) for v in re.findall(r"^stopwaitsecs\s*=\s*(\d+)", conf.read_text(), re.M)), default=0)
    except OSError:
        return 0


# ---- status / health ---------------------------------------------------------------


def _rss_mb(pid: int) -> float | None:
    try:
        return round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def process_memory(pid: int) -> dict[str, Any]:
    """RSS of a program's main process and of each of its children (the Celery pool)."""
    try:
        children = psutil.Process(pid).children()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        children = []
    return {
        "rss_mb": _rss_mb(pid),
        "children": [{"pid": c.pid, "rss_mb": _rss_mb(c.pid)} for c in children],
    }


def queue_depths(settings: Settings) -> dict[str, int | None]:
    try:
        client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=2, socket_timeout=2)
        depths: dict[str, int | None] = {q: client.llen(q) for q in QUEUES}
        depths["unacked"] = client.hlen("unacked")  # delivered to a worker, not yet acknowledged
        return depths
    except (redis.RedisError, OSError):
        return {q: None for q in QUEUES}


def job_overview(settings: Settings, limit: int = 20) -> dict[str, Any]:
    """Job counts by status, and done/total of the jobs being processed."""
    from sqlcheck import repository as repo
    from sqlcheck.database import Database, sqlite_path

    embedded = sqlite_path(settings.resolved_database_url)
    if embedded is not None and not embedded.exists():  # looking must not create it (as root, in the service's home)
        raise ControlError(f"no database yet at {embedded} (`sqlcheckctl start` or `db upgrade` creates it)")
    db = Database(settings.resolved_database_url)
    try:
        with db.session() as s:
            counts = repo.job_counts_by_status(s)
            running = []
            for job in repo.jobs_in_status(s, ["PROCESSING"], limit):
                progress = repo.task_progress(s, job.id)
                done = progress.get("SUCCESS", 0) + progress.get("FAILURE", 0)
                running.append({"job_id": job.id, "done": done, "total": job.total_tasks})
        return {"counts": counts, "running": running}
    finally:
        db.engine.dispose()


def status(settings: Settings, bin_dir: Path | None = None) -> dict[str, Any]:
    """One document: supervisor processes, Celery nodes, queues, jobs, memory. `state` sums it up."""
    plan = RenderPlan(settings, bin_dir or venv_bin_dir())
    sup = supervisor_for(settings, timeout_s=10)
    doc: dict[str, Any] = {"conf": str(plan.paths.conf), "supervisord": None, "programs": [], "nodes": {}}
    try:
        doc["supervisord"] = {"pid": sup.pid(), "state": sup.state()}
        procs = sup.processes()
    except ControlError as exc:
        doc["supervisord"] = {"error": str(exc), "pid": pidfile_pid(plan.paths),
                              # this user cannot see its socket or pidfile (run/ is 0700): nobody can say
                              "no_access": _no_access(plan.paths.run_dir)}
        procs = []
    for p in procs:
        entry: dict[str, Any] = {"name": p.full_name, "state": p.state, "pid": p.pid or None,
                                 "description": p.description}
        if p.pid:
            entry.update(process_memory(p.pid))
        doc["programs"].append(entry)
    nodes = [s.celery_node for s in worker_specs(plan) if s.celery_node]
    answered = _ping(settings, nodes) if procs else set()
    active: dict[str, list] = {}
    if answered:
        from sqlcheck.node_probe import active_tasks

        try:
            active = active_tasks(settings, sorted(answered))
        except Exception:
            active = {}
    doc["nodes"] = {n: {"ping": n in answered, "active": active.get(n, [])} for n in nodes}
    doc["queues"] = queue_depths(settings)
    try:
        doc["jobs"] = job_overview(settings)
    except Exception as exc:
        doc["jobs"] = {"error": describe(exc)}
    doc["state"] = overall_state(doc)
    return doc


def _no_access(run_dir: Path) -> bool:
    try:
        return run_dir.exists() and not os.access(run_dir, os.R_OK | os.X_OK)
    except OSError:  # the home itself is closed to this user
        return True


def overall_state(doc: dict[str, Any]) -> str:
    """running (all up), stopped (no supervisord or nothing running), partial, or unknown."""
    sup = doc.get("supervisord") or {}
    if "error" in sup:
        return "unknown" if sup.get("pid") or sup.get("no_access") else "stopped"
    states = [p["state"] for p in doc["programs"]]
    if not states or all(st in STOPPED_STATES for st in states):
        return "stopped"
    if all(st == "RUNNING" for st in states) and all(n["ping"] for n in doc["nodes"].values()):
        return "running"
    return "partial"


def health(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each check -> {ok, detail}. Healthy only when broker, database, share and every node answer."""
    from sqlcheck.database import redacted_url

    checks: dict[str, dict[str, Any]] = {}
    ok = broker_reachable(settings, 2.0)
    broker = redacted_url(settings.broker_url)  # health output lands in monitoring: no password
    checks["broker"] = {"ok": ok, "detail": broker if ok else f"no answer at {broker}"}
    try:
        job_overview(settings, limit=1)
        checks["database"] = {"ok": True, "detail": "jobs table readable"}
    except Exception as exc:
        checks["database"] = {"ok": False, "detail": describe(exc)}
    share = settings.resolved_share_root
    probe = share / f".health-probe-{uuid.uuid4().hex}"  # several nodes share it; pids repeat across machines
    try:
        probe.write_bytes(b"")
        probe.unlink()
        checks["share"] = {"ok": True, "detail": str(share)}
    except OSError as exc:
        checks["share"] = {"ok": False, "detail": f"{share} not writable: {exc.strerror}"}
    nodes = [s.celery_node for s in worker_specs(RenderPlan(settings, venv_bin_dir())) if s.celery_node]
    answered = _ping(settings, nodes, 2.0) if checks["broker"]["ok"] else set()
    for n in nodes:
        checks[f"node {n}"] = {"ok": n in answered, "detail": "pong" if n in answered else "no answer to ping"}
    return checks
