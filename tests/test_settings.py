"""Settings: defaults, then the TOML file, then the environment; a bad value names its setting."""

import re
from pathlib import Path

import pytest

from sqlcheck.errors import ConfigError
from sqlcheck.settings import FIELDS, Settings, load_settings, settings_as_env


def test_defaults_without_file_or_environment():
    s = load_settings(environ={})
    assert s == Settings()
    assert s.default_dialect == "ansi"
    assert s.broker_url == "redis://127.0.0.1:6379/0"
    assert s.resolved_database_url == f"sqlite:///{(Path('.sqlcheck') / 'sqlcheck.db').resolve()}"
    assert s.resolved_share_root == (Path(".sqlcheck") / "share").resolve()
    assert s.soft_time_limit_s < s.hard_time_limit_s
    assert s.visibility_timeout_s > s.hard_time_limit_s and s.visibility_timeout_s > s.zip_hard_time_limit_s
    assert s.lock_ttl_s > s.hard_time_limit_s


def test_embedded_defaults_follow_home(tmp_path):
    s = load_settings(environ={"SQLCHECK_HOME": str(tmp_path)})
    assert s.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'sqlcheck.db'}"
    assert s.resolved_share_root == tmp_path.resolve() / "share"


def test_toml_overrides_defaults_and_environment_overrides_toml(tmp_path):
    cfg = tmp_path / "sqlcheck.toml"
    cfg.write_text('[sqlcheck]\nmax_file_bytes = 1000\ndefault_dialect = "postgres"\nmax_zip_members = 7\n')
    s = load_settings(cfg, environ={"SQLCHECK_MAX_FILE_BYTES": "2000"})
    assert s.max_file_bytes == 2000  # environment wins over the file
    assert s.default_dialect == "postgres"  # file wins over the default
    assert s.max_zip_members == 7
    assert s.max_uncompressed_bytes == Settings().max_uncompressed_bytes  # untouched default


