"""The supervisord configuration and the systemd unit, rendered from Settings (pure).

Nothing here touches the network or the file system: a `RenderPlan` says
everything the text depends on (settings, where the venv's executables are,
whether to run a local Redis), so the checked-in samples under `etc/` can be
compared with what `sqlcheckctl config render` prints.

A program is a small `ProgramSpec`. To run one more process under supervisord,
add one line to `extra_programs`.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from sqlcheck.errors import ConfigError
from sqlcheck.settings import Settings, settings_as_env

GROUP = "sqlcheck"
#: seconds added to the hard time limit before supervisord SIGKILLs a stopping worker
STOP_MARGIN_S = 30
#: seconds systemd waits beyond supervisord's own longest stop
SYSTEMD_STOP_MARGIN_S = 30
LOG_MAX_BYTES = "50MB"
LOG_BACKUPS = 10
#: AF_UNIX paths longer than this cannot be bound (108 bytes on Linux, minus the NUL)
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class SupervisorPaths:
    """Where supervisord keeps its files, all under SQLCHECK_HOME."""

    home: Path

    @property
    def conf_dir(self) -> Path:
        return self.home / "supervisord"

    @property
    def conf(self) -> Path:
        return self.conf_dir / "supervisord.conf"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def socket(self) -> Path:
        return self.run_dir / "supervisord.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "supervisord.pid"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    def program_log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    @property
    def redis_dir(self) -> Path:
        return self.home / "redis"


@dataclass(frozen=True)
class ProgramSpec:
    """One `[program:x]` section: what to run and how supervisord treats it."""

    name: str
    argv: tuple[str, ...]
    why: str  # one comment line above the section
    stopwaitsecs: int = 10
    startsecs: int = 5
    priority: int = 100  # lower starts first and stops last
    in_group: bool = True  # member of [group:sqlcheck] (the workers)
    celery_node: str | None = None  # Celery node name, for ping/status
    settings_env: bool = True  # pass settings_as_env() to the process


@dataclass(frozen=True)
class RenderPlan:
    """Everything the rendered text depends on."""

    settings: Settings
    bin_dir: Path  # the venv's bin directory (sqlcheckctl, supervisord)
    redis_server: Path | None = None  # run this redis-server as a program when set

    @property
    def paths(self) -> SupervisorPaths:
        return SupervisorPaths(self.settings.home.resolve())


def venv_bin_dir() -> Path:
    """The directory of the running interpreter: where pip put sqlcheckctl and supervisord."""
    return Path(sys.executable).parent


# ---- programs ------------------------------------------------------------------


def worker_programs(plan: RenderPlan) -> list[ProgramSpec]:
    s = plan.settings
    ctl = str(plan.bin_dir / "sqlcheckctl")
    zip_node, analysis_node = f"zip@{s.node_name}", f"analysis@{s.node_name}"
    return [
        ProgramSpec(
            name="zip",
            argv=(ctl, "worker", "--queues", "zip_processing", "--concurrency", "1", "--name", zip_node),
            why="expands uploaded ZIPs and sends the lint messages (small files batched); one child is enough (I/O bound)",
            stopwaitsecs=s.zip_hard_time_limit_s + STOP_MARGIN_S,
            celery_node=zip_node,
        ),
        ProgramSpec(
            name="analysis",
            argv=(ctl, "worker", "--queues", "sql_analysis", "--concurrency", str(s.analysis_concurrency),
                  "--name", analysis_node),
            why=f"lints one SQL file per child; {s.analysis_concurrency} children (CELERY_WORKER_CONCURRENCY)",
            stopwaitsecs=s.lint_batch_time_limit_s + STOP_MARGIN_S,  # the longest a message may run
            celery_node=analysis_node,
        ),
    ]


def extra_programs(plan: RenderPlan) -> list[ProgramSpec]:
    """Helper processes outside the worker group (reaper, metrics, ...): one ProgramSpec each.

    They are their own supervisor groups, so `reload` restarts only the one
    whose section changed, and `supervisorctl stop sqlcheck:*` leaves them be.
    """
    s = plan.settings
    found = [ProgramSpec(
        name="reaper", argv=(str(plan.bin_dir / "sqlcheckctl"), "reap", "--loop"),
        why=f"re-sends lost or stranded work, fails what used up its attempts, every {s.reaper_interval_s:g} s "
            "(SQLCHECK_REAPER_INTERVAL_S); one reaper of the cluster acts per pass (Redis lock)",
        in_group=False, priority=200, startsecs=2, stopwaitsecs=15,
    )]
    if s.metrics_port:
        found.append(ProgramSpec(
            name="metrics", argv=(str(plan.bin_dir / "sqlcheckctl"), "metrics", "serve"),
            why=f"Prometheus endpoint http://{s.metrics_bind}:{s.metrics_port}/metrics (SQLCHECK_METRICS_PORT); "
                "reads the database and Redis per scrape, holds no state",
            in_group=False, priority=200, startsecs=2, stopwaitsecs=10,
        ))
    return found


def redis_program(plan: RenderPlan) -> ProgramSpec | None:
    """A loopback Redis for a one-machine install, persisted with the append-only file."""
    if plan.redis_server is None:
        return None
    port = urlsplit(plan.settings.broker_url).port or 6379
    argv = (
        str(plan.redis_server), "--bind", "127.0.0.1", "--port", str(port),
        "--dir", str(plan.paths.redis_dir), "--appendonly", "yes", "--appendfsync", "everysec",
        "--save", "", "--daemonize", "no", "--protected-mode", "yes",
    )
    return ProgramSpec(
        name="redis", argv=argv, priority=10, in_group=False, settings_env=False, startsecs=1, stopwaitsecs=30,
        why="embedded broker: loopback only; append-only file so queued and unacked messages survive a restart",
    )


def programs(plan: RenderPlan) -> list[ProgramSpec]:
    redis = redis_program(plan)
    return ([redis] if redis else []) + worker_programs(plan) + extra_programs(plan)


def wants_embedded_redis(settings: Settings, broker_reachable: bool, redis_server: Path | None) -> bool:
    """SQLCHECK_EMBEDDED_REDIS: on, off, or auto (nothing answers, a binary exists, the URL is local)."""
    if settings.embedded_redis == "off":
        return False
    if redis_server is None:
        if settings.embedded_redis == "on":
            raise ConfigError("setting SQLCHECK_EMBEDDED_REDIS=on: no redis-server executable on PATH")
        return False
    local = urlsplit(settings.broker_url).hostname in ("127.0.0.1", "localhost")
    if settings.embedded_redis == "on":
        if not local:
            raise ConfigError("setting SQLCHECK_EMBEDDED_REDIS=on needs CELERY_BROKER_URL on 127.0.0.1")
        return True
    return local and not broker_reachable


# ---- quoting ---------------------------------------------------------------------


def _no_percent(value: str) -> str:
    """supervisord %-expands every value ( %(here)s, %(ENV_X)s ): a literal % is written %%."""
    return value.replace("%", "%%")


def _ini_safe(value: str, what: str) -> str:
    if "\n" in value or "\r" in value:
        raise ConfigError(f"{what}: a newline cannot be written to supervisord.conf")
    for marker in (" ;", " #", "\t;", "\t#"):
        if marker in value:
            raise ConfigError(f"{what}: {marker.strip()!r} after a space would start a comment in supervisord.conf")
    return value


def env_value(name: str, value: str) -> str:
    """One value for `environment=`: quoted for supervisord's (non-POSIX) shlex, %-escaped.

    That lexer has no escapes, so a value may hold one kind of quote, not both; and supervisord
    strips quotes off both ends of every value, so one may not start or end with a quote.
    """
    _ini_safe(value, f"setting {name}")
    if value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
        raise ConfigError(f"setting {name}: supervisord would drop a quote at the start or end of the value")
    if '"' not in value:
        quoted = f'"{value}"'
    elif "'" not in value:
        quoted = f"'{value}'"
    else:
        raise ConfigError(f"setting {name}: a value with both ' and \" cannot be passed through supervisord")
    return _no_percent(quoted)


def command_line(argv: tuple[str, ...]) -> str:
    return _no_percent(_ini_safe(shlex.join(argv), "program command"))


def conf_path(path: Path | str, expansions: int = 1) -> str:
    """A path as a supervisord.conf value, %-escaped like every value (SQLCHECK_HOME may hold a
    %) once for each time supervisord expands it: a program's log file is expanded twice."""
    value = _ini_safe(str(path), "a path under SQLCHECK_HOME")
    for _ in range(expansions):
        value = _no_percent(value)
    return value


