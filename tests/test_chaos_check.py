"""bin/chaos's verdict on SUCCESS writes: duplicates fail the run, a line lost with a killed process does not."""

from sqlcheck.chaos import Figures, success_writes


def test_one_line_and_one_file_per_success_is_clean():
    logs = "job=j task=a SUCCESS: 1 violations\njob=j task=b SUCCESS: 0 violations\n"
    assert success_writes({"a", "b"}, {"a.json", "b.json"}, logs) == (0, 0)


def test_a_second_success_line_is_a_duplicate():
    logs = "task=a SUCCESS: 1\ntask=a SUCCESS: 1\ntask=b SUCCESS: 0\n"
    assert success_writes({"a", "b"}, {"a.json", "b.json"}, logs) == (1, 0)


def test_a_result_file_without_a_success_row_is_a_duplicate():
    assert success_writes({"a"}, {"a.json", "stray.json"}, "task=a SUCCESS: 0\n") == (1, 0)


def test_a_success_row_with_its_file_but_no_line_is_unlogged_not_a_fault():
    duplicates, unlogged = success_writes({"a", "b"}, {"a.json", "b.json"}, "task=a SUCCESS: 0\n")
    assert (duplicates, unlogged) == (0, 1)
    figures = Figures(duplicates=duplicates, unlogged=unlogged)
    assert figures.ok and "unlogged=1" in figures.line() and figures.line().endswith("PASS")


def test_a_success_row_without_line_or_file_is_not_counted_as_unlogged():
    # the missing result file is reported by its own check; it must not pass as a lost log line
    assert success_writes({"a"}, set(), "") == (0, 0)


def test_postgres_programs_are_found_off_path(monkeypatch):
    """Debian keeps initdb and pg_ctl in /usr/lib/postgresql/<version>/bin, off PATH: the chaos
    test and the outage tests must find them there rather than skip or fail."""
    from pathlib import Path

    from sqlcheck.chaos_services import postgres_program

    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    monkeypatch.setenv("PATH", "/nonexistent")
    found = postgres_program("initdb")
    assert found == (str(max(installed, key=lambda p: int(p.parent.parent.name))) if installed else None)
    assert postgres_program("no-such-program") is None
