"""A Redis lock per task, so a duplicate delivery never lints a file twice at once.

Only the holder releases (compare-and-delete). A lock left by a pool child that
died on this node is taken over at once instead of waiting for its TTL.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import psutil
import redis

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_TAKE_OVER = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3]) else return false end"
)


def lock_key(task_id: str) -> str:
    return f"task_lock:{task_id}"


@dataclass
class TaskLock:
    client: redis.Redis
    task_id: str
    node: str  # Celery node name of this worker: children of one node share a host
    ttl_s: int
    token: str = ""

    def acquire(self) -> bool:
        """Take the lock, or take it over from a dead child of this same node."""
        self.token = f"{self.node}|{os.getpid()}|{uuid.uuid4().hex}"
        key = lock_key(self.task_id)
        if self.client.set(key, self.token, nx=True, ex=self.ttl_s):
            return True
        holder = self.client.get(key)
        if holder is None:
            return bool(self.client.set(key, self.token, nx=True, ex=self.ttl_s))
        holder = holder.decode() if isinstance(holder, bytes) else holder
        node, _, rest = holder.partition("|")
        pid = rest.partition("|")[0]
        if node == self.node and pid.isdigit() and not psutil.pid_exists(int(pid)):
            return bool(self.client.eval(_TAKE_OVER, 1, key, holder, self.token, self.ttl_s))
        return False

    def release(self) -> bool:
        """Release only if we still hold it; never delete someone else's lock."""
        return bool(self.client.eval(_RELEASE, 1, lock_key(self.task_id), self.token))
