"""Settings: built once at the edge (CLI, worker start) and passed in.

Sources, later wins: built-in defaults -> TOML file (``--config`` or
``SQLCHECK_CONFIG``) -> environment variables. Each setting is declared once,
with its environment name, its TOML key (the field name) and its unit.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from sqlcheck.errors import ConfigError

DIALECTS_NOTE = "any dialect name sqlfluff knows (ansi, postgres, mysql, bigquery, ...)"


def _env(name: str, help: str) -> dict[str, Any]:
    return {"env": name, "help": help}


@dataclass(frozen=True)
class Settings:
    """Every knob of sqlcheck. Field names are the TOML keys."""

    home: Path = field(
        default=Path(".sqlcheck"), metadata=_env("SQLCHECK_HOME", "state dir: SQLite db, share, logs, supervisord files")
    )
    database_url: str = field(default="", metadata=_env("DATABASE_URL", "SQLAlchemy URL; default sqlite:///<home>/sqlcheck.db"))
    broker_url: str = field(default="redis://127.0.0.1:6379/0", metadata=_env("CELERY_BROKER_URL", "Celery broker (Redis)"))
    result_backend: str = field(
        default="", metadata=_env("CELERY_RESULT_BACKEND", "Celery result backend; unused by our tasks (results live in the DB)")
    )
    share_root: Path | None = field(default=None, metadata=_env("NFS_SHARE_ROOT_PATH", "share root; default <home>/share"))
    service_id: str = field(default="", metadata=_env("SERVICE_ID", "node name part of Celery hostnames; default the host name"))
    worker_concurrency: int = field(
        default=0, metadata=_env("CELERY_WORKER_CONCURRENCY", "analysis pool children; 0 = number of CPUs")
    )
    worker_queues: str = field(
        default="zip_processing,sql_analysis", metadata=_env("CELERY_WORKER_QUEUES", "queues `sqlcheckctl worker` consumes by default")
    )
    default_dialect: str = field(default="ansi", metadata=_env("SQLCHECK_DEFAULT_DIALECT", f"dialect when a job names none: {DIALECTS_NOTE}"))
    warm_dialects: str = field(
        default="", metadata=_env("SQLCHECK_WARM_DIALECTS", "comma list of further dialects the analysis worker builds "
                                  "before it forks its children, so every child, and each replacement, starts warm for them")
    )
    max_file_bytes: int = field(default=262_144, metadata=_env("SQLCHECK_MAX_FILE_BYTES", "largest SQL file analysed, bytes"))
    max_zip_members: int = field(default=20_000, metadata=_env("SQLCHECK_MAX_ZIP_MEMBERS", "most entries one ZIP may hold"))
    max_uncompressed_bytes: int = field(
        default=1_073_741_824, metadata=_env("SQLCHECK_MAX_UNCOMPRESSED_BYTES", "most bytes one ZIP may inflate to, in total")
    )
    max_compression_ratio: int = field(
        default=200, metadata=_env("SQLCHECK_MAX_COMPRESSION_RATIO", "largest inflated/compressed ratio of one member")
    )
    soft_time_limit_s: int = field(default=120, metadata=_env("SQLCHECK_SOFT_TIME_LIMIT_S", "analysis task soft limit, seconds"))
    hard_time_limit_s: int = field(default=150, metadata=_env("SQLCHECK_HARD_TIME_LIMIT_S", "analysis task hard limit, seconds"))
    zip_soft_time_limit_s: int = field(default=300, metadata=_env("SQLCHECK_ZIP_SOFT_TIME_LIMIT_S", "zip task soft limit, seconds"))
    zip_hard_time_limit_s: int = field(default=330, metadata=_env("SQLCHECK_ZIP_HARD_TIME_LIMIT_S", "zip task hard limit, seconds"))
    lint_batch_max_files: int = field(
        default=8, metadata=_env("SQLCHECK_LINT_BATCH_MAX_FILES", "most small files linted by one message; 1 = one message per file")
    )
    lint_batch_max_bytes: int = field(
        default=16_384, metadata=_env("SQLCHECK_LINT_BATCH_MAX_BYTES", "most source bytes in one batch message; larger files go alone")
    )
    max_attempts: int = field(
        default=3, metadata=_env("SQLCHECK_MAX_ATTEMPTS", "times one file may be started before it ends FAILURE")
    )
    child_max_rss_mb: int = field(
        default=1024, metadata=_env("SQLCHECK_CHILD_MAX_RSS_MB", "pool child RSS that gets the running file failed (memory), MiB")
    )
    child_max_messages: int = field(
        default=100, metadata=_env("SQLCHECK_CHILD_MAX_MESSAGES", "lint messages a pool child handles before a fresh (warm) one replaces it")
    )
    child_recycle_rss_mb: int = field(
        default=512, metadata=_env("SQLCHECK_CHILD_RECYCLE_RSS_MB", "RSS above which a child is replaced when it finishes a message, MiB")
    )
    watchdog_interval_s: float = field(
        default=0.25, metadata=_env("SQLCHECK_WATCHDOG_INTERVAL_S", "how often the RSS watchdog looks, seconds")
    )
    lock_retry_delay_s: int = field(
        default=5, metadata=_env("SQLCHECK_LOCK_RETRY_DELAY_S", "delay before a duplicate delivery checks again, seconds")
    )
    max_retries: int = field(default=5, metadata=_env("SQLCHECK_MAX_RETRIES", "retries of a task after a transient outage"))
    retry_base_delay_s: float = field(
        default=2.0, metadata=_env("SQLCHECK_RETRY_BASE_DELAY_S", "first retry delay; doubles each retry, with jitter, seconds")
    )
    retry_max_delay_s: float = field(default=60.0, metadata=_env("SQLCHECK_RETRY_MAX_DELAY_S", "longest retry delay, seconds"))
    reaper_interval_s: float = field(
        default=30.0, metadata=_env("SQLCHECK_REAPER_INTERVAL_S", "pause between two passes of `sqlcheckctl reap --loop`, seconds")
    )
    reaper_margin_s: int = field(
        default=60, metadata=_env("SQLCHECK_REAPER_MARGIN_S", "IN_PROGRESS past hard limit + this with no lock holder is re-sent, seconds")
    )
    reaper_lost_after_s: int = field(
        default=300, metadata=_env("SQLCHECK_REAPER_LOST_AFTER_S", "a PENDING task/job whose message is not queued this long is re-sent, seconds")
    )
    visibility_timeout_override_s: int = field(
        default=0, metadata=_env("SQLCHECK_VISIBILITY_TIMEOUT_S", "Redis visibility timeout; 0 = 2 x the longest hard limit + 60, seconds")
    )
    embedded_redis: str = field(
        default="auto",
        metadata=_env("SQLCHECK_EMBEDDED_REDIS", "auto, on or off: supervisord runs a loopback redis-server "
                      "(auto = only when none answers at CELERY_BROKER_URL and redis-server is installed)"),
    )
    metrics_port: int = field(
        default=0, metadata=_env("SQLCHECK_METRICS_PORT", "Prometheus endpoint port (a supervisord program); 0 = off")
    )
    metrics_bind: str = field(
        default="127.0.0.1", metadata=_env("SQLCHECK_METRICS_BIND", "address the Prometheus endpoint listens on")
    )
    rust_parser: str = field(
        default="on", metadata=_env("SQLCHECK_RUST_PARSER", "on or off: sqlfluff's Rust parser (sqlfluffrs, `use_rust_parser`); "
                                    "on falls back to the Python parser when sqlfluffrs is not installed")
    )
    result_cache_ttl_s: int = field(
        default=604_800, metadata=_env("SQLCHECK_RESULT_CACHE_TTL_S", "how long a cached lint result (by content hash) lives in Redis; 0 = cache off, seconds")
    )
    result_cache_max_entries: int = field(
        default=20_000, metadata=_env("SQLCHECK_RESULT_CACHE_MAX_ENTRIES", "most cached lint results kept; the oldest are evicted first")
    )
    log_level: str = field(default="INFO", metadata=_env("SQLCHECK_LOG_LEVEL", "log level for workers and the CLI"))
    log_format: str = field(default="text", metadata=_env("SQLCHECK_LOG_FORMAT", "text or json (one JSON object per line)"))

    # ---- derived values -------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'sqlcheck.db').resolve()}"

    @property
    def resolved_share_root(self) -> Path:
        return (self.share_root or self.home / "share").resolve()

    @property
    def node_name(self) -> str:
        return self.service_id or socket.gethostname()

    @property
    def analysis_concurrency(self) -> int:
        return self.worker_concurrency or os.cpu_count() or 1

    @property
    def lock_ttl_s(self) -> int:
        """A task lock outlives the hard limit, so it never expires under a live holder.

        It expires by the time the reaper looks (hard limit + SQLCHECK_REAPER_MARGIN_S), so a lock
        left by a SIGKILLed host does not hide its task from the reaper.
        """
        return self.hard_time_limit_s + max(5, self.reaper_margin_s)

    @property
    def lint_batch_time_limit_s(self) -> int:
        """The longest a lint batch message may run (its Celery hard limit): each file gets the
        soft limit, and one started just before the batch passed the soft limit may run to the
        hard limit. A warm stop must wait this long."""
        return self.soft_time_limit_s + self.hard_time_limit_s

    @property
    def use_rust_parser(self) -> bool:
        return self.rust_parser == "on"

    @property
    def dialects_to_warm(self) -> list[str]:
        """The default dialect, then SQLCHECK_WARM_DIALECTS, each once."""
        listed = [name.strip() for name in self.warm_dialects.split(",") if name.strip()]
        return list(dict.fromkeys([self.default_dialect, *listed]))

    @property
    def visibility_timeout_s(self) -> int:
        """Longer than any task may run, so Redis never redelivers a live task."""
        if self.visibility_timeout_override_s:
            return self.visibility_timeout_override_s
        return 2 * max(self.hard_time_limit_s, self.zip_hard_time_limit_s) + 60


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _convert(name: str, raw: Any) -> Any:
    """Turn a TOML or environment value into the field's type, or name the bad setting."""
    f = FIELDS[name]
    where = f"{f.metadata['env']} ({name})"
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if kind == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError  # not True as 1, not 1.5 as 1
            value = int(raw)
            if value < 0:
                raise ValueError
            return value
        if kind == "float":
            value = float(raw)
            if value <= 0:
                raise ValueError
            return value
        if kind.startswith("Path"):
            return Path(str(raw)).expanduser()
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {where}: expected a non-negative {kind}, got {raw!r}") from None


