"""Cluster-wide event counters in Redis, read by the Prometheus exporter (sqlcheck/metrics.py).

Some events leave no trace in the database (a retry, a reaper action, a cache
hit), so whoever causes one bumps a counter here. Each counter is one Redis hash
on the broker, ``sqlcheck:counters:<name>``, whose fields are label values
("" when the counter has no label) and whose values only grow. Bumping never
raises: an event must not fail because Redis is briefly away (the count is then
one short, which is fine for a metric).

Keys (documented in the README's production section):

    sqlcheck:counters:retries          field = why (transient | lock_busy)
    sqlcheck:counters:reaper_actions   field = action (resent_tasks, failed_tasks, ...)
    sqlcheck:counters:cache_hits       field = "" (one per file answered from the result cache)
"""

from __future__ import annotations

import logging
from typing import Mapping

import redis

log = logging.getLogger(__name__)

PREFIX = "sqlcheck:counters:"
RETRIES = "retries"
REAPER_ACTIONS = "reaper_actions"
CACHE_HITS = "cache_hits"
#: every counter the exporter publishes, with the label its hash fields fill
KNOWN = {RETRIES: "reason", REAPER_ACTIONS: "action", CACHE_HITS: ""}


def key(counter: str) -> str:
    return PREFIX + counter


def bump(client: redis.Redis, counter: str, label: str = "", amount: int = 1) -> None:
    """Add ``amount`` to one counter; a Redis error is logged, never raised."""
    bump_many(client, counter, {label: amount})


def bump_many(client: redis.Redis, counter: str, amounts: Mapping[str, int]) -> None:
    """Add several labelled amounts in one round trip (zeros are skipped)."""
    amounts = {label: n for label, n in amounts.items() if n}
    if not amounts:
        return
    try:
        pipe = client.pipeline(transaction=False)
        for label, n in amounts.items():
            pipe.hincrby(key(counter), label, n)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("counter %s not bumped: %s", counter, exc)


def read_all(client: redis.Redis) -> dict[str, dict[str, int]]:
    """Every known counter as {counter: {label: value}} (raises on a Redis error: the scrape says so)."""
    pipe = client.pipeline(transaction=False)
    for counter in KNOWN:
        pipe.hgetall(key(counter))
    return {
        counter: {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in values.items()}
        for counter, values in zip(KNOWN, pipe.execute())
    }
