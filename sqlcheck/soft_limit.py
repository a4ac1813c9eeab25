"""A file's soft time limit: a timer in the worker child around the file's decode and lint.

Celery's own soft limit raises SoftTimeLimitExceeded, an Exception, wherever the child is:
sqlfluff runs each rule under `except Exception` and reported it as an "Unexpected exception"
violation, then linted on; the file ended SUCCESS with that made-up result (and the cache
kept it). Here the limit raises SoftLimitReached, a BaseException, and only around sqlfluff's
work: a database statement or a Redis call is never interrupted (an interrupted statement
leaves SQLAlchemy's connection invalid, and SQLite's write lock held).
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

#: after the first expiry the timer fires again this often: sqlfluff's Rust bridge catches
#: BaseException around the parse and falls back to the Python parser
REFIRE_S = 1.0


class SoftLimitReached(BaseException):
    """A file's soft time limit fired while it was being linted."""


@contextmanager
def soft_time_limit(seconds: float) -> Iterator[None]:
    """Raise SoftLimitReached in the body once it has run `seconds`, and again every REFIRE_S
    until it leaves; a body that swallowed every one of them still ends with one."""
    fired = False

    def expired(_signum, _frame):
        nonlocal fired
        fired = True
        raise SoftLimitReached(f"soft time limit ({seconds}s) exceeded")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds, REFIRE_S)
    try:
        yield
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)  # a signal already due may still raise here
        finally:
            signal.signal(signal.SIGALRM, previous)
    if fired:  # the limit fired and was swallowed: the result is past the limit all the same
        raise SoftLimitReached(f"soft time limit ({seconds}s) exceeded")
