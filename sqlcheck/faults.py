"""Test-only fault injection: make one SQL file slow, hungry or deadly on purpose.

Off unless the worker's environment has SQLCHECK_ENABLE_FAULTS=1 (never set it
in production). Then a comment line in the file's SQL such as::

    -- sqlcheck-fault: sleep_s=30 ignore_soft=1
    -- sqlcheck-fault: alloc_mb=800
    -- sqlcheck-fault: kill_self=1

runs just before the file is linted, in the pool child, so the end-to-end
tests can hit the soft and hard time limits, the RSS watchdog and a child
death deterministically. Directives:

- ``sleep_s=N``: sleep N seconds (a soft time limit interrupts it, as it would a long lint);
- ``ignore_soft=1``: keep sleeping through the soft limit, so only the hard limit ends it;
- ``alloc_mb=N``: grow this process by N MiB (touched, so it is resident), then hold it ``hold_s`` (default 10);
  ``alloc_after_s=N`` waits N seconds first (so a test can act while the file runs);
- ``leak_mb=N``: grow this process by N MiB and keep it after the file (a leak), so the
  idle child stays big and gets recycled;
- ``kill_self=1``: SIGKILL this child, as the kernel OOM killer would;
- ``redis_errors=N``: raise a real ``redis.exceptions.ConnectionError`` in the first N
  deliveries of this task (counted in Redis, key ``sqlcheck:fault:<task id>``, so retries in
  any child or worker see the count), as a Redis outage during the lint would.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV = "SQLCHECK_ENABLE_FAULTS"
_DIRECTIVE = re.compile(r"--\s*sqlcheck-fault:\s*(?P<body>[^\n]*)")
_CHUNK_MB = 16


@dataclass(frozen=True)
class Fault:
    sleep_s: float = 0.0
    ignore_soft: bool = False
    alloc_mb: int = 0
    alloc_after_s: float = 0.0
    hold_s: float = 10.0
    leak_mb: int = 0
    kill_self: bool = False
    redis_errors: int = 0


def enabled() -> bool:
    return os.environ.get(ENV) == "1"


def parse(sql: str) -> Fault | None:
    """The first directive in the text, or None. Unknown keys are an error (a typo must not pass silently)."""
    match = _DIRECTIVE.search(sql)
    if not match:
        return None
    values: dict[str, str] = {}
    for item in match.group("body").split():
        key, _, value = item.partition("=")
        values[key] = value
    known = set(Fault.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown sqlcheck-fault key(s): {', '.join(sorted(unknown))}")
    return Fault(
        sleep_s=float(values.get("sleep_s", 0)),
        ignore_soft=values.get("ignore_soft", "0") == "1",
        alloc_mb=int(values.get("alloc_mb", 0)),
        alloc_after_s=float(values.get("alloc_after_s", 0)),
        hold_s=float(values.get("hold_s", 10)),
        leak_mb=int(values.get("leak_mb", 0)),
        kill_self=values.get("kill_self", "0") == "1",
        redis_errors=int(values.get("redis_errors", 0)),
    )


def _sleep(seconds: float, ignore_soft: bool) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            time.sleep(min(left, 0.2))
        except BaseException as exc:  # the soft limit, matched by name: faults imports nothing of ours
            if ignore_soft and type(exc).__name__ in ("SoftTimeLimitExceeded", "SoftLimitReached"):
                log.warning("fault: ignoring the soft time limit")
                continue
            raise


def _allocate(mb: int, hold_s: float) -> None:
    hoard = []
    for _ in range(0, mb, _CHUNK_MB):
        hoard.append(b"\x01" * (_CHUNK_MB * 2**20))  # filled, so every page is resident
        time.sleep(0.02)  # grow gradually, like a real parser would
    time.sleep(hold_s)
    del hoard


#: what `leak_mb` keeps alive for the rest of the child's life
_leaked: list[bytes] = []


def _raise_redis_error(limit: int, task_id: str, redis_url: str) -> None:
    """The first `limit` deliveries of the task fail as if Redis were unreachable."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        delivery = client.incr(f"sqlcheck:fault:{task_id}")
        client.expire(f"sqlcheck:fault:{task_id}", 3600)
    finally:
        client.close()
    if delivery <= limit:
        raise redis.exceptions.ConnectionError(f"injected fault: Redis unreachable (delivery {delivery} of {limit})")


def inject(sql: str, task_id: str = "", redis_url: str = "") -> None:
    """Apply the file's directive when faults are enabled; otherwise do nothing at all."""
    if not enabled():
        return
    fault = parse(sql)
    if fault is None:
        return
    log.warning("fault injected (test only): %s", fault)
    if fault.redis_errors:
        _raise_redis_error(fault.redis_errors, task_id, redis_url)
    if fault.kill_self:
        os.kill(os.getpid(), signal.SIGKILL)
    if fault.leak_mb:
        _leaked.extend(b"\x01" * (_CHUNK_MB * 2**20) for _ in range(0, fault.leak_mb, _CHUNK_MB))
    if fault.alloc_mb:
        time.sleep(fault.alloc_after_s)
        _allocate(fault.alloc_mb, fault.hold_s)
    if fault.sleep_s:
        _sleep(fault.sleep_s, fault.ignore_soft)
