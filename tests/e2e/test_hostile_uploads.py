"""Hostile and awkward uploads: one row per case, each with its expected outcome.

One PostgreSQL installation and one worker serve every row (module scope). Every
row also checks that nothing was written outside the job's own directory, that
no worker process died, and that the job ended within its deadline.

Decisions stated here (and in the README failure-modes section):
- more than SQLCHECK_MAX_ZIP_MEMBERS (20,000) entries: the job FAILS; exactly 20,000 is accepted
- nested ZIPs are not opened (skipped with a note); case-only twins are two files
- a member bigger than SQLCHECK_MAX_FILE_BYTES is one FAILURE too_large, not a failed job
- a member that inflates more than 200:1, or an archive past SQLCHECK_MAX_UNCOMPRESSED_BYTES, fails the job
"""

from __future__ import annotations

import io
import json
import random
import struct
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import _make_stack, _reset_pg, _reset_redis
from tests.helpers import make_zip, wait_until
from tests.zipcraft import (ENCRYPTED_FLAG, damage_member_data, set_flag_bits, zip_of_zeros, zip_with_raw_names,
                             zip_with_symlink)

JOBS: set[str] = set()
MARKER = Path(f"/tmp/sqlcheck-hostile-{uuid.uuid4().hex}")
TOTAL_LIMIT = 64 * 1024 * 1024


# ---- archive builders -------------------------------------------------------------------


def raw_zip_of_zeros(members: int, gib_each: int = 1) -> bytes:
    """`members` entries of `gib_each` GiB of zeros, sharing one deflate stream: GBs from a few MB.

    Built by hand (local headers, central directory, end record) so the test never holds
    or writes more than one compressed copy (~1 MB per GiB).
    """
    size = gib_each << 30
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    zero, parts, crc = bytes(1 << 20), [], 0
    for _ in range(size >> 20):
        parts.append(comp.compress(zero))
        crc = zlib.crc32(zero, crc)
    parts.append(comp.flush())
    data = b"".join(parts)
    out, central = io.BytesIO(), io.BytesIO()
    for i in range(members):
        name = f"bomb{i}.sql".encode()
        offset = out.tell()
        out.write(struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(data), size, len(name), 0))
        out.write(name + data)
        central.write(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(data), size,
                                  len(name), 0, 0, 0, 0, 0, offset) + name)
    cd = central.getvalue()
    out.write(cd + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, members, members, len(cd), out.tell(), 0))
    return out.getvalue()


def total_size_bomb() -> bytes:
    """300 members of 250 kB at a modest ratio (~40:1): each passes, together they pass 64 MiB."""
    rng = random.Random(7)
    block = bytes(rng.randrange(256) if i % 100 == 0 else 32 for i in range(250_000))
    return make_zip({f"part{i:03}.sql": block for i in range(300)})


