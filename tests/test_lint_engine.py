"""Lint engine: decoding uploaded bytes, and violations exactly as the sqlfluff CLI reports them."""

import codecs
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sqlcheck.errors import FileRejected, UserInputError
from sqlcheck.lint_engine import SQLFLUFF_VERSION, check_dialect, decode_sql, get_linter, lint_sql
from sqlcheck.states import FailureReason

SQLFLUFF = str(Path(sys.executable).parent / "sqlfluff")
TEXT = "-- 销售报表\nSELECT 名称, amount FROM sales WHERE region = '华东'\n"


@pytest.mark.parametrize(
    "data,encoding",
    [
        (TEXT.encode("utf-8"), "utf-8"),
        (codecs.BOM_UTF8 + TEXT.encode("utf-8"), "utf-8-sig"),
        (codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le"), "utf-16"),
        (codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be"), "utf-16"),
        (TEXT.encode("gb18030"), "gb18030"),
        (TEXT.encode("gbk"), "gb18030"),  # GBK is a subset of GB18030
        (b"select 1\n", "utf-8"),
    ],
)
def test_decode_sql(data, encoding):
    text, used = decode_sql(data)
    assert text == (TEXT if len(data) > 20 else "select 1\n")
    assert used == encoding
    assert not text.startswith("\ufeff")  # a BOM never reaches sqlfluff


@pytest.mark.parametrize(
    "data",
    [
        bytes(range(256)) * 4,
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64),
        "select 1".encode("utf-16-le") + bytes(8),  # NULs without a BOM
    ],
)
def test_binary_content_is_a_decode_error(data):
    with pytest.raises(FileRejected) as info:
        decode_sql(data)
    assert info.value.reason is FailureReason.DECODE_ERROR


def test_lint_sql_fields_equal_the_cli_json(tmp_path):
    sql = "select a,b from t\nwhere X=1\n  AND y = 2;\n"
    (tmp_path / "q.sql").write_text(sql)
    cli = subprocess.run([SQLFLUFF, "lint", "--dialect", "ansi", "--format", "json", "q.sql"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert cli.returncode in (0, 1), cli.stderr
    (expected,) = json.loads(cli.stdout)
    report = lint_sql(sql, "q.sql", "ansi")
    assert len(report.violations) >= 3
    canon = lambda vs: sorted(json.dumps(v, sort_keys=True) for v in vs)  # noqa: E731
    assert canon(report.violations) == canon(expected["violations"])
    assert report.violations == sorted(
        report.violations, key=lambda v: (v["start_line_no"], v["start_line_pos"], v["code"]))
    assert report.parse_errors == 0 and report.duration_s > 0


def test_parse_errors_are_counted_and_reported():
    report = lint_sql("SELEC 1 FROMM\n", "bad.sql", "ansi")
    assert report.parse_errors >= 1
    assert "PRS" in {v["code"] for v in report.violations}


def test_files_over_sqlfluff_default_size_limit_are_still_linted():
    sql = "-- " + "padding " * 3000 + "\nselect a,b from t\n"  # ~24 kB: the CLI would skip it by default
    assert len(sql) > 20_000
    report = lint_sql(sql, "big.sql", "ansi")
    assert {v["code"] for v in report.violations if v["start_line_no"] == 2} == {"LT01", "LT09"}


def test_config_files_beside_the_file_are_ignored(tmp_path):
    (tmp_path / ".sqlfluff").write_text("[sqlfluff]\nexclude_rules = all\nrules = none\n")
    (tmp_path / "setup.cfg").write_text("[sqlfluff]\nrules = none\n")
    report = lint_sql("select a,b from t\n", str(tmp_path / "x.sql"), "ansi")
    assert {v["code"] for v in report.violations} == {"LT01", "LT09"}


def test_linter_cached_per_dialect_and_options():
    assert get_linter("ansi") is get_linter("ansi")
    assert get_linter("postgres") is not get_linter("ansi")
    assert get_linter("ansi", (("rules", "LT01"),)) is not get_linter("ansi")


def test_inline_config_applies_to_its_own_file_only():
    """The warm Linter shares one configuration between files; an inline `-- sqlfluff:` line
    changes a copy, for that file alone."""
    long_line = "SELECT aaaaaaaaaa, bbbbbbbbbb FROM t\n"
    with_directive = lint_sql("-- sqlfluff:max_line_length:20\n" + long_line, "a.sql", "ansi")
    assert "LT05" in {v["code"] for v in with_directive.violations}
    after = lint_sql(long_line, "b.sql", "ansi")
    assert "LT05" not in {v["code"] for v in after.violations}


def test_rule_options_change_the_result():
    report = lint_sql("select a,b from t\n", "x.sql", "ansi", (("rules", "LT01"),))
    assert {v["code"] for v in report.violations} == {"LT01"}


def test_unknown_dialect_is_a_user_error():
    with pytest.raises(UserInputError, match="unknown SQL dialect 'no_such_dialect'"):
        check_dialect("no_such_dialect")
    check_dialect("postgres")


def test_version_is_the_pinned_major_minor():
    assert SQLFLUFF_VERSION.startswith("4.5")


def test_one_linter_per_configuration_whatever_the_call_form():
    warm = get_linter("ansi", (), True)
    assert get_linter("ansi") is warm and get_linter("ansi", rust_parser=True) is warm
    assert get_linter("ansi", [], 1) is warm
    assert get_linter("ansi", rust_parser=False) is not warm