def _validate(s: Settings) -> Settings:
    if s.soft_time_limit_s >= s.hard_time_limit_s:
        raise ConfigError("setting SQLCHECK_SOFT_TIME_LIMIT_S must be below SQLCHECK_HARD_TIME_LIMIT_S")
    if s.zip_soft_time_limit_s >= s.zip_hard_time_limit_s:
        raise ConfigError("setting SQLCHECK_ZIP_SOFT_TIME_LIMIT_S must be below SQLCHECK_ZIP_HARD_TIME_LIMIT_S")
    for name in ("max_file_bytes", "max_zip_members", "max_uncompressed_bytes", "max_compression_ratio", "max_attempts",
                 "lint_batch_max_files", "child_max_rss_mb", "child_recycle_rss_mb", "child_max_messages"):
        if getattr(s, name) < 1:
            raise ConfigError(f"setting {FIELDS[name].metadata['env']} must be at least 1")
    if s.embedded_redis not in ("auto", "on", "off"):
        raise ConfigError("setting SQLCHECK_EMBEDDED_REDIS must be 'auto', 'on' or 'off'")
    if s.rust_parser not in ("on", "off"):
        raise ConfigError("setting SQLCHECK_RUST_PARSER must be 'on' or 'off'")
    if s.log_format not in ("text", "json"):
        raise ConfigError("setting SQLCHECK_LOG_FORMAT must be 'text' or 'json'")
    if not s.broker_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"setting CELERY_BROKER_URL must be a redis:// URL, got {s.broker_url!r}")
    try:
        urlsplit(s.broker_url).port  # noqa: B018 - raises on a port that is not a number in 0-65535
    except ValueError as exc:
        raise ConfigError(f"setting CELERY_BROKER_URL: {exc}") from None
    longest = max(s.lint_batch_time_limit_s, s.zip_hard_time_limit_s)
    if s.visibility_timeout_override_s and s.visibility_timeout_override_s <= longest:
        # Redis would hand a message that is still running to a second worker
        raise ConfigError(f"setting SQLCHECK_VISIBILITY_TIMEOUT_S must be above the longest a message may run "
                          f"({longest} s), or 0")
    if s.metrics_port > 65535:
        raise ConfigError("setting SQLCHECK_METRICS_PORT must be a TCP port (0-65535)")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError("setting SQLCHECK_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return s


def load_settings(config_file: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings: defaults, then the TOML file, then the environment."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_file = config_file or environ.get("SQLCHECK_CONFIG")
    if config_file:
        path = Path(config_file)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"setting SQLCHECK_CONFIG: cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"setting SQLCHECK_CONFIG: {path} is not valid TOML: {exc}") from None
        if "sqlcheck" in data:
            outside = sorted(k for k in data if k != "sqlcheck")
            if outside or not isinstance(data["sqlcheck"], dict):
                raise ConfigError(f"setting SQLCHECK_CONFIG: {path} has a [sqlcheck] table; put every setting in it"
                                  + (f" (outside it: {', '.join(outside)})" if outside else ""))
            data = data["sqlcheck"]
        for key, raw in data.items():
            if key not in FIELDS:
                raise ConfigError(f"setting {key!r} in {path} is unknown")
            values[key] = _convert(key, raw)
    for name, f in FIELDS.items():
        if f.metadata["env"] in environ and environ[f.metadata["env"]] != "":
            values[name] = _convert(name, environ[f.metadata["env"]])
    return _validate(Settings(**values))


def settings_as_env(s: Settings) -> dict[str, str]:
    """The environment that reproduces these settings in a child process (supervisord programs)."""
    env = {}
    for name, f in FIELDS.items():
        value = getattr(s, name)
        if name == "home":
            value = s.home.resolve()
        elif name == "database_url":
            value = s.resolved_database_url
        elif name == "share_root":
            value = s.resolved_share_root
        env[f.metadata["env"]] = str(value)
    return env


def settings_reference_markdown() -> str:
    """The README's settings table, generated so the docs cannot drift from the code."""
    defaults = Settings()
    rows = ["| environment variable | TOML key | default | meaning |", "|---|---|---|---|"]
    for name, f in FIELDS.items():
        value = getattr(defaults, name)
        shown = "" if value is None else str(value)
        rows.append(f"| `{f.metadata['env']}` | `{name}` | `{shown}` | {f.metadata['help']} |")
    return "\n".join(rows)
