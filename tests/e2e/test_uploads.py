"""What users really upload: odd names, odd encodings, hostile and broken archives.

Each test runs real `sqlcheckctl worker` processes and checks the rows, the files on the share
and summary.json: on SQLite and PostgreSQL (stack) where the database stores what is checked,
on PostgreSQL only (pg_stack) where the outcome does not depend on the database.
"""

from __future__ import annotations

import codecs
import io
import json
import random
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from tests.helpers import make_zip
from tests.zipcraft import zip_of_zeros, zip_with_raw_names, zip_with_symlink

SQL_WITH_CHINESE = "-- 月度销售汇总\nselect name,sum(amount) as total from sales\nwhere region = '华东' group by name\n"


def by_member(view: dict) -> dict[str, dict]:
    return {t["archive_member"]: t for t in view["tasks"]}


def summary(stack, job_id: str) -> dict:
    return json.loads((stack.share / f"jobs/{job_id}/summary.json").read_text("utf-8"))


def result(stack, task: dict) -> dict:
    return json.loads((stack.share / task["result_file_path"]).read_text("utf-8"))


def triples(violations: list[dict]) -> set[tuple]:
    return {(v["code"], v["start_line_no"], v["start_line_pos"]) for v in violations}


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


# ---- names -----------------------------------------------------------------------------


def test_same_basename_in_two_folders_are_two_tasks(stack):
    stack.start_worker()
    job_id = stack.submit(make_zip({"a/x.sql": "select 1\n", "b/x.sql": "select a,b from t\n", "x.sql": "SELECT 2\n"}))
    view = stack.wait_job(job_id, 60)
    assert view["status"] == "SUCCESS" and view["total_tasks"] == 3
    tasks = by_member(view)
    assert set(tasks) == {"a/x.sql", "b/x.sql", "x.sql"}
    for member, t in tasks.items():
        assert t["source_file_path"] == f"jobs/{job_id}/sources/{member}"
        assert result(stack, t)["archive_member"] == member
    assert (stack.share / tasks["b/x.sql"]["source_file_path"]).read_text() == "select a,b from t\n"
    assert len({t["result_file_path"] for t in tasks.values()}) == 3
    assert (tasks["a/x.sql"]["violation_count"], tasks["b/x.sql"]["violation_count"]) == (0, 2)


def test_gbk_member_names_from_chinese_windows(stack):
    names = ["报表/月度汇总.sql", "中文查询.sql", "plain/ascii.sql"]
    zip_bytes = zip_with_raw_names({n.encode("gbk"): b"select 1\n" for n in names})
    stack.start_worker()
    job_id = stack.submit(zip_bytes)
    view = stack.wait_job(job_id, 60)
    assert view["status"] == "SUCCESS"
    tasks = by_member(view)
    assert set(tasks) == set(names)
    for name in names:
        assert (stack.share / f"jobs/{job_id}/sources/{name}").read_bytes() == b"select 1\n"
        assert result(stack, tasks[name])["archive_member"] == name
    assert set(summary(stack, job_id)["violations_by_file"]) == set(names)


# ---- contents ------------------------------------------------------------------------------


