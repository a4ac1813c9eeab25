"""The rendered supervisord configuration and systemd unit: read back by supervisor's own parser."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sqlcheck.errors import ConfigError
from sqlcheck.settings import load_settings, settings_as_env
from sqlcheck.supervisor_config import (
    STOP_MARGIN_S,
    RenderPlan,
    env_value,
    programs,
    render_all,
    render_supervisord_conf,
    render_systemd_unit,
    systemd_stop_timeout_s,
    wants_embedded_redis,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_TOML = ROOT / "etc" / "sqlcheck.sample.toml"
SAMPLE_BIN = Path("/opt/sqlcheck/.venv/bin")
REGENERATE = "sqlcheckctl -c etc/sqlcheck.sample.toml config render --out etc --bin-dir /opt/sqlcheck/.venv/bin"


def sample_plan() -> RenderPlan:
    return RenderPlan(load_settings(SAMPLE_TOML, environ={}), SAMPLE_BIN)


def parse_with_supervisor(text: str, tmp_path: Path):
    """supervisord's own option parser, as `supervisord -c` would read the file."""
    from supervisor.options import ServerOptions

    for line in text.splitlines():  # supervisord insists that `directory=` exists
        if line.startswith("directory="):
            home = Path(line.split("=", 1)[1].replace("%%", "%"))
            for d in (home, home / "logs", home / "run"):
                d.mkdir(parents=True, exist_ok=True)
    conf = tmp_path / "supervisord.conf"
    conf.write_text(text)
    opts = ServerOptions()
    opts.realize(args=["-c", str(conf)])
    return opts


@pytest.mark.parametrize("rel", ["supervisord/supervisord.conf", "systemd/sqlcheck.service"])
def test_checked_in_samples_equal_what_config_render_prints(rel):
    rendered = render_all(sample_plan())[rel]
    assert (ROOT / "etc" / rel).read_text() == rendered, f"etc/{rel} is stale: run `{REGENERATE}`"


def test_supervisor_reads_programs_limits_and_environment_back(tmp_path):
    env = {
        "SQLCHECK_HOME": str(tmp_path / "home"),
        "DATABASE_URL": "postgresql+psycopg://u:p%40ss,w#rd@db/x",  # %, comma and # survive
        "SERVICE_ID": "vm7",
        "CELERY_WORKER_CONCURRENCY": "3",
        "SQLCHECK_HARD_TIME_LIMIT_S": "40",
        "SQLCHECK_SOFT_TIME_LIMIT_S": "30",
    }
    settings = load_settings(environ=env)
    plan = RenderPlan(settings, Path("/venv/bin"))
    opts = parse_with_supervisor(render_supervisord_conf(plan), tmp_path)
    groups = {g.name: g for g in opts.process_group_configs}
    assert set(groups) == {"sqlcheck", "reaper"}  # reaper: its own group, outside the workers
    procs = {p.name: p for p in groups["sqlcheck"].process_configs}
    assert set(procs) == {"zip", "analysis"}
    analysis, zip_ = procs["analysis"], procs["zip"]
    assert analysis.command == ("/venv/bin/sqlcheckctl worker --queues sql_analysis --concurrency 3 "
                                "--name analysis@vm7")
    assert zip_.command.endswith("--queues zip_processing --concurrency 1 --name zip@vm7")
    for p in (analysis, zip_):
        assert p.stopsignal == 15 and p.stopasgroup is False and p.killasgroup is True
        assert p.autorestart.__name__ == "RestartUnconditionally" and p.redirect_stderr is True and p.startsecs > 0
        assert p.stdout_logfile == str(tmp_path / "home" / "logs" / f"{p.name}.log")
        assert p.stdout_logfile_maxbytes > 0 and p.stdout_logfile_backups > 0
        assert p.environment == settings_as_env(settings)  # exact round trip, quoting included
    assert analysis.stopwaitsecs > settings.soft_time_limit_s + settings.hard_time_limit_s  # a lint batch's limit
    assert zip_.stopwaitsecs > settings.zip_hard_time_limit_s
    assert opts.server_configs[0]["file"] == str(tmp_path / "home" / "run" / "supervisord.sock")
    assert opts.server_configs[0]["chmod"] == 0o700
    assert opts.pidfile == str(tmp_path / "home" / "run" / "supervisord.pid")


def test_every_non_obvious_key_carries_a_comment():
    text = render_supervisord_conf(sample_plan())
    lines = text.splitlines()
    for key in ("stopsignal", "stopasgroup", "killasgroup", "stopwaitsecs", "startsecs", "chmod", "environment"):
        for i, line in enumerate(lines):
            if line.startswith(f"{key}="):
                assert lines[i - 1].startswith("; "), f"{key} has no comment above it"