def systemd_word(value: Path | str, program: bool = False) -> str:
    """One word of a systemd Exec line: % doubled (systemd expands %-specifiers), $ doubled in an
    argument (systemd expands $NAME there, not in the program's path), backslashes and quotes
    escaped, and the word quoted when it holds a space or a quote."""
    text = str(value).replace("\\", "\\\\").replace("%", "%%")
    if not program:
        text = text.replace("$", "$$")
    if any(c in text for c in " \t\"'"):
        text = '"' + text.replace('"', '\\"') + '"'
    return text


# ---- rendering ------------------------------------------------------------------


def _section(title: str, rows: list[tuple[str, str, str]]) -> list[str]:
    """rows: (key, value, why). An empty `why` means the key speaks for itself."""
    lines = [f"[{title}]"]
    for key, value, why in rows:
        if why:
            lines.append(f"; {why}")
        lines.append(f"{key}={value}")
    return lines + [""]


def render_program(plan: RenderPlan, spec: ProgramSpec) -> list[str]:
    log = plan.paths.program_log(spec.name)
    rows = [
        ("command", command_line(spec.argv), ""),
        ("directory", conf_path(plan.paths.home), ""),
        ("priority", str(spec.priority), "lower starts first, stops last"),
        ("autostart", "true", ""),
        ("autorestart", "true", "a worker that exits for any reason is started again"),
        ("startsecs", str(spec.startsecs), "counted as started only after staying up this long"),
        ("startretries", "5", "then FATAL: `sqlcheckctl status` shows it with the tail of its log"),
        ("stopsignal", "TERM", "Celery warm shutdown: running files finish, unstarted messages stay in Redis"),
        ("stopasgroup", "false",
         "TERM to the main process only: TERM to the pool children would kill the files they are linting"),
        ("killasgroup", "true", "the final SIGKILL (after stopwaitsecs) also reaches orphaned pool children"),
        ("stopwaitsecs", str(spec.stopwaitsecs),
         "the longest a message may run plus a margin, so a warm stop is never cut short"),
        ("redirect_stderr", "true", "one log per program; Celery and sqlcheck log to stderr"),
        ("stdout_logfile", conf_path(log, expansions=2), ""),
        ("stdout_logfile_maxbytes", LOG_MAX_BYTES, "rotated by supervisord; no logrotate needed"),
        ("stdout_logfile_backups", str(LOG_BACKUPS), ""),
    ]
    if spec.settings_env:
        env = settings_as_env(plan.settings)
        body = ",\n".join(f"    {k}={env_value(k, v)}" for k, v in env.items())
        rows.append(("environment", "\n" + body,
                     "the settings, resolved when rendered, so a worker never depends on the caller's shell"))
    lines = [f"; {spec.why}"]
    if spec.celery_node:
        lines.append(f"; Celery node {spec.celery_node}")
    return lines + _section(f"program:{spec.name}", rows)


