"""bin/bench runs end to end (real services, workers started by sqlcheckctl) and prints every
figure issue 5 asks for. A small corpus and one repetition: the figures are not judged here
(speed targets belong to the benchmark, not to timed tests), only that each is there."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.helpers import run_tool

REPO = Path(__file__).resolve().parents[2]

FIGURES = [
    r"\(a\) sqlfluff lint -p \d+ files/s: (\d+\.\d+)",
    r"\(b\) sqlcheck pipeline files/s: (\d+\.\d+)",
    r"\(c\) single-process warm Linter files/s: (\d+\.\d+)",
    r"ratio b/a: (\d+\.\d+)",
    r"ratio b/limit: (\d+\.\d+)",
    r"per-file overhead \(queue \+ DB \+ result write\), median: (\d+\.\d+) ms",
    r"per-file overhead, mean: (\d+\.\d+) ms",
    r"200-file ZIP expanded \+ every task dispatched: (\d+\.\d+) s",
    r"identical re-submission \(median of 1\): (\d+\.\d+) s",
    r"analysis child RSS: peak (\d+) MiB, steady \(median in the last \(b\) run\) (\d+) MiB",
]


def test_bench_runs_and_prints_every_figure():
    proc = run_tool(
        [sys.executable, "-m", "sqlcheck.bench", "--reps", "1", "--dialects", "ansi", "--corpus", "tests/corpus",
         "--large-lines", "40", "--small-files", "200"],
        timeout_s=240, cleanup_s=40, cwd=REPO,  # within the suite's 300 s per test
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    for figure in FIGURES:
        found = re.search(figure, out)
        assert found, f"missing: {figure}\n{out}"
        assert all(float(g) > 0 for g in found.groups()), found.group(0)
    assert "violations (b) == (a): yes, per file" in out
    assert "stopping services" in proc.stderr + out  # it stopped the workers it started
    assert "stopped by signal" not in proc.stderr + out  # nobody was stopped: a clean run says nothing of it