def test_embedded_redis_program_is_loopback_and_append_only(tmp_path):
    settings = load_settings(environ={"SQLCHECK_HOME": str(tmp_path / "h")})
    plan = RenderPlan(settings, Path("/venv/bin"), redis_server=Path("/usr/bin/redis-server"))
    opts = parse_with_supervisor(render_supervisord_conf(plan), tmp_path)
    groups = {g.name: g for g in opts.process_group_configs}
    redis = groups["redis"].process_configs[0]
    assert "--bind 127.0.0.1" in redis.command and "--appendonly yes" in redis.command
    assert redis.priority < groups["sqlcheck"].process_configs[0].priority  # starts first, stops last
    assert [p.name for p in groups["sqlcheck"].process_configs] == ["zip", "analysis"]  # not in the worker group


@pytest.mark.parametrize("mode,reachable,binary,url,expected", [
    ("auto", False, True, "redis://127.0.0.1:6379/0", True),
    ("auto", True, True, "redis://127.0.0.1:6379/0", False),
    ("auto", False, False, "redis://127.0.0.1:6379/0", False),
    ("auto", False, True, "redis://redis.internal:6379/0", False),
    ("off", False, True, "redis://127.0.0.1:6379/0", False),
    ("on", True, True, "redis://localhost:6380/0", True),
])
def test_when_the_local_redis_program_is_added(mode, reachable, binary, url, expected):
    settings = load_settings(environ={"SQLCHECK_EMBEDDED_REDIS": mode, "CELERY_BROKER_URL": url})
    binary_path = Path("/usr/bin/redis-server") if binary else None
    assert wants_embedded_redis(settings, reachable, binary_path) is expected


def test_embedded_redis_on_without_a_binary_names_the_setting():
    settings = load_settings(environ={"SQLCHECK_EMBEDDED_REDIS": "on"})
    with pytest.raises(ConfigError, match="SQLCHECK_EMBEDDED_REDIS"):
        wants_embedded_redis(settings, False, None)


@pytest.mark.parametrize("value", ['a"b\'c', "line\nbreak", "x ;comment", "x #comment", 'secret"', "'secret"])
def test_values_supervisor_cannot_carry_are_refused_with_the_setting_name(value):
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        env_value("DATABASE_URL", value)


def test_systemd_waits_longer_than_supervisord_stops():
    plan = sample_plan()
    unit = render_all(plan)["systemd/sqlcheck.service"]
    timeout = systemd_stop_timeout_s(plan)
    assert f"TimeoutStopSec={timeout}" in unit
    # both workers stop in parallel (one group): systemd must outwait the slower one, plus a margin
    assert timeout > max(plan.settings.zip_hard_time_limit_s, plan.settings.hard_time_limit_s) + STOP_MARGIN_S
    assert "Type=simple" in unit and "KillSignal=SIGTERM" in unit and "Restart=on-failure" in unit
    assert "KillMode=mixed" in unit  # TERM to supervisord only, never to the pool children
    assert f"ExecStart={SAMPLE_BIN}/supervisord -n -c /var/lib/sqlcheck/supervisord/supervisord.conf" in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    """The checked-in unit, with its /opt/sqlcheck/.venv paths pointed at this venv (verify needs
    ExecStart binaries that exist); on a host installed at /opt/sqlcheck it verifies unchanged."""
    import sys

    venv_bin = Path(sys.executable).parent
    text = (ROOT / "etc" / "systemd" / "sqlcheck.service").read_text().replace(str(SAMPLE_BIN), str(venv_bin))
    unit = tmp_path / "sqlcheck.service"
    unit.write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if "sqlcheck.service" in line]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


def test_a_home_and_a_venv_with_a_space_and_a_percent_sign(tmp_path):
    """supervisord %-expands its path values and systemd its Exec lines (and $NAME there): a
    literal % or $ must be doubled, and a space quoted in the unit (it used to split the command)."""
    home, bin_dir = tmp_path / "home 100%$x", tmp_path / "my $venv" / "bin"  # systemd expands $NAME in arguments
    plan = RenderPlan(load_settings(environ={"SQLCHECK_HOME": str(home)}), bin_dir)
    opts = parse_with_supervisor(render_supervisord_conf(plan), tmp_path)
    assert opts.pidfile == str(home.resolve() / "run" / "supervisord.pid")
    assert opts.server_configs[0]["file"] == str(home.resolve() / "run" / "supervisord.sock")
    logs = {p.name: p.stdout_logfile for g in opts.process_group_configs for p in g.process_configs}
    assert logs["analysis"] == str(home.resolve() / "logs" / "analysis.log")

    unit = render_systemd_unit(plan)
    conf = str(home.resolve() / "supervisord" / "supervisord.conf").replace("%", "%%").replace("$", "$$")
    assert f'ExecStart="{bin_dir}/supervisord" -n -c "{conf}"' in unit.splitlines()
    analyze = shutil.which("systemd-analyze")
    if analyze:  # systemd's own reading of the unit, with the programs in place
        bin_dir.mkdir(parents=True)
        for name in ("sqlcheckctl", "supervisord"):
            (bin_dir / name).write_text("#!/bin/sh\n")
            (bin_dir / name).chmod(0o755)
        (tmp_path / "sqlcheck.service").write_text(unit)
        verify = subprocess.run([analyze, "verify", str(tmp_path / "sqlcheck.service")], capture_output=True, text=True)
        assert "not executable" not in verify.stderr and "Invalid" not in verify.stderr, verify.stderr


