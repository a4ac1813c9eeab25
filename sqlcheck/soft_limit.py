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

#: after the first expiry the timer fires again this often: sqlfluff's Rust bridge catches
#: BaseException around the parse and falls back to the Python parser
REFIRE_S = 1.0


class SoftLimitReached(BaseException):
    """A file's soft time limit fired while it was being linted."""


class soft_time_limit:  # noqa: N801 - used as `with soft_time_limit(s):`, like a function
    """Raise SoftLimitReached in the body once it has run `seconds`, and again every REFIRE_S
    until it leaves; a body that swallowed every one of them still ends with one. The timer is
    off and the previous handler back before any code after the block runs: a firing that lands
    in __enter__ or __exit__ themselves is only noted (it must not skip the clean-up)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.fired = False

    def __enter__(self) -> "soft_time_limit":
        self.fired = False
        self._previous = signal.signal(signal.SIGALRM, self._expired)
        signal.setitimer(signal.ITIMER_REAL, self.seconds, REFIRE_S)
        return self

    def __exit__(self, exc_type, _exc, _tb) -> bool:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous)
        if self.fired and exc_type is None:  # fired and swallowed: past the limit all the same
            raise SoftLimitReached(self._message())
        return False

    def _expired(self, _signum, frame) -> None:
        self.fired = True
        if frame is not None and frame.f_code in _OWN_CODE:
            return
        raise SoftLimitReached(self._message())

    def _message(self) -> str:
        return f"soft time limit ({self.seconds}s) exceeded"


_OWN_CODE = (soft_time_limit.__enter__.__code__, soft_time_limit.__exit__.__code__)
