"""Per-job configuration: the whitelist, the uploaded .sqlfluff parsed as data, precedence."""

import io
import zipfile

import pytest

from sqlcheck import job_config
from sqlcheck.errors import UserInputError
from sqlcheck.lint_engine import lint_sql
from sqlcheck.share import SharePaths
from tests.zipcraft import damage_member_data


def test_job_options_are_checked_against_the_whitelist():
    opts = job_config.parse_job_options(
        '{"rules": ["LT01", "CP01"], "max_line_length": "120", "keywords_capitalisation_policy": "Upper"}'
    )
    assert opts == {"rules": "LT01,CP01", "max_line_length": 120, "keywords_capitalisation_policy": "upper"}


@pytest.mark.parametrize("raw,fragment", [
    ('{"templater": "python"}', "not allowed"),
    ('{"library_path": "/tmp"}', "not allowed"),
    ('{"rules": "LT01; rm -rf /"}', "rule codes"),
    ('{"max_line_length": "wide"}', "whole number"),
    ('{"indent_unit": "emoji"}', "expected one of"),
    ('[1, 2]', "JSON object"),
    ('{nope', "not valid JSON"),
    ('{"rules": ' + "[" * 100_000 + "]" * 100_000 + "}", "not valid JSON"),  # deeper than the parser's stack
    ('{"rules": null}', "rule codes"),  # not the rule "None", which would silence every rule
    ('{"exclude_rules": true}', "rule codes"),
    ('{"rules": ["LT01", 7]}', "rule codes"),
])
def test_bad_job_options_are_refused(raw, fragment):
    with pytest.raises(UserInputError, match=fragment):
        job_config.parse_job_options(raw)


HOSTILE_SQLFLUFF = """
[sqlfluff]
dialect = postgres
templater = python
library_path = /tmp/evil
max_line_length = 100
exclude_rules = LT09
plugin = evil

[sqlfluff:templater:jinja]
library_path = ./lib
load_macros_from_path = ./macros

[sqlfluff:indentation]
tab_space_size = 2
indent_unit = tab

[sqlfluff:rules:capitalisation.keywords]
capitalisation_policy = lower

[tool:pytest]
addopts = -p evil
"""


def test_uploaded_sqlfluff_takes_only_whitelisted_keys():
    cfg = job_config.parse_uploaded_sqlfluff(HOSTILE_SQLFLUFF)
    assert cfg.dialect == "postgres"
    assert cfg.options == {
        "max_line_length": 100, "exclude_rules": "LT09", "tab_space_size": 2, "indent_unit": "tab",
        "keywords_capitalisation_policy": "lower",
    }
    ignored = {i["key"] for i in cfg.ignored}
    assert ignored == {
        "[sqlfluff] templater", "[sqlfluff] library_path", "[sqlfluff] plugin",
        "[sqlfluff:templater:jinja] library_path", "[sqlfluff:templater:jinja] load_macros_from_path",
        "[tool:pytest] addopts",
    }


def test_unparsable_sqlfluff_is_ignored_whole():
    cfg = job_config.parse_uploaded_sqlfluff("no section header\nkey = value\n")
    assert cfg.options == {} and cfg.ignored[0]["key"] == "*"


def test_only_the_root_sqlfluff_is_read(tmp_path):
    path = tmp_path / "u.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(".sqlfluff", "[sqlfluff]\nmax_line_length = 33\n")
        zf.writestr("sub/.sqlfluff", "[sqlfluff]\nmax_line_length = 44\n")
        zf.writestr("setup.cfg", "[sqlfluff]\nmax_line_length = 55\n")
    names = [".sqlfluff", "sub/.sqlfluff", "setup.cfg"]
    cfg = job_config.read_uploaded_config(path, names)
    assert cfg.options == {"max_line_length": 33}
    assert {i["file"] for i in cfg.ignored} == {"sub/.sqlfluff", "setup.cfg"}


