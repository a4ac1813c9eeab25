"""A Redis lock per task, so a duplicate delivery never lints a file twice at once.

Only the holder releases (compare-and-delete). A lock left by a pool child that
died on this node is taken over at once instead of waiting for its TTL.

A lock's value is "node|pid|owner|nonce": the owner is the Celery id of the message that
holds it, so the main process can tell a killed batch's files from files of the batch that
another delivery was linting (it knows the message id, not the child's pid).
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


#: ARGV[1] a lock value's start "node|pid|owner|" (one delivery in one child), or ARGV[2] an owner
#: alone (any delivery of that message) when ARGV[1] is empty
_RELEASE_HELD = (
    "local v = redis.call('get', KEYS[1]) "
    "if not v then return 0 end "
    "if ARGV[1] ~= '' then "
    "  if string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then return redis.call('del', KEYS[1]) end "
    "  return 0 "
    "end "
    "if string.match(v, '^[^|]*|[^|]*|([^|]*)|') == ARGV[2] then return redis.call('del', KEYS[1]) end "
    "return 0"
)


def lock_key(task_id: str) -> str:
    return f"task_lock:{task_id}"


def holder_prefix(node: str, pid: int, owner: str) -> str:
    """The start of the values of the locks one child took for one message: a redelivery of the
    same message (the same Celery id) in another child does not share it."""
    return f"{node}|{pid}|{owner}|"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _holder(value: bytes | str) -> tuple[str, str, str | None]:
    """(node, pid, owner) of a lock's value; owner None in a value written without one."""
    parts = _text(value).split("|")
    return parts[0], parts[1] if len(parts) > 1 else "", parts[2] if len(parts) > 3 else None


@dataclass
class TaskLock:
    client: redis.Redis
    task_id: str
    node: str  # Celery node name of this worker: children of one node share a host
    ttl_s: int
    owner: str = ""  # the Celery id of the message holding it
    token: str = ""

    def new_token(self) -> str:
        self.token = f"{self.node}|{os.getpid()}|{self.owner}|{uuid.uuid4().hex}"
        return self.token

    def acquire(self) -> bool:
        """Take the lock, or take it over from a dead child of this same node."""
        key = lock_key(self.task_id)
        if self.client.set(key, self.new_token(), nx=True, ex=self.ttl_s):
            return True
        return self.take_over()

    def take_over(self) -> bool:
        """The lock is taken: take it anyway if it just expired or its holder died on this node."""
        key = lock_key(self.task_id)
        holder = self.client.get(key)
        if holder is None:
            return bool(self.client.set(key, self.token, nx=True, ex=self.ttl_s))
        holder = _text(holder)
        node, pid, _owner = _holder(holder)
        if node == self.node and pid.isdigit() and not psutil.pid_exists(int(pid)):
            return bool(self.client.eval(_TAKE_OVER, 1, key, holder, self.token, self.ttl_s))
        return False

    def release(self) -> bool:
        """Release only if we still hold it; never delete someone else's lock."""
        return bool(self.client.eval(_RELEASE, 1, lock_key(self.task_id), self.token))


def acquire_many(client: redis.Redis, task_ids: list[str], node: str, ttl_s: int,
                 owner: str = "") -> tuple[list[TaskLock], list[str]]:
    """The locks of a batch in one round trip: (locks held, ids someone else is linting)."""
    locks = [TaskLock(client, task_id, node, ttl_s, owner) for task_id in task_ids]
    pipe = client.pipeline(transaction=False)
    for lock in locks:
        pipe.set(lock_key(lock.task_id), lock.new_token(), nx=True, ex=ttl_s)
    held, busy = [], []
    for lock, taken in zip(locks, pipe.execute()):
        if taken or lock.take_over():
            held.append(lock)
        else:
            busy.append(lock.task_id)
    return held, busy


def release_many(client: redis.Redis, locks: list[TaskLock]) -> None:
    """Release a batch's locks in one round trip (only those we still hold)."""
    pipe = client.pipeline(transaction=False)
    for lock in locks:
        pipe.eval(_RELEASE, 1, lock_key(lock.task_id), lock.token)
    pipe.execute()


def release_owned(client: redis.Redis, task_ids: list[str], owner: str, holder: str = "") -> None:
    """Release the locks of these tasks that message `owner` holds (its child was killed, or is
    being killed): a delivery elsewhere need not wait for their TTL. With `holder` (see
    holder_prefix) only that child's, never a redelivery's. One round trip."""
    pipe = client.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.eval(_RELEASE_HELD, 1, lock_key(task_id), holder, owner)
    pipe.execute()


def held_by_another_message(client: redis.Redis, task_ids: list[str], owner: str, holder: str = "") -> set[str]:
    """Of these tasks, those whose lock a message other than `owner` holds now, or with `holder`
    any other delivery than that child's (one round trip)."""
    if not task_ids:
        return set()
    values = client.mget([lock_key(t) for t in task_ids])
    if holder:
        return {t for t, v in zip(task_ids, values) if v is not None and not _text(v).startswith(holder)}
    return {task_id for task_id, value in zip(task_ids, values) if value is not None and _holder(value)[2] != owner}
