"""Job and task states: the status columns of the database contract.

This module must not import anything outside the standard library, so every
other module (and the web service) can use it without import cycles.
"""

from enum import Enum


class JobStatus(str, Enum):
    """Lifecycle of one uploaded ZIP."""

    PENDING = "PENDING"  # row inserted by the web service, message sent
    PROCESSING = "PROCESSING"  # a zip worker claimed it; tasks are being created or linted
    SUCCESS = "SUCCESS"  # every file was analysed (violations found still count as success)
    PARTIAL_SUCCESS = "PARTIAL_SUCCESS"  # some files could not be analysed
    FAILED = "FAILED"  # the archive itself was unusable, or no file could be analysed


class TaskStatus(str, Enum):
    """Lifecycle of one SQL file inside a job."""

    PENDING = "PENDING"  # row created, lint message sent (or about to be)
    IN_PROGRESS = "IN_PROGRESS"  # a worker child is linting it
    SUCCESS = "SUCCESS"  # analysed; the result file holds its violations (maybe none)
    FAILURE = "FAILURE"  # could not be analysed; see failure_reason


class FailureReason(str, Enum):
    """Why a task ended FAILURE: a small fixed set, so dashboards can group by it."""

    TOO_LARGE = "too_large"  # file bigger than SQLCHECK_MAX_FILE_BYTES
    DECODE_ERROR = "decode_error"  # not text in any encoding we accept
    UNSAFE_MEMBER = "unsafe_member"  # path escapes the job dir, symlink, device, ...
    ENCRYPTED = "encrypted"  # password-protected ZIP member
    DUPLICATE_MEMBER = "duplicate_member"  # same path twice in one archive
    TIMEOUT = "timeout"  # soft or hard time limit hit
    MEMORY = "memory"  # the RSS watchdog killed the child
    WORKER_LOST = "worker_lost"  # the child died (OOM killer, kill -9) too many times
    MISSING_SOURCE = "missing_source"  # the expanded file vanished from the share
    INTERNAL = "internal"  # a bug or an unexpected error on our side


#: the end states, as the strings the `status` columns hold
TERMINAL_JOB_STATUSES = frozenset(s.value for s in (JobStatus.SUCCESS, JobStatus.PARTIAL_SUCCESS, JobStatus.FAILED))
TERMINAL_TASK_STATUSES = frozenset(s.value for s in (TaskStatus.SUCCESS, TaskStatus.FAILURE))