def test_content_encodings_are_decoded_and_recorded(stack):
    files = {
        "utf8.sql": SQL_WITH_CHINESE.encode("utf-8"),
        "utf8_bom.sql": codecs.BOM_UTF8 + SQL_WITH_CHINESE.encode("utf-8"),
        "utf16le.sql": codecs.BOM_UTF16_LE + SQL_WITH_CHINESE.encode("utf-16-le"),
        "utf16be.sql": codecs.BOM_UTF16_BE + SQL_WITH_CHINESE.encode("utf-16-be"),
        "gb18030.sql": SQL_WITH_CHINESE.encode("gb18030"),
        "binary.sql": random.Random(1).randbytes(3000),
    }
    expected_encoding = {"utf8.sql": "utf-8", "utf8_bom.sql": "utf-8-sig", "utf16le.sql": "utf-16",
                         "utf16be.sql": "utf-16", "gb18030.sql": "gb18030"}
    stack.start_worker()
    job_id = stack.submit(make_zip(files))
    view = stack.wait_job(job_id, 60)
    tasks = by_member(view)
    assert view["status"] == "PARTIAL_SUCCESS"
    reference = triples(result(stack, tasks["utf8.sql"])["violations"])
    assert {"LT09", "LT01"} <= {code for code, _, _ in reference}
    for member, encoding in expected_encoding.items():
        t = tasks[member]
        assert (t["status"], t["encoding"]) == ("SUCCESS", encoding), member
        doc = result(stack, t)
        assert doc["encoding"] == encoding
        assert triples(doc["violations"]) == reference, member  # same text, same findings
    assert (tasks["binary.sql"]["status"], tasks["binary.sql"]["failure_reason"]) == ("FAILURE", "decode_error")
    assert tasks["binary.sql"]["result_file_path"] is None
    assert summary(stack, job_id)["failures_by_reason"] == {"decode_error": 1}


def test_oversize_file_fails_too_large_never_clean(stack):
    rng = random.Random(7)
    # realistic, poorly compressible SQL just over the default 256 KiB limit (no ratio trigger)
    big = "".join(f"INSERT INTO t VALUES ({rng.randrange(10**9)}, '{rng.getrandbits(64):x}');\n" for _ in range(7500))
    assert len(big) > 262_144
    stack.start_worker()
    job_id = stack.submit(make_zip({"big.sql": big, "small.sql": "SELECT 1\n"}))
    view = stack.wait_job(job_id, 60)
    t = by_member(view)["big.sql"]
    assert (t["status"], t["failure_reason"]) == ("FAILURE", "too_large")
    assert t["violation_count"] is None and t["result_file_path"] is None
    assert "SQLCHECK_MAX_FILE_BYTES" in t["error_message"]
    assert not (stack.share / f"jobs/{job_id}/sources/big.sql").exists()
    assert view["status"] == "PARTIAL_SUCCESS" and view["failed_tasks"] == 1
    s = summary(stack, job_id)
    assert s["failures_by_reason"] == {"too_large": 1} and "big.sql" not in s["violations_by_file"]


# ---- hostile archives ---------------------------------------------------------------------------


