"""Fidelity: for every file, our findings equal those of the sqlfluff CLI with default settings.

For each file the set of (code, start_line_no, start_line_pos) in our result file must equal
what `sqlfluff lint --dialect D --format json --processes 2` reports for the same bytes,
run from a clean temporary directory (no config files anywhere above it, HOME pointing there).

Files of 20,000 bytes or more are left out of the comparison: the CLI skips them by default
(`large_file_skip_byte_limit`), while sqlcheck lints them (its own limit is
SQLCHECK_MAX_FILE_BYTES), so the two cannot be compared on those files.

(a) sqlfluff's dialect fixtures in ../shared/corpus (skipped when absent): every file under the
    size cap of ansi, postgres and mysql (~590 files), one job per dialect.
(b) our own small corpus in tests/corpus/<dialect>/ (always runs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import make_zip

REPO = Path(__file__).resolve().parents[2]
SHARED_CORPUS = REPO.parent / "shared" / "corpus" / "sqlfluff-dialect-fixtures"
OWN_CORPUS = REPO / "tests" / "corpus"
SQLFLUFF = str(Path(sys.executable).parent / "sqlfluff")
CLI_SIZE_LIMIT = 20_000
DIALECTS = ("ansi", "postgres", "mysql")


def corpus_files(root: Path, dialect: str) -> dict[str, bytes]:
    return {p.relative_to(root / dialect).as_posix(): p.read_bytes()
            for p in sorted((root / dialect).rglob("*.sql")) if p.stat().st_size < CLI_SIZE_LIMIT}


def cli_findings(files: dict[str, bytes], dialect: str, workdir: Path) -> dict[str, set[tuple]]:
    """Run the real sqlfluff CLI on a clean copy of the files."""
    root = workdir / f"cli-{dialect}"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root), "LANG": "C.UTF-8"}
    out = subprocess.run([SQLFLUFF, "lint", "--dialect", dialect, "--format", "json", "--processes", "2", "."],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode in (0, 1), out.stderr[-3000:]
    found = {os.path.normpath(f["filepath"]): {(v["code"], v["start_line_no"], v["start_line_pos"])
                                               for v in f["violations"]} for f in json.loads(out.stdout)}
    shutil.rmtree(root)
    return found


def our_findings(stack, view: dict) -> dict[str, set[tuple]]:
    found = {}
    for t in view["tasks"]:
        assert t["status"] == "SUCCESS", (t["archive_member"], t["failure_reason"], t["error_message"])
        doc = json.loads((stack.share / t["result_file_path"]).read_text("utf-8"))
        found[t["archive_member"]] = {(v["code"], v["start_line_no"], v["start_line_pos"]) for v in doc["violations"]}
    return found


def check_fidelity(stack, corpus: dict[str, dict[str, bytes]], workdir: Path) -> int:
    """Submit one job per dialect, then compare every file with the CLI; returns files compared."""
    stack.start_worker(concurrency=2)
    jobs = {dialect: stack.submit(make_zip(files), dialect=dialect) for dialect, files in corpus.items()}
    mismatches = []
    compared = 0
    for dialect, job_id in jobs.items():
        view = stack.wait_job(job_id, 300)
        assert view["status"] == "SUCCESS" and view["total_tasks"] == len(corpus[dialect]), (dialect, view["status"])
        ours = our_findings(stack, view)
        theirs = cli_findings(corpus[dialect], dialect, workdir)
        assert set(ours) == set(theirs) == set(corpus[dialect])
        assert len({code for found in theirs.values() for code, _, _ in found}) >= 5, "a trivial comparison"
        for name in sorted(ours):
            compared += 1
            if ours[name] != theirs[name]:
                mismatches.append(f"{dialect}/{name}: only ours {sorted(ours[name] - theirs[name])}, "
                                  f"only CLI {sorted(theirs[name] - ours[name])}")
    assert not mismatches, f"{len(mismatches)} of {compared} files differ:\n" + "\n".join(mismatches[:20])
    return compared


def test_fidelity_on_our_own_corpus(pg_stack, tmp_path):
    corpus = {d: corpus_files(OWN_CORPUS, d) for d in DIALECTS}
    assert all(len(files) >= 10 for files in corpus.values())
    assert check_fidelity(pg_stack, corpus, tmp_path) == sum(len(f) for f in corpus.values())


@pytest.mark.skipif(not SHARED_CORPUS.is_dir(), reason=f"shared corpus not present at {SHARED_CORPUS}")
def test_fidelity_on_sqlfluff_dialect_fixtures(pg_stack, tmp_path):
    corpus = {d: corpus_files(SHARED_CORPUS, d) for d in DIALECTS}
    assert all(len(files) >= 100 for files in corpus.values())
    compared = check_fidelity(pg_stack, corpus, tmp_path)
    assert compared >= 300
