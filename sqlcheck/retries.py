"""Which errors are worth retrying, and how long to wait: pure functions."""

from __future__ import annotations

import errno
import random

import redis.exceptions
import sqlalchemy.exc
from kombu.exceptions import OperationalError as KombuOperationalError

#: share errors that an NFS server or a full disk can cause and that go away
TRANSIENT_ERRNOS = frozenset({errno.ESTALE, errno.EIO, errno.ENOSPC, errno.EAGAIN, errno.ETIMEDOUT, errno.EDQUOT})


def is_transient(exc: BaseException) -> bool:
    """True for outages (database, Redis, share) that a later retry may not see."""
    if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, KombuOperationalError)):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def backoff_delay_s(retries: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": uniform in [ceiling/2, ceiling], ceiling = min(max, base * 2**retries).

    Each delay is at least the previous ceiling, so successive delays never shrink
    (until the cap), while two workers retrying together still spread out.
    """
    rng = rng or random
    ceiling = min(max_s, base_s * (2**retries))
    return rng.uniform(ceiling / 2, ceiling)
