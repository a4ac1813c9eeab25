"""Pure decisions of the RSS watchdog, fault directives, and the status summary."""

import pytest

from sqlcheck import faults
from sqlcheck.control import overall_state
from sqlcheck.watchdog import children_to_kill


def test_only_busy_children_over_the_limit_are_killed():
    kill = children_to_kill({1: 900.0, 2: 100.0, 3: 900.0, 4: 400.0}, {1: "t1", 2: "t2", 4: "t4"}, max_rss_mb=800)
    assert kill == {1: "t1"}  # busy and over; 3 is over but idle: it recycles itself after its message


def test_fault_directives_parse_and_typos_are_refused():
    assert faults.parse("SELECT 1") is None
    fault = faults.parse("-- sqlcheck-fault: sleep_s=30 ignore_soft=1\nSELECT 1")
    assert fault.sleep_s == 30 and fault.ignore_soft and not fault.kill_self
    assert faults.parse("--sqlcheck-fault: alloc_mb=800").alloc_mb == 800
    assert faults.parse("-- sqlcheck-fault: redis_errors=3\nSELECT 1").redis_errors == 3
    with pytest.raises(ValueError, match="sleep"):
        faults.parse("-- sqlcheck-fault: sleep=3")


@pytest.mark.parametrize("switch,killed", [(None, False), ("0", False), ("1", True)])
def test_faults_are_inert_without_the_switch(switch, killed):
    """In a process of its own: with the switch on, the directive really kills it."""
    import os
    import signal
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    if switch is not None:
        env[faults.ENV] = switch
    code = "from sqlcheck import faults; faults.inject('-- sqlcheck-fault: kill_self=1\\n'); print('alive')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert (out.returncode == -signal.SIGKILL, "alive" in out.stdout) == (killed, not killed), out.stderr


def _doc(states, pings, sup=None):
    return {"supervisord": sup or {"pid": 1, "state": "RUNNING"},
            "programs": [{"name": f"p{i}", "state": s} for i, s in enumerate(states)],
            "nodes": {f"n{i}": {"ping": p} for i, p in enumerate(pings)}}


@pytest.mark.parametrize("doc,state", [
    (_doc(["RUNNING", "RUNNING"], [True, True]), "running"),
    (_doc(["RUNNING", "RUNNING"], [True, False]), "partial"),
    (_doc(["RUNNING", "FATAL"], [True]), "partial"),
    (_doc(["STOPPED", "STOPPED"], [False, False]), "stopped"),
    (_doc([], [], {"error": "not running", "pid": None}), "stopped"),
    (_doc([], [], {"error": "no answer", "pid": 4242}), "unknown"),
    # a user who cannot read run/ (0700) cannot tell: not "stopped"
    (_doc([], [], {"error": "Permission denied", "pid": None, "no_access": True}), "unknown"),
])
def test_overall_state_follows_lsb_meanings(doc, state):
    assert overall_state(doc) == state


def test_lint_messages_give_freed_memory_back_and_other_tasks_do_not(monkeypatch):
    from types import SimpleNamespace

    from sqlcheck import worker_hooks
    from sqlcheck.celery_app import EXPAND_TASK, LINT_BATCH_TASK, LINT_TASK

    assert worker_hooks._malloc_trim is not None  # glibc on every machine we run on
    calls = []
    monkeypatch.setattr(worker_hooks, "_malloc_trim", lambda pad: calls.append(pad) or 1)
    for name in (LINT_TASK, LINT_BATCH_TASK, EXPAND_TASK, "celery.ping"):
        worker_hooks.on_task_postrun(sender=SimpleNamespace(name=name))
    assert calls == [0, 0]


def test_a_hard_timeout_is_recorded_once_per_timeout_not_once_per_celery_id():
    """Celery sends task_failure twice for one hard timeout, back to back: the second is ignored.
    The same id timing out again later (a re-sent file keeps its id) is recorded again."""
    from sqlcheck.worker_hooks import DUPLICATE_SIGNAL_WINDOW_S, first_report_of_timeout

    seen: dict[str, float] = {}
    assert first_report_of_timeout(seen, "t1", 100.0)
    assert not first_report_of_timeout(seen, "t1", 100.01)  # the duplicate signal
    assert first_report_of_timeout(seen, "t2", 100.02)
    assert first_report_of_timeout(seen, "t1", 100.0 + 60 + DUPLICATE_SIGNAL_WINDOW_S)  # a later timeout
    for i in range(1100):
        first_report_of_timeout(seen, f"x{i}", 200.0 + i)
    assert len(seen) <= 1000 and "t1" not in seen