def test_config_file_found_through_environment(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('service_id = "node-7"\n')  # a top-level table works too
    assert load_settings(environ={"SQLCHECK_CONFIG": str(cfg)}).service_id == "node-7"


def test_seed_names_are_kept():
    env = {
        "DATABASE_URL": "postgresql+psycopg://u@h/db",
        "CELERY_BROKER_URL": "redis://r:6379/3",
        "NFS_SHARE_ROOT_PATH": "/srv/share",
        "SERVICE_ID": "vm-1",
        "CELERY_WORKER_CONCURRENCY": "3",
        "CELERY_WORKER_QUEUES": "sql_analysis",
    }
    s = load_settings(environ=env)
    assert (s.resolved_database_url, s.broker_url, s.node_name) == (env["DATABASE_URL"], env["CELERY_BROKER_URL"], "vm-1")
    assert s.resolved_share_root == Path("/srv/share")
    assert (s.analysis_concurrency, s.worker_queues) == (3, "sql_analysis")


def test_empty_environment_value_means_unset():
    assert load_settings(environ={"SQLCHECK_MAX_FILE_BYTES": ""}).max_file_bytes == Settings().max_file_bytes


@pytest.mark.parametrize(
    "env,named",
    [
        ({"SQLCHECK_MAX_FILE_BYTES": "big"}, "SQLCHECK_MAX_FILE_BYTES"),
        ({"SQLCHECK_MAX_ZIP_MEMBERS": "-1"}, "SQLCHECK_MAX_ZIP_MEMBERS"),
        ({"SQLCHECK_MAX_COMPRESSION_RATIO": "0"}, "SQLCHECK_MAX_COMPRESSION_RATIO"),
        ({"SQLCHECK_WATCHDOG_INTERVAL_S": "0"}, "SQLCHECK_WATCHDOG_INTERVAL_S"),
        ({"SQLCHECK_SOFT_TIME_LIMIT_S": "200", "SQLCHECK_HARD_TIME_LIMIT_S": "100"}, "SQLCHECK_SOFT_TIME_LIMIT_S"),
        ({"SQLCHECK_ZIP_SOFT_TIME_LIMIT_S": "400"}, "SQLCHECK_ZIP_SOFT_TIME_LIMIT_S"),
        ({"SQLCHECK_LOG_FORMAT": "xml"}, "SQLCHECK_LOG_FORMAT"),
        # 0 would recycle every idle child every watchdog tick, stop the analysis pool from
        # starting (billiard refuses maxtasksperchild=0), or silently turn the memory kill off
        ({"SQLCHECK_CHILD_RECYCLE_RSS_MB": "0"}, "SQLCHECK_CHILD_RECYCLE_RSS_MB"),
        ({"SQLCHECK_CHILD_MAX_MESSAGES": "0"}, "SQLCHECK_CHILD_MAX_MESSAGES"),
        ({"SQLCHECK_CHILD_MAX_RSS_MB": "0"}, "SQLCHECK_CHILD_MAX_RSS_MB"),
        ({"CELERY_BROKER_URL": "amqp://guest@localhost//"}, "CELERY_BROKER_URL"),
        # these passed, then every command and worker start died on a traceback
        ({"CELERY_BROKER_URL": "redis://127.0.0.1:abc/0"}, "CELERY_BROKER_URL"),
        ({"CELERY_BROKER_URL": "redis://127.0.0.1:70000/0"}, "CELERY_BROKER_URL"),
        ({"SQLCHECK_METRICS_PORT": "70000"}, "SQLCHECK_METRICS_PORT"),
        ({"SQLCHECK_LOG_LEVEL": "verbose"}, "SQLCHECK_LOG_LEVEL"),
        ({"SQLCHECK_VISIBILITY_TIMEOUT_S": "120"}, "SQLCHECK_VISIBILITY_TIMEOUT_S"),  # a batch may run 270 s
    ],
)
def test_bad_environment_value_fails_naming_the_setting(env, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(environ=env)


def test_bad_toml_value_names_the_setting(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_file_bytes = true\n")
    with pytest.raises(ConfigError, match="SQLCHECK_MAX_FILE_BYTES"):
        load_settings(cfg, environ={})


@pytest.mark.parametrize("text,named", [
    ("max_file_bytes = 1.5\n", "SQLCHECK_MAX_FILE_BYTES"),  # was truncated to 1
    ("metrics_port = 9100\n[sqlcheck]\nmax_file_bytes = 10\n", "outside it: metrics_port"),  # was dropped
    ("sqlcheck = 1\n", "has a [sqlcheck] table"),  # was an AttributeError
])
def test_toml_that_would_be_misread_is_refused(tmp_path, text, named):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_settings(cfg, environ={})
    cfg.write_text("[sqlcheck]\nmax_file_bytes = 2048.0\nlog_level = 'debug'\n")  # what is meant is taken
    assert load_settings(cfg, environ={}).max_file_bytes == 2048


def test_unknown_toml_key_and_unreadable_file_are_named(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_file_byte = 10\n")
    with pytest.raises(ConfigError, match="max_file_byte"):
        load_settings(cfg, environ={})
    cfg.write_text("max_file_bytes = \n")
    with pytest.raises(ConfigError, match="SQLCHECK_CONFIG"):
        load_settings(cfg, environ={})
    with pytest.raises(ConfigError, match="SQLCHECK_CONFIG"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_every_setting_has_an_env_name_and_help():
    envs = [f.metadata["env"] for f in FIELDS.values()]
    assert len(envs) == len(set(envs))
    for name, f in FIELDS.items():
        assert f.metadata["help"], name
        assert f.metadata["env"].startswith("SQLCHECK_") or f.metadata["env"] in {
            "DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "NFS_SHARE_ROOT_PATH", "SERVICE_ID",
            "CELERY_WORKER_CONCURRENCY", "CELERY_WORKER_QUEUES",
        }, name


def test_settings_as_env_round_trips(tmp_path):
    original = load_settings(environ={"SQLCHECK_HOME": str(tmp_path), "SQLCHECK_MAX_FILE_BYTES": "1234",
                                      "SQLCHECK_DEFAULT_DIALECT": "mysql"})
    again = load_settings(environ=settings_as_env(original))
    assert again.max_file_bytes == 1234 and again.default_dialect == "mysql"
    assert again.resolved_database_url == original.resolved_database_url
    assert again.resolved_share_root == original.resolved_share_root


def test_warm_dialects_come_after_the_default_each_once():
    s = load_settings(environ={"SQLCHECK_DEFAULT_DIALECT": "postgres", "SQLCHECK_WARM_DIALECTS": " mysql,postgres,, tsql "})
    assert s.dialects_to_warm == ["postgres", "mysql", "tsql"]
    assert load_settings(environ={}).dialects_to_warm == ["ansi"]