def render_supervisord_conf(plan: RenderPlan) -> str:
    p = plan.paths
    if len(str(p.socket)) > MAX_SOCKET_PATH:
        raise ConfigError(f"setting SQLCHECK_HOME: {p.home} is too long for a unix socket path ({p.socket})")
    specs = programs(plan)
    lines = [
        "; Generated by `sqlcheckctl config render` from the sqlcheck settings. Do not edit:",
        "; change the settings and run `sqlcheckctl reload` (or `config render`).",
        "; Operators: supervisorctl -c " + str(p.conf) + " status|stop|start sqlcheck:*",
        "",
    ]
    lines += _section("unix_http_server", [
        ("file", conf_path(p.socket), "control socket: no TCP port, so only local users can reach it"),
        ("chmod", "0700", "only the owner (the user running the workers) may control them"),
    ])
    lines += _section("supervisord", [
        ("logfile", conf_path(p.log_dir / "supervisord.log"), ""),
        ("logfile_maxbytes", LOG_MAX_BYTES, ""),
        ("logfile_backups", str(LOG_BACKUPS), ""),
        ("loglevel", "info", ""),
        ("pidfile", conf_path(p.pidfile), "`sqlcheckctl stop` and the tests find supervisord by this pid"),
        ("childlogdir", conf_path(p.log_dir), ""),
        ("directory", conf_path(p.home), ""),
        ("umask", "027", "logs and the AOF are not world-readable"),
        ("nodaemon", "false", "`sqlcheckctl start` daemonises; systemd runs `supervisord -n` instead"),
        ("minfds", "4096", "each pool child holds sockets to Redis and the database"),
    ])
    lines += _section("rpcinterface:supervisor", [
        ("supervisor.rpcinterface_factory", "supervisor.rpcinterface:make_main_rpcinterface",
         "the XML-RPC API that supervisorctl and `sqlcheckctl status` use"),
    ])
    lines += _section("supervisorctl", [("serverurl", "unix://" + conf_path(p.socket), "")])
    group = [s.name for s in specs if s.in_group]
    lines += _section(f"group:{GROUP}", [
        ("programs", ",".join(group), "the Celery workers: `supervisorctl stop sqlcheck:*` stops them warm"),
        ("priority", "100", ""),
    ])
    for spec in specs:
        lines += render_program(plan, spec)
    return "\n".join(lines).rstrip("\n") + "\n"


