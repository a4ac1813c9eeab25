"""The content-hash result cache: identical re-uploads are served from it, with identical results."""

import json

import redis

from sqlcheck import counters
from sqlcheck.reports import job_report
from sqlcheck.result_cache import INDEX_KEY, CachedResult, ResultCache, cache_key
from sqlcheck.share import SharePaths
from tests.conftest import _reset_redis
from tests.helpers import make_zip

FILES = {
    "a.sql": "select a,b from t\n",
    "dir/b.sql": "SELECT id FROM orders WHERE amount>3\n",
    "dir/same_as_a.sql": "select a,b from t\n",
    "clean.sql": "SELECT 1\n",
}


def test_cache_key_changes_with_content_dialect_options_and_parser():
    base = cache_key(b"SELECT 1\n", "ansi", (), "python")
    assert base == cache_key(b"SELECT 1\n", "ansi", (), "python")
    others = {
        cache_key(b"SELECT 2\n", "ansi", (), "python"),
        cache_key(b"SELECT 1\n", "postgres", (), "python"),
        cache_key(b"SELECT 1\n", "ansi", (("rules", "LT01"),), "python"),
        cache_key(b"SELECT 1\n", "ansi", (("exclude_rules", "LT01"),), "python"),
        cache_key(b"SELECT 1\n", "ansi", (), "rust-4.5.0"),
    }
    assert base not in others and len(others) == 5


def test_cache_is_capped_and_evicts_the_oldest(redis_url):
    _reset_redis(redis_url)  # no entry of an earlier test counts against the cap, and none is left after
    client = redis.Redis.from_url(redis_url)
    cache = ResultCache(client, ttl_s=60, max_entries=3)
    keys = [cache_key(f"SELECT {i}\n".encode(), "ansi", (), "python") for i in range(5)]
    for i, key in enumerate(keys):
        assert cache.put(key, CachedResult([{"code": "LT01", "n": i}], 0, "utf-8"))
    assert client.zcard(INDEX_KEY) == 3
    assert cache.get(keys[0]) is None and cache.get(keys[1]) is None
    assert cache.get(keys[4]).violations == [{"code": "LT01", "n": 4}]
    assert 0 < client.ttl(keys[4]) <= 60
    _reset_redis(redis_url)


def _results(stack, view):
    docs = {}
    for t in view["tasks"]:
        docs[t["archive_member"]] = json.loads((stack.share / t["result_file_path"]).read_text())
    return docs


def test_identical_resubmission_is_served_from_the_cache(pg_stack):
    pg_stack.start_worker()
    zip_bytes = make_zip(FILES)
    first = pg_stack.wait_job(pg_stack.submit(zip_bytes), 60)
    assert first["status"] == "SUCCESS" and first["succeeded_tasks"] == 4
    first_docs = _results(pg_stack, first)
    assert not first_docs["a.sql"]["from_cache"] and not first_docs["dir/b.sql"]["from_cache"]

    broker = redis.Redis.from_url(pg_stack.settings.broker_url)
    hits_before = counters.read_all(broker)[counters.CACHE_HITS].get("", 0)
    second = pg_stack.wait_job(pg_stack.submit(zip_bytes), 60)
    assert second["status"] == "SUCCESS" and second["succeeded_tasks"] == 4
    assert counters.read_all(broker)[counters.CACHE_HITS].get("", 0) - hits_before == 4  # sqlcheck_cache_hits_total
    second_docs = _results(pg_stack, second)
    assert all(doc["from_cache"] for doc in second_docs.values())
    for member, doc in first_docs.items():
        assert second_docs[member]["violations"] == doc["violations"], member
        assert second_docs[member]["encoding"] == doc["encoding"]
    assert second_docs["a.sql"]["violation_count"] == 2  # really the lint result, not an empty one
    # served at expansion: no lint message was sent for them
    assert all(t["dispatched_at"] is None for t in second["tasks"])
    # its report.sarif was built from the documents just written, not read back: the same as
    # the one `sqlcheckctl report -f sarif` builds from the files on the share
    written = json.loads((pg_stack.share / "jobs" / second["id"] / "report.sarif").read_text("utf-8"))
    assert written == json.loads(job_report(SharePaths(pg_stack.share), second["id"], "sarif"))
    assert len(written["runs"][0]["results"]) == sum(d["violation_count"] for d in second_docs.values()) > 0

    # another dialect is another key: linted again, not served from the cache
    third = pg_stack.wait_job(pg_stack.submit(zip_bytes, dialect="postgres"), 60)
    assert third["status"] == "SUCCESS"
    assert not any(doc["from_cache"] for doc in _results(pg_stack, third).values() if doc["archive_member"] != "dir/same_as_a.sql")


def test_deferred_puts_are_stored_together_at_the_end_and_seen_inside(redis_url):
    _reset_redis(redis_url)
    client = redis.Redis.from_url(redis_url)
    cache = ResultCache(client, ttl_s=60, max_entries=2)
    keys = [cache_key(f"SELECT {i}\n".encode(), "ansi", (), "python") for i in range(3)]
    with cache.deferred_puts():
        for i, key in enumerate(keys):
            assert cache.put(key, CachedResult([{"code": "LT01", "n": i}], 0, "utf-8"))
        assert client.exists(*keys) == 0  # nothing sent yet
        assert cache.get(keys[0]).violations == [{"code": "LT01", "n": 0}]  # but a later file of the batch sees it
    # stored at the end of the block, capped like single puts; the hit inside it counted with them
    assert client.zcard(INDEX_KEY) == 2 and client.exists(*keys) == 2
    assert counters.read_all(client)[counters.CACHE_HITS] == {"": 1}
    assert cache.get_many(keys).keys() <= set(keys) and len(cache.get_many(keys)) == 2
    assert 0 < client.ttl(keys[2]) <= 60
    cache.put(keys[0], CachedResult([], 0, "utf-8"))  # outside a block: stored at once
    assert cache.get(keys[0]).violations == []