def many_members(count: int, sql: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(count):
            zf.writestr(f"m/{i:05}.sql" if i < sql else f"m/{i:05}.txt", b"SELECT 1\n" if i < sql else b"x")
    return buf.getvalue()


def with_duplicates() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("dup.sql", "SELECT 1\n")
        with pytest.warns(UserWarning):
            zf.writestr("dup.sql", "SELECT 2\n")
        zf.writestr("Case.sql", "SELECT 1\n")
        zf.writestr("case.sql", "SELECT 1\n")
    return buf.getvalue()


def two_methods(members: dict[str, int]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, method in members.items():
            text = "".join(f"SELECT a{i % 97}, b FROM t{i % 89} WHERE x = {i};\n" for i in range(3000))
            zf.writestr(name, text, compress_type=method)  # ~100 kB: several reads in and out
    return buf.getvalue()


def stored(entries: dict[str, bytes]) -> bytes:
    return make_zip(entries, compression=zipfile.ZIP_STORED)


EVIL_MODULE = f"import pathlib\npathlib.Path({str(MARKER)!r}).write_text('pwned')\n"
EVIL_SQLFLUFF = f"""[sqlfluff]
templater = python
library_path = lib
max_line_length = 40
[sqlfluff:templater:jinja]
library_path = lib
load_macros_from_path = lib
apply_dbt_builtins = True
[sqlfluff:templater:python:context]
x = {{{{ __import__('os').system('touch {MARKER}') }}}}
"""
EVIL_CONFIG_ZIP = {
    ".sqlfluff": EVIL_SQLFLUFF,
    "setup.cfg": "[sqlfluff]\ntemplater = python\nlibrary_path = lib\n",
    "tox.ini": "[sqlfluff]\nlibrary_path = lib\n",
    "pyproject.toml": '[tool.sqlfluff.core]\ntemplater = "python"\n[tool.sqlfluff.templater.jinja]\nlibrary_path = "lib"\n',
    "lib/__init__.py": EVIL_MODULE,
    "lib/evil.py": EVIL_MODULE,
    "q.sql": "{{ evil.run() }}\nSELECT a_rather_long_column_name, another_long_column FROM t\n",
}


# ---- the table ----------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    build: Callable[[], bytes]
    job_status: str
    job_message: str | None = None  # fragment of the job's error_message
    tasks: dict[str, tuple[str, str | None]] | None = None  # member -> (status, failure_reason)
    extra: Callable[[dict, Path], None] | None = None  # further checks on (view, share)
    deadline_s: float = 60


def _summary(view, share):
    return json.loads((share / f"jobs/{view['id']}/summary.json").read_text())


def _check_sources_small(view, share):
    sources = share / f"jobs/{view['id']}/sources"
    written = sum(p.stat().st_size for p in sources.rglob("*") if p.is_file()) if sources.exists() else 0
    assert written < (1 << 20), written


def _check_encodings(view, share):
    assert {t["archive_member"]: t["encoding"] for t in view["tasks"]} == {
        "gb.sql": "gb18030", "u16.sql": "utf-16", "bom.sql": "utf-8-sig"}


def _check_skipped(reason, count=None):
    def check(view, share):
        skipped = [s for s in _summary(view, share)["skipped_members"] if s["reason"] == reason]
        assert skipped and (count is None or len(skipped) == count), skipped
    return check


def _check_config_ignored(view, share):
    assert not MARKER.exists(), "uploaded code ran"
    conf = _summary(view, share)["configuration"]
    assert conf["options"] == {"max_line_length": 40}
    ignored = {(i["file"], i["key"]) for i in conf["ignored"]}
    assert (".sqlfluff", "[sqlfluff] templater") in ignored
    assert (".sqlfluff", "[sqlfluff] library_path") in ignored
    assert (".sqlfluff", "[sqlfluff:templater:jinja] library_path") in ignored
    assert {"setup.cfg", "tox.ini", "pyproject.toml"} <= {i["file"] for i in conf["ignored"]}
    result = json.loads((share / view["tasks"][0]["result_file_path"]).read_text())
    codes = {v["code"] for v in result["violations"]}
    assert "LT05" in codes  # max_line_length = 40 from the upload was applied
    assert "TMP" in codes  # the jinja call failed inside sqlfluff's sandbox instead of importing lib/


def _check_parse_error(view, share):
    """sqlfluff's parser gives up on the depth with a parse error: a result, not a dead worker."""
    task = view["tasks"][0]
    assert task["status"] == "SUCCESS", task
    result = json.loads((share / task["result_file_path"]).read_text())
    assert "PRS" in {v["code"] for v in result["violations"]}


def damaged(method: int, victim: str) -> bytes:
    """a.sql and a .sqlfluff compressed with `method`, the data of `victim` damaged."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr(".sqlfluff", "[sqlfluff]\ndialect = postgres\n" + "# a comment line\n" * 200)
        zf.writestr("a.sql", "SELECT a, b FROM some_table WHERE x = 1;\n" * 200)
    return damage_member_data(buf.getvalue(), victim, 4, 20)


def _check_sqlfluff_unreadable(view, share):
    ignored = _summary(view, share)["configuration"]["ignored"]
    assert any(i["file"] == ".sqlfluff" and i["reason"].startswith("unreadable") for i in ignored), ignored


OK = ("SUCCESS", None)
ROWS = [
    Row("corrupt", lambda: b"PK\x03\x04" + bytes(range(256)) * 4, "FAILED", "not a valid ZIP"),
    Row("truncated", lambda: (z := stored({"a.sql": b"SELECT 1\n" * 500, "b.sql": b"SELECT 2\n"}))[: len(z) // 2],
        "FAILED", "not a valid ZIP"),
    Row("empty", lambda: b"PK\x05\x06" + bytes(18), "FAILED", "is empty"),
    Row("sql_less", lambda: make_zip({"readme.txt": "hi", "data.csv": "a,b"}), "FAILED", "contains no .sql files",
        extra=_check_skipped("not a .sql file", 2)),
    Row("zip_slip", lambda: make_zip({"../../evil.sql": "SELECT 1\n", "ok.sql": "SELECT 1\n"}), "PARTIAL_SUCCESS",
        tasks={"../../evil.sql": ("FAILURE", "unsafe_member"), "ok.sql": OK}),
    Row("absolute_and_drive", lambda: make_zip({"/tmp/abs.sql": "SELECT 1\n", "C:\\win.sql": "SELECT 1\n",
                                                 "D:/x.sql": "SELECT 1\n", "ok.sql": "SELECT 1\n"}),
        "PARTIAL_SUCCESS", tasks={"/tmp/abs.sql": ("FAILURE", "unsafe_member"),
                                  "C:\\win.sql": ("FAILURE", "unsafe_member"),
                                  "D:/x.sql": ("FAILURE", "unsafe_member"), "ok.sql": OK}),
    Row("symlink", lambda: zip_with_symlink("link.sql", "/etc/passwd", {"ok.sql": b"SELECT 1\n"}), "PARTIAL_SUCCESS",
        tasks={"link.sql": ("FAILURE", "unsafe_member"), "ok.sql": OK}),
    # 4 GiB from 4 MB: each member stops inflating at SQLCHECK_MAX_FILE_BYTES (256 kB), so no GB is ever written
    Row("gigabyte_bomb", lambda: raw_zip_of_zeros(4), "FAILED", "no file in the archive could be analysed",
        tasks={f"bomb{i}.sql": ("FAILURE", "too_large") for i in range(4)}, extra=_check_sources_small),
    # 200 kB of zeros (~1000:1) fits the file limit, so the ratio check refuses the archive
    Row("ratio_bomb", lambda: make_zip({"r.sql": bytes(200_000), "ok.sql": "SELECT 1\n"}), "FAILED", "zip bomb"),
    Row("total_size_bomb", total_size_bomb, "FAILED", "SQLCHECK_MAX_UNCOMPRESSED_BYTES"),
    Row("members_over_limit", lambda: many_members(20_001, 5), "FAILED", "more than 20000 (SQLCHECK_MAX_ZIP_MEMBERS)"),
    Row("members_at_limit", lambda: many_members(20_000, 5), "SUCCESS",
        tasks={f"m/{i:05}.sql": OK for i in range(5)}, extra=_check_skipped("not a .sql file", 19_995)),
    Row("encrypted", lambda: set_flag_bits(make_zip({"secret.sql": "SELECT 1\n", "ok.sql": "SELECT 1\n"}),
                                           "secret.sql", ENCRYPTED_FLAG),
        "PARTIAL_SUCCESS", tasks={"secret.sql": ("FAILURE", "encrypted"), "ok.sql": OK}),
    Row("gbk_names", lambda: zip_with_raw_names({"报表/查询.sql".encode("gbk"): b"SELECT 1\n"}), "SUCCESS",
        tasks={"报表/查询.sql": OK}),
    # the first dup.sql is linted, the second is listed as skipped; case-only twins are two files
    Row("duplicates_and_case_twins", with_duplicates, "SUCCESS",
        tasks={"dup.sql": OK, "Case.sql": OK, "case.sql": OK},
        extra=_check_skipped("duplicate_member: same path appears twice in the archive", 1)),
    Row("deep_nesting", lambda: make_zip({"d/" * 200 + "deep.sql": "SELECT 1\n"}), "SUCCESS",
        tasks={"d/" * 200 + "deep.sql": OK}),
    Row("macosx_forks", lambda: make_zip({"__MACOSX/._a.sql": bytes(range(256)), "._b.sql": b"\x00\x05",
                                          "a.sql": "SELECT 1\n"}), "SUCCESS", tasks={"a.sql": OK},
        extra=_check_skipped("macOS resource fork", 2)),
    Row("nested_zip", lambda: make_zip({"inner.zip": make_zip({"x.sql": "SELECT 1\n"}), "ok.sql": "SELECT 1\n"}),
        "SUCCESS", tasks={"ok.sql": OK}, extra=_check_skipped("not a .sql file", 1)),
    Row("binary_named_sql", lambda: make_zip({"bin.sql": bytes(range(256)) * 16, "ok.sql": "SELECT 1\n"}),
        "PARTIAL_SUCCESS", tasks={"bin.sql": ("FAILURE", "decode_error"), "ok.sql": OK}),
    Row("encodings", lambda: make_zip({"gb.sql": "SELECT '中文报表' AS 列\n".encode("gb18030"),
                                       "u16.sql": "SELECT '中文' AS x\n".encode("utf-16"),
                                       "bom.sql": b"\xef\xbb\xbfSELECT 1\n"}),
        "SUCCESS", tasks={"gb.sql": OK, "u16.sql": OK, "bom.sql": OK}, extra=_check_encodings),
    Row("five_megabytes", lambda: stored({"big.sql": b"SELECT 1;\n" * 500_000}), "FAILED",
        tasks={"big.sql": ("FAILURE", "too_large")}),
    Row("deep_recursion", lambda: make_zip({"deep.sql": "SELECT " + "(" * 5000 + "1" + ")" * 5000 + "\n"}),
        "SUCCESS", extra=_check_parse_error, deadline_s=200),
    Row("config_that_runs_code", lambda: make_zip(EVIL_CONFIG_ZIP), "SUCCESS", tasks={"q.sql": OK},
        extra=_check_config_ignored),
    # the share cannot hold such a name (ENAMETOOLONG used to fail the whole job)
    Row("name_too_long", lambda: make_zip({"n" * 300 + ".sql": "SELECT 1\n", "ok.sql": "SELECT 1\n"}),
        "PARTIAL_SUCCESS", tasks={"n" * 300 + ".sql": ("FAILURE", "unsafe_member"), "ok.sql": OK}),
    # PostgreSQL text refuses NUL: the rejected name is stored spelled out (it used to fail the job)
    Row("nul_in_name", lambda: zip_with_raw_names({b"evil\x00.sql": b"SELECT 1\n", b"fine.sql": b"SELECT 1\n"}),
        "PARTIAL_SUCCESS", tasks={"evil\\x00.sql": ("FAILURE", "unsafe_member"), "fine.sql": OK}),
    Row("corrupt_bzip2_member", lambda: damaged(zipfile.ZIP_BZIP2, "a.sql"), "FAILED", "corrupt or truncated"),
    # zipfile inflates bzip2/LZMA a whole read at a time: 256 MiB at once from a few hundred bytes
    Row("bzip2_bomb", lambda: zip_of_zeros({"ok.sql": 10, "bomb.sql": 256 << 20}, zipfile.ZIP_BZIP2), "FAILED",
        "zip bomb", extra=_check_sources_small),
    Row("lzma_and_bzip2_members", lambda: two_methods({"l.sql": zipfile.ZIP_LZMA, "b.sql": zipfile.ZIP_BZIP2}),
        "SUCCESS", tasks={"l.sql": OK, "b.sql": OK}),
    # zipfile cuts a name at its NUL: "" crashed the expansion, "a/" hid the member as a directory
    Row("nul_first_in_name", lambda: zip_with_raw_names({b"\x00.sql": b"SELECT 1\n", b"a/\x00.sql": b"SELECT 1\n",
                                                          b"fine.sql": b"SELECT 1\n"}),
        "PARTIAL_SUCCESS", tasks={"\\x00.sql": ("FAILURE", "unsafe_member"), "a/\\x00.sql": ("FAILURE", "unsafe_member"),
                                  "fine.sql": OK}),
    # a damaged .sqlfluff is ignored (listed in the summary), the files are linted with the defaults
    Row("damaged_sqlfluff", lambda: damaged(zipfile.ZIP_DEFLATED, ".sqlfluff"), "SUCCESS", tasks={"a.sql": OK},
        extra=_check_sqlfluff_unreadable),
]


# ---- the installation shared by every row -----------------------------------------------------


@pytest.fixture(scope="module")
def hostile_stack(tmp_path_factory, redis_url, pg_server_url):
    _reset_redis(redis_url)
    _reset_pg(pg_server_url)
    stack = _make_stack(tmp_path_factory.mktemp("hostile"), pg_server_url, redis_url,
                        SQLCHECK_MAX_UNCOMPRESSED_BYTES=str(TOTAL_LIMIT))
    worker = stack.start_worker(concurrency=2)
    yield stack, worker
    for w in stack.workers:
        w.stop()


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_hostile_upload(hostile_stack, row: Row):
    stack, worker = hostile_stack
    before = _files(stack.root)
    log_mark = len(worker.log())
    job_id = stack.submit(row.build())
    JOBS.add(job_id)
    view = stack.wait_job(job_id, row.deadline_s)
    wait_until(lambda: (stack.share / f"jobs/{job_id}/summary.json").exists(), 30, "summary.json")

    if row.job_status != "*":
        assert view["status"] == row.job_status, (view["status"], view["error_message"])
    if row.job_message:
        assert row.job_message in (view["error_message"] or ""), view["error_message"]
    if row.tasks is not None:
        got = {t["archive_member"]: (t["status"], t["failure_reason"]) for t in view["tasks"]}
        assert got == row.tasks
    assert all(t["status"] in ("SUCCESS", "FAILURE") for t in view["tasks"])
    if row.extra:
        row.extra(view, stack.share)

    # nothing written outside this job's directory (its upload and worker logs aside)
    new = _files(stack.root) - before
    allowed = tuple(f"share/jobs/{j}/" for j in JOBS) + ("share/uploads/", "upload-")
    outside = sorted(p for p in new if not p.startswith(allowed) and not p.endswith(".log"))
    assert outside == [], outside
    sources = stack.share / f"jobs/{job_id}/sources"
    if sources.exists():
        for p in sources.rglob("*"):
            assert not p.is_symlink() and p.resolve().is_relative_to(sources.resolve())
    assert not MARKER.exists()

    # no worker process died
    assert worker.proc.poll() is None, "the worker exited"
    assert "exited prematurely" not in worker.log()[log_mark:]


def test_job_options_and_the_uploaded_sqlfluff_apply(hostile_stack):
    """Job options (here from `sqlcheckctl submit -o`) win over the root .sqlfluff, which wins over defaults."""
    import subprocess

    from tests.helpers import SQLCHECKCTL

    stack, _worker = hostile_stack
    upload = stack.root / "configured.zip"
    upload.write_bytes(make_zip({
        ".sqlfluff": "[sqlfluff]\ndialect = postgres\nexclude_rules = LT09\nmax_line_length = 200\n"
                     "[sqlfluff:rules:capitalisation.keywords]\ncapitalisation_policy = upper\n",
        "q.sql": "select a::int, b from t where a = 1 and b = 2 and c = 3\n",
    }))
    out = subprocess.run([SQLCHECKCTL, "submit", str(upload), "-o", "max_line_length=30", "--json"],
                         env=stack.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job_id = json.loads(out.stdout)["job_id"]
    JOBS.add(job_id)
    view = stack.wait_job(job_id, 60)
    assert view["status"] == "SUCCESS"
    result = json.loads((stack.share / view["tasks"][0]["result_file_path"]).read_text())
    codes = {v["code"] for v in result["violations"]}
    assert result["dialect"] == "postgres"  # `::` parses: the upload's dialect, the job named none
    assert "LT05" in codes  # the job's max_line_length=30 beat the upload's 200
    assert "CP01" in codes  # keywords must be upper (from the upload)
    assert "LT09" not in codes  # excluded by the upload
    wait_until(lambda: (stack.share / f"jobs/{job_id}/summary.json").exists(), 30, "summary.json")
    conf = _summary(view, stack.share)["configuration"]
    assert conf["options"] == {"max_line_length": 30, "exclude_rules": "LT09", "keywords_capitalisation_policy": "upper"}
    assert conf["from_upload"]["dialect"] == "postgres" and conf["ignored"] == []