def test_rendered_files_are_private_and_a_planted_link_is_replaced_not_followed(tmp_path):
    """`config render --out DIR` writes the environment lines (a database password) too: 0600,
    and DIR may be a shared place such as /tmp, where another user can plant links."""
    from sqlcheck.control import write_config

    out, victim = tmp_path / "out", tmp_path / "victim"
    victim.write_text("keep me")
    (out / "supervisord").mkdir(parents=True)
    (out / "supervisord" / "supervisord.conf").symlink_to(victim)
    (out / "supervisord" / ".supervisord.conf.tmp").symlink_to(victim)  # the old fixed temporary name
    written = write_config(sample_plan(), out)
    assert sorted(p.relative_to(out).as_posix() for p in written) == sorted(render_all(sample_plan()))
    assert all(not p.is_symlink() and p.stat().st_mode & 0o777 == 0o600 for p in written)
    assert victim.read_text() == "keep me"


def test_config_render_into_a_fresh_home_gives_a_file_supervisord_starts_from(tmp_path):
    """systemd's first start runs `config render` then `supervisord -n`: nothing else made the
    folders supervisord's log, socket and pid file live in, and supervisord refused to start."""
    from supervisor.options import ServerOptions

    from sqlcheck.control import write_config

    settings = load_settings(environ={"SQLCHECK_HOME": str(tmp_path / "fresh")})
    (conf,) = [p for p in write_config(RenderPlan(settings, Path("/venv/bin"))) if p.name == "supervisord.conf"]
    opts = ServerOptions()
    opts.realize(args=["-c", str(conf)])  # exits (SystemExit) naming a missing folder
    assert Path(opts.logfile).parent.is_dir() and Path(opts.pidfile).parent.is_dir()
    assert (tmp_path / "fresh" / "run").stat().st_mode & 0o777 == 0o700


def test_reload_waits_as_long_as_the_running_programs_stop_not_the_new_ones(tmp_path):
    """Lowering the time limits and reloading: supervisord stops the running programs with the
    stop wait they were started with, so reload must wait that long, not the new, shorter one."""
    from sqlcheck.control import _longest_stop_wait_in, write_config

    home = tmp_path / "home"
    old = RenderPlan(load_settings(environ={"SQLCHECK_HOME": str(home)}), Path("/venv/bin"))
    write_config(old)
    longest_old = max(spec.stopwaitsecs for spec in programs(old))
    assert _longest_stop_wait_in(old.paths.conf) == longest_old > 0
    assert _longest_stop_wait_in(tmp_path / "missing.conf") == 0


def test_a_default_stop_turns_cold_before_supervisord_kills_and_after_every_message_ended():
    """stopwaitsecs = the longest a message may run + STOP_MARGIN_S: `stop` turns cold (SIGQUIT,
    the messages in flight back to Redis at once) inside that margin, before supervisord's SIGKILL."""
    from sqlcheck.control import COLD_BEFORE_KILL_S

    assert 0 < COLD_BEFORE_KILL_S < STOP_MARGIN_S


def test_the_unit_sets_the_umask_supervisord_cannot_under_systemd():
    assert "\nUMask=0027\n" in render_all(sample_plan())["systemd/sqlcheck.service"]


def test_health_never_prints_the_broker_password(tmp_path):
    from sqlcheck.control import health

    settings = load_settings(environ={"SQLCHECK_HOME": str(tmp_path / "home"),
                                      "NFS_SHARE_ROOT_PATH": str(tmp_path / "share"),
                                      "CELERY_BROKER_URL": "redis://:s3cret@127.0.0.1:1/0"})
    checks = health(settings)
    assert checks["broker"] == {"ok": False, "detail": "no answer at redis://:***@127.0.0.1:1/0"}
    assert "s3cret" not in repr(checks)
