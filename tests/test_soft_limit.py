"""A file's soft time limit: it reaches the task however sqlfluff catches exceptions."""

from __future__ import annotations

import signal
import time

import pytest

from sqlcheck import soft_limit
from sqlcheck.soft_limit import SoftLimitReached, soft_time_limit


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


def test_a_limit_swallowed_like_sqlfluffs_rust_bridge_does_still_ends_the_file(monkeypatch):
    """sqlfluff's Rust parser bridge catches BaseException around building its tree and falls back
    to the Python parser: the first firing is lost there. The file must still end at the limit."""
    from sqlfluff.core.parser.rust_parser import RustParser

    from sqlcheck.lint_engine import lint_sql

    lint_sql("SELECT 1\n", "warm.sql", "ansi")
    original = RustParser._extract_tokens_from_segments

    calls = []

    def slow_extract(self, segments):  # its first call is outside the bridge's `except BaseException`, later ones inside
        calls.append(segments)
        end = time.monotonic() + (0.6 if len(calls) > 1 else 0)
        while time.monotonic() < end:
            pass
        return original(self, segments)

    monkeypatch.setattr(RustParser, "_extract_tokens_from_segments", slow_extract)
    monkeypatch.setattr(soft_limit, "REFIRE_S", 30.0)  # no second firing: the lint ends first
    started = time.monotonic()
    with pytest.raises(SoftLimitReached):
        with soft_time_limit(0.2):
            lint_sql("SELECT a , b FROM t\n", "slow.sql", "ansi")  # swallowed, then linted on to the end
    assert time.monotonic() - started < 2 and len(calls) > 1
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_body_that_swallows_each_firing_is_stopped_by_the_next():
    """Each firing after the first comes REFIRE_S later, until one gets out."""
    swallowed = 0
    started = time.monotonic()
    with pytest.raises(SoftLimitReached):
        with soft_time_limit(0.1):
            while time.monotonic() - started < 10:
                try:
                    time.sleep(10)
                except SoftLimitReached:
                    swallowed += 1
                    if swallowed == 2:
                        break  # a caller that gives up after two, the body then returns normally
    assert swallowed == 2 and time.monotonic() - started < 3  # 0.1 s, then REFIRE_S later


def test_a_firing_that_lands_in_the_clean_up_is_noted_and_the_clean_up_runs():
    """A re-firing handled as the block exits (Python checks for signals on entering a function)
    used to raise inside the clean-up, before the timer was disarmed: the timer then went on
    firing in the caller's `except` (a database write). Handled in __enter__/__exit__, a firing
    is only noted; __exit__ disarms, restores the handler, then raises for it."""
    from types import SimpleNamespace

    before = signal.getsignal(signal.SIGALRM)
    limit = soft_time_limit(30)
    with pytest.raises(SoftLimitReached):
        with limit:
            limit._expired(signal.SIGALRM, SimpleNamespace(f_code=soft_time_limit.__exit__.__code__))
            assert limit.fired  # noted, not raised: the body goes on to the clean-up
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is before
    with pytest.raises(SoftLimitReached):  # anywhere else it raises at once
        limit._expired(signal.SIGALRM, SimpleNamespace(f_code=test_soft_time_limit_lets_a_quick_file_through.__code__))
