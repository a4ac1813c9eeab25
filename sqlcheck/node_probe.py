"""Asking running Celery nodes over the broker: ping and active tasks.

A bare Celery app on the broker URL, as an outside client would use; it
never imports sqlcheck.tasks, so probing does not need the worker code paths.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from sqlcheck.settings import Settings


def _app(settings: Settings) -> Celery:
    app = Celery("sqlcheck-probe")
    app.conf.update(broker_url=settings.broker_url, broker_connection_retry_on_startup=False,
                    broker_connection_max_retries=1, broker_connection_timeout=3)
    return app


def ping_nodes(settings: Settings, nodes: list[str], timeout_s: float = 1.5) -> set[str]:
    """The subset of `nodes` that answered a ping within the timeout."""
    if not nodes:
        return set()
    app = _app(settings)
    try:
        # limit: return as soon as every node answered instead of always waiting the full timeout
        replies = app.control.ping(destination=nodes, timeout=timeout_s, limit=len(nodes)) or []
    finally:
        app.close()
    answered = set()
    for reply in replies:
        answered |= set(reply)
    return answered & set(nodes)


def active_tasks(settings: Settings, nodes: list[str], timeout_s: float = 1.5) -> dict[str, list[dict[str, Any]]]:
    """node -> the requests it is running now (id, name, args, worker_pid)."""
    if not nodes:
        return {}
    app = _app(settings)
    try:
        found = app.control.inspect(destination=nodes, timeout=timeout_s, limit=len(nodes)).active() or {}
    finally:
        app.close()
    return {
        node: [{"id": r.get("id"), "name": r.get("name"), "args": r.get("args"), "worker_pid": r.get("worker_pid")}
               for r in requests]
        for node, requests in found.items()
    }
