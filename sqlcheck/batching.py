"""Which files share one lint message.

Every message costs the same hand-over whatever it carries: the broker round trips, the
prefork pool passing it to a child, the task lock, the events. For a small file that costs
more than linting it, so small files travel in batches; a large file goes alone, so that a
child is never tied up with a long batch while the other waits.
"""

from __future__ import annotations

from typing import Iterable, Sequence


def plan_messages(files: Iterable[tuple[str, int]], max_files: int, max_bytes: int) -> list[list[str]]:
    """Group (task id, size in bytes) into messages, in the order given.

    A batch takes consecutive files while it holds fewer than `max_files` and its sizes add up
    to at most `max_bytes`; a file above `max_bytes` is a message of its own. The caller gives
    the files largest first, so the lone large files start first and batches fill the end.
    """
    messages: list[list[str]] = []
    batch: list[str] = []
    batch_bytes = 0
    for task_id, size in files:
        if batch and (len(batch) >= max_files or batch_bytes + size > max_bytes):
            messages.append(batch)
            batch, batch_bytes = [], 0
        batch.append(task_id)
        batch_bytes += size
    if batch:
        messages.append(batch)
    return messages


def file_count(messages: Sequence[Sequence[str]]) -> int:
    return sum(len(m) for m in messages)
