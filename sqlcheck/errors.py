"""Exception tree: user-input errors are kept apart from our own failures.

A `UserInputError` is expected (a bad upload): it becomes one log line and a
message in the row, never a traceback. Anything else is a bug or an outage.
"""

from sqlcheck.states import FailureReason


def first_line(exc: BaseException) -> str:
    """The first line of an error's message: driver errors span several lines, a log event or a
    message for the operator is one."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def describe(exc: BaseException) -> str:
    """An error on one line, its class first: "OperationalError: connection failed ..."."""
    return f"{exc.__class__.__name__}: {first_line(exc)}"


class SqlcheckError(Exception):
    """Root of every error sqlcheck raises on purpose."""


class ConfigError(SqlcheckError):
    """Raised when a setting is missing or has a bad value; names the setting."""


class ControlError(SqlcheckError):
    """Raised when supervisord or a worker cannot be reached or controlled."""


class UserInputError(SqlcheckError):
    """Raised when an upload cannot be processed; the message is shown to the user."""


class ArchiveError(UserInputError):
    """Raised when a ZIP as a whole is unusable (corrupt, bomb, no SQL); fails the job."""


class FileRejected(UserInputError):
    """Raised when one file cannot be analysed; fails only that task."""

    def __init__(self, reason: FailureReason, message: str):
        super().__init__(message)
        self.reason = reason