def systemd_stop_timeout_s(plan: RenderPlan) -> int:
    """supervisord stops one group after the other; systemd must outwait all of them."""
    by_group: dict[str, int] = {}
    for spec in programs(plan):
        key = GROUP if spec.in_group else spec.name
        by_group[key] = max(by_group.get(key, 0), spec.stopwaitsecs)
    return sum(by_group.values()) + SYSTEMD_STOP_MARGIN_S


def render_systemd_unit(plan: RenderPlan) -> str:
    p = plan.paths
    ctl, supervisord = plan.bin_dir / "sqlcheckctl", plan.bin_dir / "supervisord"
    return f"""\
# Generated by `sqlcheckctl config render`. Install:
#   out=$(mktemp -d) && sqlcheckctl -c /etc/sqlcheck/sqlcheck.toml config render --out "$out"
#   install -m 0644 "$out/systemd/sqlcheck.service" /etc/systemd/system/
#   systemctl daemon-reload && systemctl enable --now sqlcheck
# /etc/sqlcheck/sqlcheck.env (optional, KEY=value lines) holds the settings or points at the
# TOML file, e.g. SQLCHECK_CONFIG=/etc/sqlcheck/sqlcheck.toml; secrets such as DATABASE_URL
# belong there (mode 0600), not in this unit.
[Unit]
Description=sqlcheck SQL lint workers (supervisord)
Documentation=file://{quote(str(p.conf)).replace("%", "%%")}
Wants=network-online.target
After=network-online.target redis-server.service postgresql.service remote-fs.target

[Service]
# supervisord stays in the foreground (-n): systemd tracks it directly
Type=simple
# supervisord applies its own umask only when it daemonizes, never under -n
UMask=0027
EnvironmentFile=-/etc/sqlcheck/sqlcheck.env
# render the configuration from the current settings and migrate the schema before each start
ExecStartPre={systemd_word(ctl, program=True)} config render
ExecStartPre={systemd_word(ctl, program=True)} db upgrade
ExecStart={systemd_word(supervisord, program=True)} -n -c {systemd_word(p.conf)}
# SIGTERM to supervisord only (mixed): it stops each worker warm, TERM to the Celery main process.
# The default (control-group) would TERM the pool children too and kill the files in flight.
KillSignal=SIGTERM
KillMode=mixed
# supervisord waits up to stopwaitsecs per group, one group after the other; wait longer than that
TimeoutStopSec={systemd_stop_timeout_s(plan)}
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


def render_all(plan: RenderPlan) -> dict[str, str]:
    """Relative file name -> text; `config render --out DIR` writes exactly these."""
    return {
        "supervisord/supervisord.conf": render_supervisord_conf(plan),
        "systemd/sqlcheck.service": render_systemd_unit(plan),
    }
