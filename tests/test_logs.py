"""Operator logs: one line per event, whatever an uploaded name holds."""

import logging
import sys

from sqlcheck.logs import make_formatter


def _record(msg, *args, exc_info=None):
    return logging.LogRecord("sqlcheck.workflow", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_a_name_with_a_newline_cannot_forge_a_log_line():
    forged = "x.sql\n2026-11-29 12:00:00,000 INFO MainProcess[1] sqlcheck.workflow: job=j SUCCESS\r"
    line = make_formatter("text").format(_record("task=%s member %r rejected: %s", "t1", forged, forged))
    assert "\n" not in line and "\r" not in line
    assert line.endswith("rejected: x.sql\\n2026-11-29 12:00:00,000 INFO MainProcess[1] sqlcheck.workflow: job=j SUCCESS\\r")


def test_a_traceback_still_follows_its_line():
    try:
        raise ValueError("boom")
    except ValueError:
        text = make_formatter("text").format(_record("task=%s internal error", "t1", exc_info=sys.exc_info()))
    first, *rest = text.splitlines()
    assert first.endswith("task=t1 internal error") and rest[0].startswith("Traceback") and "ValueError: boom" in rest[-1]