def test_unsafe_members_fail_and_nothing_is_written_outside_the_job(pg_stack, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    slip_near = "../../../../outside/slip.sql"  # sources/<job>/jobs/share/ -> tmp_path/outside
    slip_deep = "../" * 12 + "tmp/slip-deep.sql"
    absolute = str(outside / "abs.sql")
    buf = io.BytesIO(zip_with_symlink("link.sql", "/etc/passwd"))
    with zipfile.ZipFile(buf, "a") as zf:
        for name in (slip_near, slip_deep, absolute, "C:\\Windows\\evil.sql"):
            zf.writestr(zipfile.ZipInfo(name), "DROP TABLE users;\n")
        zf.writestr("ok.sql", "SELECT 1\n")
    Path("/tmp/slip-deep.sql").unlink(missing_ok=True)
    pg_stack.start_worker()
    before = tree(tmp_path)
    job_id = pg_stack.submit(buf.getvalue())
    view = pg_stack.wait_job(job_id, 60)
    tasks = by_member(view)
    assert view["status"] == "PARTIAL_SUCCESS"
    for member in ("link.sql", slip_near, slip_deep, absolute, "C:\\Windows\\evil.sql"):
        t = tasks[member]
        assert (t["status"], t["failure_reason"], t["source_file_path"]) == ("FAILURE", "unsafe_member", None), member
    assert tasks["ok.sql"]["status"] == "SUCCESS"
    assert list(outside.iterdir()) == []
    assert not Path("/tmp/slip-deep.sql").exists()  # where slip_deep would land from any depth
    new = tree(tmp_path) - before
    job_prefix = f"share/jobs/{job_id}/"
    stray = [p for p in new if not p.startswith((job_prefix, "share/uploads/", "home/")) and not p.endswith(".log")
             and not p.startswith("upload-")]
    assert stray == []
    assert not any(p.is_symlink() for p in (pg_stack.share / "jobs" / job_id).rglob("*"))
    assert tree(pg_stack.share / f"jobs/{job_id}/sources") == {"ok.sql"}


def test_zip_bomb_refused_quickly_without_writing_inflated_bytes(pg_stack):
    """200 MB of zeros in a 200 kB member: refused by the ratio check after ~40 MB inflated in memory."""
    bomb = zip_of_zeros({"a.sql": 100, "bomb.sql": 200 * 1024 * 1024})
    assert len(bomb) < 1_000_000
    pg_stack.start_worker(extra_env={"SQLCHECK_MAX_FILE_BYTES": str(512 * 1024 * 1024)})  # only the ratio can stop it
    started = time.monotonic()
    job_id = pg_stack.submit(bomb)
    view = pg_stack.wait_job(job_id, 60)
    assert time.monotonic() - started < 30
    assert view["status"] == "FAILED" and "zip bomb" in view["error_message"]
    assert view["tasks"] == []
    written = sum(p.stat().st_size for p in (pg_stack.share / "jobs").rglob("*") if p.is_file())
    assert written < 1_000_000
    assert summary(pg_stack, job_id)["error_message"] == view["error_message"]


def test_huge_member_with_default_limits_is_too_large_not_inflated(pg_stack):
    pg_stack.start_worker()
    job_id = pg_stack.submit(zip_of_zeros({"ok.sql": 0, "huge.sql": 200 * 1024 * 1024}))
    view = pg_stack.wait_job(job_id, 60)
    written = sum(p.stat().st_size for p in (pg_stack.share / "jobs").rglob("*") if p.is_file())
    assert written < 1_000_000
    # the per-file limit (256 KiB) is reached long before the ratio limit (200 x 200 kB)
    huge, ok = by_member(view)["huge.sql"], by_member(view)["ok.sql"]
    assert (huge["status"], huge["failure_reason"], huge["result_file_path"]) == ("FAILURE", "too_large", None)
    assert (ok["status"], ok["violation_count"]) == ("SUCCESS", 0)
    assert view["status"] == "PARTIAL_SUCCESS"


UNUSABLE = {
    "corrupt": (b"PK\x03\x04 this is not really a zip" * 50, "not a valid ZIP"),
    "truncated": (None, "not a valid ZIP"),
    "empty": (b"PK\x05\x06" + bytes(18), "empty"),
    "no_sql": (make_zip({"README.md": "# hello", "data/rows.csv": "a,b\n1,2\n", "img.png": b"\x89PNG"}),
               "contains no .sql files"),
}


def test_corrupt_truncated_empty_and_sql_less_archives_fail_the_job(stack):
    whole = make_zip({f"q{i}.sql": f"select {i} from t;\n" * 300 for i in range(5)})
    stack.start_worker()
    jobs = {}
    for kind, (content, _) in UNUSABLE.items():
        jobs[kind] = stack.submit(content if content is not None else whole[: len(whole) // 2])
    for kind, job_id in jobs.items():
        view = stack.wait_job(job_id, 60)
        fragment = UNUSABLE[kind][1]
        assert view["status"] == "FAILED", kind
        assert fragment in view["error_message"], (kind, view["error_message"])
        assert view["tasks"] == [] and view["total_tasks"] == 0
        s = summary(stack, job_id)
        assert (s["status"], s["error_message"]) == ("FAILED", view["error_message"])
        assert not (stack.share / f"jobs/{job_id}/sources").exists()


# ---- an uploaded config that tries to run Python ----------------------------------------------

LIB_CODE = "import pathlib\npathlib.Path({marker!r}).write_text(__name__)\n"

JINJA_LIBRARY_CONFIG = """
[sqlfluff]
templater = jinja

[sqlfluff:templater:jinja]
library_path = lib
load_macros_from_path = macros
apply_dbt_builtins = True
"""

PYTHON_TEMPLATER_CONFIG = "[sqlfluff]\ntemplater = python\n\n[sqlfluff:templater:python:context]\nname = injected\n"

JINJA_SQL = {
    "uses_lib.sql": "select {{ evil.value }} as v, {{ lib.boom() }} from t\n",
    "sub/plain.sql": "select a,b from t where x=1\n",
    "macros/boom.sql": "{% macro boom() %}1{% endmacro %}\n",  # a macro file is also just SQL to lint
}
PYTHON_SQL = {"query.sql": "SELECT a,b FROM {name}\n"}


def jinja_library_upload(marker_dir: Path) -> dict[str, str]:
    """Were its config read, linting uses_lib.sql would import lib/ (creating the markers).

    Checked by hand with the sqlfluff CLI, which does discover config: in this tree it
    creates lib-init-imported and lib-evil-imported.
    """
    return {
        ".sqlfluff": JINJA_LIBRARY_CONFIG,
        "setup.cfg": JINJA_LIBRARY_CONFIG,
        "lib/__init__.py": LIB_CODE.format(marker=str(marker_dir / "lib-init-imported")),
        "lib/evil.py": LIB_CODE.format(marker=str(marker_dir / "lib-evil-imported")),
        "evil.py": LIB_CODE.format(marker=str(marker_dir / "evil-imported")),
        ".sqlfluffignore": "macros/\n",
        **JINJA_SQL,
    }


def python_templater_upload() -> dict[str, str]:
    """Were its config read, query.sql would render as `FROM injected` (no parse error)."""
    return {
        ".sqlfluff": PYTHON_TEMPLATER_CONFIG,
        "tox.ini": PYTHON_TEMPLATER_CONFIG,
        "pyproject.toml": '[tool.sqlfluff.core]\ntemplater = "python"\n',
        **PYTHON_SQL,
    }


def test_uploaded_sqlfluff_cannot_run_python(pg_stack, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    jinja_files = jinja_library_upload(markers)
    # Also planted where config discovery would look (share root, jobs dir) if it were on.
    for where in (pg_stack.share, pg_stack.share / "jobs"):
        for name, content in jinja_files.items():
            if not name.endswith(".sql"):
                (where / name).parent.mkdir(parents=True, exist_ok=True)
                (where / name).write_text(content)
    pg_stack.start_worker()
    jobs = {"jinja": (pg_stack.submit(make_zip(jinja_files)), JINJA_SQL),
            "python": (pg_stack.submit(make_zip(python_templater_upload())), PYTHON_SQL)}
    for kind, (job_id, sql_files) in jobs.items():
        view = pg_stack.wait_job(job_id, 60)
        assert list(markers.iterdir()) == [], "uploaded Python was imported"
        assert view["status"] == "SUCCESS" and view["total_tasks"] == len(sql_files), kind
        # the reference: the sqlfluff CLI, default settings, on a clean copy of the SQL files only
        clean = tmp_path / f"clean-{kind}"
        for name, content in sql_files.items():
            (clean / name).parent.mkdir(parents=True, exist_ok=True)
            (clean / name).write_text(content)
        expected = cli_lint(clean, "ansi")
        canon = lambda vs: sorted(json.dumps(v, sort_keys=True) for v in vs)  # noqa: E731
        for member, t in by_member(view).items():
            assert canon(result(pg_stack, t)["violations"]) == canon(expected[member]), (kind, member)
    assert "PRS" in {v["code"] for v in expected["query.sql"]}  # `{name}` was not rendered by the python templater
    assert list(markers.iterdir()) == []


def cli_lint(root: Path, dialect: str) -> dict[str, list[dict]]:
    """`sqlfluff lint --format json` run in ``root``; violations by relative path."""
    sqlfluff = str(Path(sys.executable).parent / "sqlfluff")
    out = subprocess.run([sqlfluff, "lint", "--dialect", dialect, "--format", "json", "--processes", "2", "."],
                         cwd=root, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                                                   "HOME": str(root)})
    assert out.returncode in (0, 1), out.stderr[-2000:]
    return {str(Path(f["filepath"])).removeprefix("./"): f["violations"] for f in json.loads(out.stdout)}