def test_oversized_sqlfluff_is_ignored(tmp_path):
    path = tmp_path / "u.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(".sqlfluff", "[sqlfluff]\n" + "# pad\n" * 20_000)
    cfg = job_config.read_uploaded_config(path, [".sqlfluff"])
    assert cfg.options == {} and "larger than" in cfg.ignored[0]["reason"]


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_a_compressed_sqlfluff_bomb_is_refused_in_bounded_memory(tmp_path, method):
    import tracemalloc

    path = tmp_path / "u.zip"
    with zipfile.ZipFile(path, "w", method) as zf:
        zf.writestr(".sqlfluff", "[sqlfluff]\n" + "\n" * (64 << 20))
    tracemalloc.start()
    try:
        cfg = job_config.read_uploaded_config(path, [".sqlfluff"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert cfg.options == {} and "larger than" in cfg.ignored[0]["reason"]
    # the LZMA dictionary of zipfile's preset is 8 MiB; without a bound the whole 64 MiB at once
    assert peak < 12 * 1024 * 1024, f"{peak / 2**20:.0f} MiB to read a config of at most 64 KiB"


def test_damaged_sqlfluff_is_ignored_not_fatal(tmp_path):
    path = tmp_path / "u.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(".sqlfluff", "[sqlfluff]\ndialect = postgres\n" + "# comment line\n" * 200)
    path.write_bytes(damage_member_data(path.read_bytes(), ".sqlfluff", 2, 12))
    cfg = job_config.read_uploaded_config(path, [".sqlfluff"])
    assert cfg.dialect is None and cfg.ignored[0]["reason"].startswith("unreadable: ")


def test_stored_config_unreadable_for_another_reason_than_absence_is_raised(tmp_path):
    """An empty configuration only when there is none: a share error (here EISDIR; ESTALE, EIO
    in life) must reach the task's retry, not lint the file with the defaults."""
    share = SharePaths(tmp_path)
    assert job_config.load_uploaded(share, "job-without-config") == job_config.UploadedConfig()
    (share.job_dir("job-broken") / "uploaded_config.json").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        job_config.load_uploaded(share, "job-broken")


def test_job_options_win_over_the_upload_and_reach_sqlfluff():
    uploaded = job_config.parse_uploaded_sqlfluff(
        "[sqlfluff]\nmax_line_length = 10\n[sqlfluff:rules:capitalisation.keywords]\ncapitalisation_policy = lower\n"
    )
    options = job_config.effective_options({"max_line_length": 200}, uploaded)
    assert options == {"max_line_length": 200, "keywords_capitalisation_policy": "lower"}
    pairs = job_config.sqlfluff_options(options)
    hash(pairs)  # the Linter cache key
    report = lint_sql("SELECT a FROM t\n", "x.sql", "ansi", pairs)
    codes = {v["code"] for v in report.violations}
    assert "CP01" in codes and "LT05" not in codes
    short = lint_sql("select a from t where a = 1 and b = 2\n", "x.sql", "ansi", (("max_line_length", 10),))
    assert "LT05" in {v["code"] for v in short.violations}


def test_dialect_precedence():
    uploaded = job_config.UploadedConfig(dialect="postgres")
    assert job_config.effective_dialect(None, uploaded, "ansi") == "postgres"
    assert job_config.effective_dialect("mysql", uploaded, "ansi") == "mysql"
    assert job_config.effective_dialect(None, job_config.UploadedConfig(), "ansi") == "ansi"


def test_tab_space_size_reaches_the_indentation_section():
    sql = "SELECT\n  a\nFROM t\n"
    default = lint_sql(sql, "x.sql", "ansi", ())
    two = lint_sql(sql, "x.sql", "ansi", job_config.sqlfluff_options({"tab_space_size": 2}))
    assert "LT02" in {v["code"] for v in default.violations}
    assert "LT02" not in {v["code"] for v in two.violations}


def test_zip_helper_is_stdlib_only():
    # the uploaded config is read with zipfile + configparser, never through sqlfluff's loader
    src = io.open(job_config.__file__).read()
    assert "sqlfluff.core" not in src and "FluffConfig" not in src
