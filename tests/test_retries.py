"""Which errors are retried, and how long the backoff waits."""

import errno
import random

import pytest
import redis.exceptions
import sqlalchemy.exc
from kombu.exceptions import OperationalError as KombuOperationalError

from sqlcheck.errors import ArchiveError, FileRejected
from sqlcheck.retries import backoff_delay_s, is_transient
from sqlcheck.states import FailureReason


@pytest.mark.parametrize(
    "exc",
    [
        sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        sqlalchemy.exc.InterfaceError("SELECT 1", {}, Exception("connection already closed")),
        redis.exceptions.ConnectionError("Connection refused"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
        KombuOperationalError("Error 111 connecting to 127.0.0.1:6379"),
        OSError(errno.ESTALE, "Stale file handle"),
        OSError(errno.EIO, "Input/output error"),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
)
def test_outages_are_transient(exc):
    assert is_transient(exc)


def test_invalidated_connection_is_transient():
    exc = sqlalchemy.exc.DBAPIError("SELECT 1", {}, Exception("boom"), connection_invalidated=True)
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")),
        sqlalchemy.exc.DBAPIError("SELECT 1", {}, Exception("syntax"), connection_invalidated=False),
        redis.exceptions.ResponseError("WRONGTYPE"),
        OSError(errno.ENOENT, "No such file"),
        OSError(errno.EACCES, "Permission denied"),
        ValueError("bug"),
        KeyError("bug"),
        ArchiveError("corrupt"),
        FileRejected(FailureReason.TOO_LARGE, "big"),
    ],
)
def test_bugs_and_bad_input_are_not_transient(exc):
    assert not is_transient(exc)


def test_backoff_grows_and_is_capped():
    rng = random.Random(7)
    for retries in range(10):
        ceiling = min(60.0, 2.0 * 2**retries)
        for _ in range(50):
            delay = backoff_delay_s(retries, 2.0, 60.0, rng)
            assert min(1.0, ceiling) <= delay <= ceiling
    assert max(backoff_delay_s(20, 2.0, 60.0, rng) for _ in range(200)) <= 60.0


def test_backoff_has_jitter():
    rng = random.Random(1)
    delays = {round(backoff_delay_s(3, 2.0, 60.0, rng), 6) for _ in range(20)}
    assert len(delays) > 10  # two workers retrying together do not retry in lockstep
