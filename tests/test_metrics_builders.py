"""The exporter's pure parts: metric families from aggregates, worker command lines, counters."""

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sqlcheck import counters
from sqlcheck.metrics import (
    DURATION_EDGES,
    _is_worker_cmdline,
    counter_families,
    duration_family,
    file_families,
    node_of,
)


def exposed(families) -> dict:
    class Fixed:
        def collect(self):
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def test_file_families_default_dialect_outcomes_and_watchdog_kills():
    ended = [(None, "SUCCESS", None, 5), ("ansi", "SUCCESS", None, 2), ("mysql", "FAILURE", "memory", 3),
             (None, "FAILURE", "timeout", 1)]
    m = exposed(file_families(ended, "ansi"))
    key = "sqlcheck_files_linted_total"
    assert m[(key, (("dialect", "ansi"), ("failure_reason", ""), ("outcome", "success")))] == 7
    assert m[(key, (("dialect", "mysql"), ("failure_reason", "memory"), ("outcome", "failure")))] == 3
    assert m[(key, (("dialect", "ansi"), ("failure_reason", "timeout"), ("outcome", "failure")))] == 1
    assert m[("sqlcheck_watchdog_kills_total", ())] == 3


def test_duration_family_is_cumulative_with_inf_equal_to_count():
    cumulative = [0, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3]
    assert len(cumulative) == len(DURATION_EDGES)
    m = exposed([duration_family([(1, 4, 2.5, cumulative)])])
    labels = (("le", "+Inf"), ("size", "le_10KiB"))
    assert m[("sqlcheck_lint_duration_seconds_bucket", labels)] == 4
    assert m[("sqlcheck_lint_duration_seconds_bucket", (("le", "0.05"), ("size", "le_10KiB")))] == 1
    assert m[("sqlcheck_lint_duration_seconds_sum", (("size", "le_10KiB"),))] == 2.5
    assert m[("sqlcheck_lint_duration_seconds_count", (("size", "gt_100KiB"),))] == 0


@pytest.mark.parametrize("cmdline,is_worker,node", [
    (["/v/bin/python", "/v/bin/sqlcheckctl", "worker", "--name", "zip@h1"], True, "zip@h1"),
    (["/v/bin/sqlcheckctl", "-c", "x.toml", "worker", "--name=analysis@h"], True, "analysis@h"),
    (["/v/bin/sqlcheckctl", "metrics", "serve"], False, None),
    (["celery", "worker", "-n", "a@b"], False, "a@b"),
    ([], False, None),
])
def test_worker_command_lines(cmdline, is_worker, node):
    assert _is_worker_cmdline(cmdline) is is_worker
    assert node_of(cmdline) == node


def test_counters_round_trip_through_real_redis(redis_url):
    client = redis.Redis.from_url(redis_url)
    for c in counters.KNOWN:
        client.delete(counters.key(c))
    counters.bump(client, counters.RETRIES, "transient")
    counters.bump(client, counters.RETRIES, "transient")
    counters.bump_many(client, counters.REAPER_ACTIONS, {"resent_tasks": 3, "failed_jobs": 0})
    counters.bump(client, counters.CACHE_HITS)
    values = counters.read_all(client)
    assert values == {"retries": {"transient": 2}, "reaper_actions": {"resent_tasks": 3}, "cache_hits": {"": 1}}
    m = exposed(counter_families(values))
    assert m[("sqlcheck_retries_total", (("reason", "transient"),))] == 2
    assert m[("sqlcheck_reaper_actions_total", (("action", "resent_tasks"),))] == 3
    assert m[("sqlcheck_cache_hits_total", ())] == 1


def test_bump_never_raises_when_redis_is_away():
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    counters.bump(client, counters.RETRIES, "transient")  # logged, not raised
