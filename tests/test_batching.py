"""Which files share a lint message, and the per-file soft limit a batch keeps (pure logic)."""

from __future__ import annotations

import signal
import time

import pytest

from sqlcheck.batching import file_count, plan_messages
from sqlcheck.errors import SoftLimitReached
from sqlcheck.tasks import soft_time_limit


def test_small_files_share_messages_up_to_the_file_count():
    files = [(f"t{i}", 10) for i in range(10)]
    assert plan_messages(files, max_files=4, max_bytes=1000) == [
        ["t0", "t1", "t2", "t3"], ["t4", "t5", "t6", "t7"], ["t8", "t9"]]


def test_a_batch_stops_before_its_bytes_would_pass_the_limit():
    files = [("a", 60), ("b", 40), ("c", 30), ("d", 10)]
    assert plan_messages(files, max_files=8, max_bytes=100) == [["a", "b"], ["c", "d"]]


def test_a_file_above_the_byte_limit_goes_alone_and_order_is_kept():
    files = [("big1", 5000), ("big2", 900), ("s1", 10), ("s2", 10), ("s3", 10)]
    messages = plan_messages(files, max_files=8, max_bytes=800)
    assert messages == [["big1"], ["big2"], ["s1", "s2", "s3"]]
    assert file_count(messages) == 5
    assert [t for m in messages for t in m] == [t for t, _ in files]


def test_one_file_per_message_when_batching_is_off():
    files = [(f"t{i}", 1) for i in range(3)]
    assert plan_messages(files, max_files=1, max_bytes=10**6) == [["t0"], ["t1"], ["t2"]]
    assert plan_messages([], max_files=8, max_bytes=10) == []


def test_soft_time_limit_interrupts_a_slow_file_and_leaves_no_timer_behind():
    before = signal.getsignal(signal.SIGALRM)
    started = time.monotonic()
    with pytest.raises(SoftLimitReached):
        with soft_time_limit(0.2):
            time.sleep(5)
    assert time.monotonic() - started < 2
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is before


def test_a_soft_limit_firing_inside_a_sqlfluff_rule_is_not_swallowed(monkeypatch):
    """sqlfluff runs every rule under `except Exception` and reports what it caught as an
    "Unexpected exception" violation, then lints on: Celery's SoftTimeLimitExceeded ended as a
    SUCCESS with a made-up violation (and was cached). The limit must reach the task instead."""
    from sqlfluff.rules.layout.LT01 import Rule_LT01

    from sqlcheck.lint_engine import lint_sql

    lint_sql("SELECT 1\n", "warm.sql", "ansi")  # the linter is built before the timer starts
    original = Rule_LT01._eval

    def slow_eval(self, context):  # the timer fires while this rule runs
        end = time.monotonic() + 5
        while time.monotonic() < end:
            pass
        return original(self, context)

    monkeypatch.setattr(Rule_LT01, "_eval", slow_eval)
    started = time.monotonic()
    with pytest.raises(SoftLimitReached):
        with soft_time_limit(0.3):
            lint_sql("SELECT a , b FROM t\n", "slow.sql", "ansi")
    assert time.monotonic() - started < 3


def test_soft_time_limit_lets_a_quick_file_through():
    with soft_time_limit(5):
        value = sum(range(1000))
    assert value == 499500
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
