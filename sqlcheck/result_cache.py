"""Content-hash result cache: the same bytes linted the same way give the same violations.

Key = sha256(file bytes) + a hash of (dialect, effective sqlfluff options, sqlfluff
version, parser kind and version). A hit lets a worker write the result file without
linting: duplicate files inside one ZIP and re-uploads of the same files cost a Redis
GET instead of a parse.

Bounded, with documented eviction (README "Performance"):
- every entry expires after SQLCHECK_RESULT_CACHE_TTL_S (0 turns the cache off);
- an index (sorted set by insertion time) caps the number of entries at
  SQLCHECK_RESULT_CACHE_MAX_ENTRIES: a write that goes over it evicts the oldest;
- values are zlib-compressed JSON; a value over MAX_VALUE_BYTES is not cached.

The cache is an optimisation only: any Redis error is a miss (logged), never a failed file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from sqlcheck import counters
from sqlcheck.lint_engine import SQLFLUFF_VERSION

log = logging.getLogger(__name__)

PREFIX = "sqlcheck:result-cache:"
INDEX_KEY = PREFIX + "index"
#: compressed bytes; larger results (thousands of violations) are linted again instead
MAX_VALUE_BYTES = 256 * 1024


@dataclass(frozen=True)
class CachedResult:
    violations: list[dict[str, Any]]
    parse_errors: int
    encoding: str


def config_fingerprint(dialect: str, options: tuple, parser: str) -> str:
    """Everything besides the bytes that decides the violations."""
    material = json.dumps([dialect, [list(o) for o in options], SQLFLUFF_VERSION, parser], default=str)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:32]


def cache_key(content: bytes, dialect: str, options: tuple, parser: str) -> str:
    return key_for_digest(hashlib.sha256(content).hexdigest(), dialect, options, parser)


def key_for_digest(sha256_hex: str, dialect: str, options: tuple, parser: str) -> str:
    """The key when the content's SHA-256 is already known (the expansion computes it)."""
    return f"{PREFIX}{sha256_hex}:{config_fingerprint(dialect, options, parser)}"


def _decode(raw: bytes | None) -> CachedResult | None:
    if raw is None:
        return None
    try:
        doc = json.loads(zlib.decompress(raw))
        return CachedResult(doc["violations"], int(doc["parse_errors"]), doc["encoding"])
    except (zlib.error, ValueError, KeyError, TypeError):
        return None  # unreadable entry: treat as a miss; the next put overwrites it


class ResultCache:
    """Lint results in Redis, keyed by content and configuration."""

    def __init__(self, client: redis.Redis, ttl_s: int, max_entries: int):
        self.client, self.ttl_s, self.max_entries = client, ttl_s, max_entries
        self._deferred: dict[str, tuple[bytes, CachedResult]] | None = None  # see deferred_puts
        self._deferred_hits = 0  # hits inside a deferred_puts block, counted with its writes

    @classmethod
    def from_url(cls, url: str, ttl_s: int, max_entries: int) -> "ResultCache | None":
        """None when the cache is off (TTL 0 or no entries allowed)."""
        if ttl_s <= 0 or max_entries <= 0:
            return None
        return cls(redis.Redis.from_url(url, socket_timeout=5), ttl_s, max_entries)

    def get(self, key: str) -> CachedResult | None:
        return self.get_many([key]).get(key)

    def get_many(self, keys: list[str]) -> dict[str, CachedResult]:
        """The hits among ``keys`` (MGET in chunks): one round trip per 1,000 files."""
        found: dict[str, CachedResult] = {}
        wanted = keys
        if self._deferred:
            found = {key: self._deferred[key][1] for key in keys if key in self._deferred}
            keys = [key for key in keys if key not in found]
        try:
            for start in range(0, len(keys), 1000):
                chunk = keys[start:start + 1000]
                for key, raw in zip(chunk, self.client.mget(chunk)):
                    hit = _decode(raw)
                    if hit is not None:
                        found[key] = hit
        except redis.RedisError as exc:
            log.warning("result cache unavailable (%s); linting instead", exc.__class__.__name__)
        hits = sum(1 for key in wanted if key in found)  # files, not keys: two copies of a file are two hits
        if self._deferred is not None:
            self._deferred_hits += hits
        else:
            counters.bump(self.client, counters.CACHE_HITS, amount=hits)  # nothing when 0
        return found

    def put(self, key: str, result: CachedResult) -> bool:
        """Store a result (or keep it for the end of a deferred_puts block). False if not stored."""
        doc = {"violations": result.violations, "parse_errors": result.parse_errors, "encoding": result.encoding}
        value = zlib.compress(json.dumps(doc, separators=(",", ":")).encode("utf-8"), 1)
        if len(value) > MAX_VALUE_BYTES:
            return False
        if self._deferred is not None:
            self._deferred[key] = (value, result)
            return True
        return self._store({key: value})

    @contextmanager
    def deferred_puts(self):
        """Within the block, puts are kept and stored together when it ends, in one round trip,
        not one per file (a batch message's files); gets inside the block see them. A child
        that dies inside the block loses them, which costs a cache only its hits."""
        self._deferred, self._deferred_hits = {}, 0
        try:
            yield self
        finally:
            deferred, self._deferred = self._deferred, None
            if deferred:
                self._store({key: value for key, (value, _) in deferred.items()}, self._deferred_hits)
            else:
                counters.bump(self.client, counters.CACHE_HITS, amount=self._deferred_hits)

    def _store(self, values: dict[str, bytes], hits: int = 0) -> bool:
        """SET each value with the TTL, index them, evict the oldest when over the cap; and count
        ``hits`` (the same round trip)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, value in values.items():
                pipe.set(key, value, ex=self.ttl_s)
            if hits:
                pipe.hincrby(counters.key(counters.CACHE_HITS), "", hits)
            now = time.time()  # later puts score higher, so eviction keeps insertion order
            pipe.zadd(INDEX_KEY, {key: now + i * 1e-6 for i, key in enumerate(values)})
            pipe.zcard(INDEX_KEY)
            size = pipe.execute()[-1]
            if size > self.max_entries:
                evicted = [k for k, _ in self.client.zpopmin(INDEX_KEY, size - self.max_entries)]
                if evicted:
                    self.client.delete(*evicted)
            # entries expired by TTL leave index members behind; they are popped like any other
            return True
        except redis.RedisError as exc:
            log.warning("result cache write failed (%s); result kept on the share only", exc.__class__.__name__)
            return False

    def clear(self) -> int:
        """Drop every entry (the benchmark's cold runs); returns how many keys were removed."""
        keys = list(self.client.scan_iter(match=PREFIX + "*", count=1000))
        for start in range(0, len(keys), 1000):
            self.client.delete(*keys[start:start + 1000])
        return len(keys)
