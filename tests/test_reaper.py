"""The reaper's decisions (pure) and one pass against a real database and Redis.

The pass uses a SQLite installation and this session's Redis database; messages it
sends are read back from the Redis queue lists, where no worker consumes them.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from datetime import datetime, timedelta, timezone

import pytest
import redis
from sqlalchemy import update

from sqlcheck import repository as repo
from sqlcheck import reaper, workflow
from sqlcheck.celery_app import ANALYSIS_QUEUE, LINT_BATCH_TASK, ZIP_QUEUE, make_sender
from sqlcheck.locks import lock_key
from sqlcheck.models import Job, Task
from sqlcheck.share import SharePaths
from sqlcheck.workflow import Runtime
from tests.conftest import _make_stack, _reset_redis
from tests.helpers import make_zip


def test_decisions():
    assert reaper.decide_in_progress(1, lock_held=True, max_attempts=3) == "skip"
    assert reaper.decide_in_progress(1, lock_held=False, max_attempts=3) == "resend"
    assert reaper.decide_in_progress(3, lock_held=False, max_attempts=3) == "fail"
    assert reaper.decide_pending(0, queued=True, lock_held=False, max_attempts=3) == "skip"
    assert reaper.decide_pending(0, queued=False, lock_held=True, max_attempts=3) == "skip"
    assert reaper.decide_pending(2, queued=False, lock_held=False, max_attempts=3) == "resend"
    assert reaper.decide_pending(3, queued=False, lock_held=False, max_attempts=3) == "fail"
    assert reaper.decide_job(queued=True, resends=9, max_attempts=3) == "skip"
    assert reaper.decide_job(queued=False, resends=2, max_attempts=3) == "resend"
    assert reaper.decide_job(queued=False, resends=3, max_attempts=3) == "fail"


def test_unreadable_message_is_ignored():
    assert reaper.message_task_id_and_args(b"not json") == (None, [])


def _job_with_tasks(rt, n=3, sql="SELECT 1\n") -> tuple[str, list[str]]:
    job_id = rt.stack.submit(make_zip({f"f{i}.sql": sql for i in range(n)}))
    redis.Redis.from_url(rt.settings.broker_url).delete(ZIP_QUEUE)  # no zip worker: expand here
    workflow.expand_job(rt, job_id, lambda ids: None)
    with rt.db.session() as s:
        return job_id, [t.id for t in repo.list_tasks(s, job_id)]


def _queued(rt, queue):
    client = redis.Redis.from_url(rt.settings.broker_url)
    return sorted(reaper.queued_args(client, queue))


def _pass(rt, now=None):
    client = redis.Redis.from_url(rt.settings.broker_url)
    return reaper.reap_once(rt, client, reaper.Sender(rt.settings), now)


def test_never_sent_tasks_are_sent_once_and_queued_ones_are_left(rt):
    job_id, ids = _job_with_tasks(rt)
    report = _pass(rt, datetime.now(timezone.utc) + timedelta(seconds=1))
    assert report.resent_tasks == 3 and _queued(rt, ANALYSIS_QUEUE) == sorted(ids)
    again = _pass(rt, datetime.now(timezone.utc) + timedelta(seconds=1))
    assert again.resent_tasks == 0 and again.skipped == 3  # their messages wait in the queue
    assert len(redis.Redis.from_url(rt.settings.broker_url).lrange(ANALYSIS_QUEUE, 0, -1)) == 3


def test_a_lost_task_behind_a_long_queued_backlog_is_still_found(rt, monkeypatch):
    """One pass used to look at the oldest 2,500 stale PENDING rows only: when they all wait in the
    queue (a backlog), the lost rows of later jobs were never looked at until it drained."""
    monkeypatch.setattr(reaper, "PENDING_PAGE_ROWS", 2)
    _backlog_job, backlog = _job_with_tasks(rt, n=5)
    reaper.Sender(rt.settings).lint(backlog)  # queued, waiting for a worker
    _job_id, (lost,) = _job_with_tasks(rt, n=1)  # never sent
    report = _pass(rt, datetime.now(timezone.utc) + timedelta(seconds=1))
    assert report.resent_tasks == 1 and report.skipped == 5
    assert _queued(rt, ANALYSIS_QUEUE) == sorted([*backlog, lost])


def test_files_of_a_queued_batch_message_are_not_sent_again(rt):
    job_id, ids = _job_with_tasks(rt)
    make_sender(rt.settings).send_task(LINT_BATCH_TASK, args=[ids], task_id=f"batch-{ids[0]}", queue=ANALYSIS_QUEUE)
    assert _queued(rt, ANALYSIS_QUEUE) == sorted(ids)
    report = _pass(rt, datetime.now(timezone.utc) + timedelta(seconds=1))
    assert report.resent_tasks == 0 and report.skipped == 3
    assert len(redis.Redis.from_url(rt.settings.broker_url).lrange(ANALYSIS_QUEUE, 0, -1)) == 1


def test_stranded_in_progress_task_is_resent_unless_a_lock_is_held(rt):
    job_id, ids = _job_with_tasks(rt, 2)
    with rt.db.session() as s:
        for task_id in ids:
            repo.claim_task(s, task_id, "dead@host", rt.settings.max_attempts)
    client = redis.Redis.from_url(rt.settings.broker_url)
    client.set(lock_key(ids[0]), "alive@host|1|x", ex=60)
    later = datetime.now(timezone.utc) + timedelta(seconds=rt.settings.hard_time_limit_s + 10)
    report = _pass(rt, later)
    assert report.resent_tasks == 1 and _queued(rt, ANALYSIS_QUEUE) == [ids[1]]
    with rt.db.session() as s:
        assert repo.get_task(s, ids[1]).status == "PENDING" and repo.get_task(s, ids[0]).status == "IN_PROGRESS"


def test_attempts_used_up_ends_failure_and_finalizes(rt):
    job_id, ids = _job_with_tasks(rt, 1)
    with rt.db.session() as s:
        s.execute(update(Task).where(Task.id == ids[0]).values(attempts=rt.settings.max_attempts))
    report = _pass(rt, datetime.now(timezone.utc) + timedelta(seconds=1))
    assert report.failed_tasks == 1
    with rt.db.session() as s:
        task, job = repo.get_task(s, ids[0]), repo.get_job(s, job_id)
    assert (task.status, task.failure_reason) == ("FAILURE", "worker_lost")
    assert job.status == "FAILED"


@pytest.mark.parametrize("who_gives_up", ["reaper", "late delivery"])
def test_written_result_of_a_row_put_back_to_pending_is_recorded_when_attempts_are_used_up(rt, who_gives_up):
    """A child killed after writing a file's result and before recording it; the reaper put the
    row back to PENDING and the attempts are used up. The whole result file makes it SUCCESS
    (it used to end FAILURE worker_lost), whether the reaper or a late delivery gives up on it."""
    job_id, ids = _job_with_tasks(rt, 1, sql="select a,b from t\n")
    with workflow.file_connections(rt) as (conn, claims):
        linted = workflow.lint_file(rt, conn, claims, ids[0], "dead@host")  # written, never recorded
    assert linted is not None and rt.share.absolute(linted.result.result_file_path).is_file()
    with rt.db.session() as s:
        s.execute(update(Task).where(Task.id == ids[0]).values(status="PENDING", attempts=rt.settings.max_attempts))
    redis.Redis.from_url(rt.settings.broker_url).delete(ANALYSIS_QUEUE)
    if who_gives_up == "reaper":
        assert _pass(rt, datetime.now(timezone.utc) + timedelta(seconds=1)).failed_tasks == 0
    else:
        workflow.lint_task(rt, ids[0], "late@host")
    with rt.db.session() as s:
        task, job = repo.get_task(s, ids[0]), repo.get_job(s, job_id)
    assert (task.status, task.failure_reason, task.result_file_path) == ("SUCCESS", None, linted.result.result_file_path)
    assert task.violation_count == linted.result.violation_count > 0
    assert job.status == "SUCCESS"


def test_a_killed_batch_leaves_the_files_another_delivery_is_linting_to_it(rt):
    """Batch message batch-1 held a's lock and claimed it; b's lock was held by another delivery
    (the batch sent b on to wait), which claimed b; c was not started. When batch-1's child is
    killed, a is its to end, c is sent again, and b is left to the delivery linting it (it used
    to be ended FAILURE, and that delivery's result thrown away)."""
    from sqlcheck.locks import acquire_many
    from sqlcheck.worker_hooks import killed_batch_files

    job_id, (a, b, c) = _job_with_tasks(rt, 3)
    client = redis.Redis.from_url(rt.settings.broker_url)
    acquire_many(client, [b], "other@host", 60, owner="single-b")
    held, busy = acquire_many(client, [a, b, c], "analysis@host", 60, owner="batch-1")
    assert busy == [b]
    with rt.db.session() as s:
        for task_id in (a, b):
            repo.claim_task(s, task_id, "analysis@host", rt.settings.max_attempts)
    assert killed_batch_files(rt, client, [a, b, c], "batch-1") == ([a], [c])
    client.delete(*(lock_key(t) for t in (a, b, c)))
    assert killed_batch_files(rt, client, [a, b, c], "batch-1") == ([a, b], [c])  # no lock: nobody else
    unreadable = redis.Redis(port=1, socket_connect_timeout=1)  # nobody can tell: none is ended here
    assert killed_batch_files(rt, unreadable, [a, b, c], "batch-1") == ([], [c])


def test_a_killed_message_frees_only_its_own_locks(rt):
    """After a hard limit or a memory kill, the message's files may run again on another node at
    once (they used to wait for the lock's TTL there); a lock another delivery holds stays."""
    from sqlcheck.locks import acquire_many, release_owned

    _job_id, (a, b, c) = _job_with_tasks(rt, 3)
    client = redis.Redis.from_url(rt.settings.broker_url)
    acquire_many(client, [b], "other@host", 60, owner="single-b")
    acquire_many(client, [a, b, c], "analysis@host", 60, owner="batch-1")
    release_owned(client, [a, b, c], "batch-1")
    assert [client.exists(lock_key(t)) for t in (a, b, c)] == [0, 1, 0]
    release_owned(client, [b], "batch-")  # a prefix of the owner is not the owner
    assert client.exists(lock_key(b)) == 1


def test_a_memory_kill_frees_the_killed_childs_locks_not_a_redeliverys(rt):
    """During a warm stop the watchdog records in Celery's shutdown thread while the main thread
    has already given the message back: a redelivery under the same Celery id may hold locks
    elsewhere. Only the killed child's locks (node|pid|owner) are freed, and only its files are
    taken for its own."""
    import os

    from sqlcheck.locks import acquire_many, holder_prefix, release_owned

    _job_id, (a, b) = _job_with_tasks(rt, 2)
    client = redis.Redis.from_url(rt.settings.broker_url)
    acquire_many(client, [a, b], "analysis@other", 60, owner="batch-1")  # the redelivery, this pid
    killed = holder_prefix("analysis@host", os.getpid() + 1, "batch-1")  # the child the watchdog killed
    release_owned(client, [a, b], "batch-1", killed)
    assert client.exists(lock_key(a), lock_key(b)) == 2  # not the killed child's: kept
    release_owned(client, [a, b], "batch-1", holder_prefix("analysis@other", os.getpid(), "batch-1"))
    assert client.exists(lock_key(a), lock_key(b)) == 0


def test_a_redelivered_expand_of_an_expanded_job_only_sends_what_was_not_sent(rt):
    """The first delivery created the rows and died before sending (here: its sends failed). The
    redelivery sends them and does not expand again: it works even with the upload gone (an
    expansion would fail the job 'not found'), and never rewrites sources being linted."""
    job_id = rt.stack.submit(make_zip({f"f{i}.sql": "SELECT 1\n" for i in range(3)}))
    redis.Redis.from_url(rt.settings.broker_url).delete(ZIP_QUEUE)

    def broken(_messages):
        raise ConnectionError("broker gone")

    workflow.expand_job(rt, job_id, broken)
    with rt.db.session() as s:
        source_path = repo.get_job(s, job_id).source_path
        ids = sorted(t.id for t in repo.list_tasks(s, job_id))
    rt.share.absolute(source_path).unlink()
    sent = []
    workflow.expand_job(rt, job_id, lambda messages: sent.extend(t for m in messages for t in m))
    assert sorted(sent) == ids
    with rt.db.session() as s:
        job = repo.get_job(s, job_id)
        assert (job.status, job.total_tasks) == ("PROCESSING", 3)
        assert all(t.dispatched_at is not None for t in repo.list_tasks(s, job_id))


def test_a_second_expansion_that_loses_the_race_to_a_finished_job_keeps_its_sources(rt, monkeypatch, caplog):
    """Two expansions of one job, both started before either wrote rows (a reaper re-send and the
    original back from the visibility timeout): the later one found the job no longer PROCESSING
    and removed the sources of a job that had ended SUCCESS (the contract keeps them)."""
    caplog.set_level("INFO", logger="sqlcheck")
    job_id = rt.stack.submit(make_zip({"a.sql": "SELECT 1\n"}))
    real = workflow.expand_zip_safely

    def the_other_delivery_finishes_first(*args):
        monkeypatch.setattr(workflow, "expand_zip_safely", real)
        workflow.expand_job(rt, job_id, lambda messages: None)
        with rt.db.session() as s:
            for t in repo.list_tasks(s, job_id):
                workflow.lint_task(rt, t.id, "test-host")
        return real(*args)

    monkeypatch.setattr(workflow, "expand_zip_safely", the_other_delivery_finishes_first)
    workflow.expand_job(rt, job_id, lambda messages: None)
    with rt.db.session() as s:
        job, (task,) = repo.get_job(s, job_id), repo.list_tasks(s, job_id)
    assert job.status == "SUCCESS" and task.status == "SUCCESS"
    assert rt.share.absolute(task.source_file_path).read_text() == "SELECT 1\n"
    assert "expanded by another delivery; duplicate expansion dropped" in caplog.text


def test_an_expansion_cut_short_after_its_rows_were_written_does_not_fail_the_job(rt, caplog):
    """The zip time limit, a memory kill or an error after the task rows were committed (during the
    cache lookup, the sends or the finalize) must not fail the job: its files may be queued or
    being linted, and failing it removed their sources. The reaper sends what was not sent."""
    job_id = rt.stack.submit(make_zip({f"f{i}.sql": "SELECT 1\n" for i in range(2)}))
    redis.Redis.from_url(rt.settings.broker_url).delete(ZIP_QUEUE)

    def cut_short(_messages):
        raise RuntimeError("cut short while sending")  # the rows stay PENDING, never sent

    workflow.expand_job(rt, job_id, cut_short)
    assert not workflow.fail_job(rt, job_id, "expanding the archive took longer than 60 s")  # as the task does
    with rt.db.session() as s:
        job, tasks = repo.get_job(s, job_id), repo.list_tasks(s, job_id)
    assert (job.status, job.total_tasks, job.error_message) == ("PROCESSING", 2, None)
    assert all(rt.share.absolute(t.source_file_path).is_file() for t in tasks)
    assert "not failed although expanding the archive took longer than 60 s" in caplog.text
    report = _pass(rt, datetime.now(timezone.utc) + timedelta(seconds=1))
    assert report.resent_tasks == 2 and _queued(rt, ANALYSIS_QUEUE) == sorted(t.id for t in tasks)


@pytest.mark.parametrize("bad_id", ["../../../etc/evil", "job-42", "a" * 36, "+" + "1" * 31 + "-" * 4,
                                    "{12345678-1234-5678-1234-567812345678}"])
def test_a_job_id_that_is_not_a_uuid_fails_the_job_and_touches_no_file(rt, bad_id):
    """jobs.id is a UUID by contract (the job's folder and its task ids derive from it). A row
    with another id, such as a path, used to raise in expand, in fail_job and in the reaper's
    pass, so the job stayed PROCESSING and the reaper process died on it every pass."""
    upload = rt.share.absolute("uploads/x.zip")
    upload.parent.mkdir(parents=True, exist_ok=True)
    upload.write_bytes(make_zip({"a.sql": "SELECT 1\n"}))
    with rt.db.session() as s:
        repo.insert_job(s, bad_id, "uploads/x.zip", None, None)
    before = sorted(p for p in rt.share.root.parent.rglob("*"))
    workflow.expand_job(rt, bad_id, lambda messages: None)
    with rt.db.session() as s:
        job = repo.get_job(s, bad_id)
        assert (job.status, job.error_message) == ("FAILED", f"job id {bad_id!r} is not a UUID; nothing was expanded")
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    _pass(rt, later)  # the reaper meets the FAILED row without a summary.json: the pass goes on
    assert sorted(p for p in rt.share.root.parent.rglob("*")) == before


@pytest.mark.parametrize("options", ['{"rules": ' + "[" * 100_000 + "]" * 100_000 + "}", '{"rules": null}'])
def test_job_options_the_parser_cannot_take_fail_the_job_with_its_summary(rt, options):
    """JSON nested deeper than the parser's stack raised RecursionError (not a ValueError) in
    expand and again in fail_job's summary: the job stayed PROCESSING. `null` as rules became
    the rule "None", which silenced every rule."""
    job_id = rt.stack.submit(make_zip({"a.sql": "SELECT 1\n"}))
    with rt.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(options=options))
    workflow.expand_job(rt, job_id, lambda messages: None)
    with rt.db.session() as s:
        job = repo.get_job(s, job_id)
        assert job.status == "FAILED" and job.error_message.startswith("job option"), job.error_message
    summary = json.loads(rt.share.absolute(SharePaths.summary_rel(job_id)).read_text())
    assert summary["status"] == "FAILED" and summary["configuration"]["options"] == {}


def test_a_job_in_a_status_outside_the_contract_is_left_alone(rt, caplog):
    job_id = rt.stack.submit(make_zip({"a.sql": "SELECT 1\n"}))
    with rt.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="CANCELLED"))
    workflow.expand_job(rt, job_id, lambda messages: None)
    with rt.db.session() as s:
        assert repo.get_job(s, job_id).status == "CANCELLED" and repo.list_tasks(s, job_id) == []
    assert "status 'CANCELLED' is neither PENDING nor PROCESSING; message dropped" in caplog.text
    assert not rt.share.job_dir(job_id).exists()


def test_a_source_cut_short_on_the_share_fails_its_file_and_is_never_linted_as_clean(rt):
    """Sources are not synced to disk before their rows commit: a crash of the share's machine can
    leave one empty. Linted, an empty file is clean; its row's SHA-256 says it is not the file."""
    job_id, ids = _job_with_tasks(rt, n=2, sql="select a,b from t\n")
    with rt.db.session() as s:
        tasks = repo.list_tasks(s, job_id)
    rt.share.absolute(tasks[0].source_file_path).write_bytes(b"")  # what the crash left
    for t in tasks:
        workflow.lint_task(rt, t.id, "test-host")
    with rt.db.session() as s:
        cut, whole = (repo.get_task(s, t.id) for t in tasks)
    assert (cut.status, cut.failure_reason) == ("FAILURE", "missing_source")
    assert "not what the archive held" in cut.error_message and cut.result_file_path is None
    assert (whole.status, whole.violation_count) == ("SUCCESS", 2)


def test_unexpanded_job_gets_its_expand_message_again_then_fails(rt):
    job_id = rt.stack.submit(make_zip({"a.sql": "SELECT 1\n"}))
    client = redis.Redis.from_url(rt.settings.broker_url)
    client.delete(ZIP_QUEUE)  # the message was lost
    later = datetime.now(timezone.utc) + timedelta(seconds=rt.settings.zip_hard_time_limit_s + 10)
    assert _pass(rt, later).resent_jobs == 1 and _queued(rt, ZIP_QUEUE) == [job_id]
    assert _pass(rt, later).resent_jobs == 0  # queued again: left alone
    for _ in range(rt.settings.max_attempts):
        client.delete(ZIP_QUEUE)
        _pass(rt, later)
    with rt.db.session() as s:
        job = repo.get_job(s, job_id)
    assert job.status == "FAILED" and "never expanded" in job.error_message


def test_a_re_sent_expansion_that_is_running_is_neither_sent_again_nor_failed(rt):
    """The first expansion's host died long ago; the re-sent one is running (its message unacked,
    not in the queue). The job must not look lost: three more passes would have failed it and
    deleted the sources the live expansion is writing."""
    job_id = rt.stack.submit(make_zip({"a.sql": "SELECT 1\n"}))
    redis.Redis.from_url(rt.settings.broker_url).delete(ZIP_QUEUE)
    long_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    with rt.db.session() as s:
        assert repo.claim_job(s, job_id)
        s.execute(update(Job).where(Job.id == job_id).values(started_at=long_ago))
    with rt.db.session() as s:
        assert repo.claim_job(s, job_id)  # the re-sent expansion starts
    for _ in range(rt.settings.max_attempts + 1):
        report = _pass(rt, datetime.now(timezone.utc) + timedelta(seconds=1))
        assert report.resent_jobs == 0 and report.failed_jobs == 0
    with rt.db.session() as s:
        assert repo.get_job(s, job_id).status == "PROCESSING"


def test_orphaned_job_is_finalized_and_a_missing_summary_written(rt):
    job_id, ids = _job_with_tasks(rt, 2)
    with rt.db.session() as s:
        for task_id in ids:
            repo.fail_task(s, task_id, repo.FailureReason.INTERNAL, "x")  # no finalize: its finisher "died"
    report = _pass(rt)
    assert report.finalized_jobs == 1
    summary = rt.share.absolute(rt.share.summary_rel(job_id))
    assert json.loads(summary.read_text())["status"] == "FAILED"
    summary.unlink()
    with rt.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(finished_at=datetime.now(timezone.utc) - timedelta(minutes=1)))
    assert _pass(rt).summaries_written == 1 and summary.exists()


@pytest.fixture
def tiny_share(tmp_path):
    """A real 1 MiB file system (tmpfs) as the share, so ENOSPC comes from the kernel."""
    mount = tmp_path / "tiny-share"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_while_expanding_fails_the_job_and_cleans_up(tmp_path, redis_url, tiny_share):
    _reset_redis(redis_url)
    stack = _make_stack(tmp_path, None, redis_url, NFS_SHARE_ROOT_PATH=str(tiny_share))
    files = {f"d/f{i:02}.sql": "".join(f"SELECT {i * 7919 + j} AS c{j};\n" for j in range(5000)) for i in range(16)}
    job_id = stack.submit(make_zip(files))  # ~0.3 MB on the share, ~2 MB once expanded
    rt = Runtime.from_settings(stack.settings)
    workflow.expand_job(rt, job_id, lambda ids: None)
    with rt.db.session() as s:
        job = repo.get_job(s, job_id)
    assert job.status == "FAILED", job.error_message
    assert job.error_message.startswith("the share is full (No space left on device)")
    assert not rt.share.source_dir(job_id).exists()
    assert zipfile.is_zipfile(rt.share.absolute(job.source_path))  # the upload itself is left alone
    assert json.loads(rt.share.absolute(rt.share.summary_rel(job_id)).read_text())["status"] == "FAILED"
    rt.db.engine.dispose()


def test_one_reaper_leads_and_another_takes_over(redis_url):
    _reset_redis(redis_url)
    client = redis.Redis.from_url(redis_url)
    assert reaper._lead(client, "a|1", ttl_s=2)
    assert not reaper._lead(client, "b|2", ttl_s=2)
    assert reaper._lead(client, "a|1", ttl_s=2)  # the leader renews
    client.delete(reaper.REAPER_LOCK)  # as if its TTL ran out after the leader died
    assert reaper._lead(client, "b|2", ttl_s=2)
    _reset_redis(redis_url)


def test_a_pass_that_outlasts_the_leader_lock_stops_before_its_next_step(rt, caplog):
    job_id, ids = _job_with_tasks(rt)  # PENDING: the pass's second step would send them again
    client = redis.Redis.from_url(rt.settings.broker_url)
    client.set(reaper.REAPER_LOCK, "other-node|2", ex=60)  # meanwhile another reaper took the lock
    report = reaper.reap_once(rt, client, reaper.Sender(rt.settings), datetime.now(timezone.utc) + timedelta(seconds=1),
                              still_leading=lambda: reaper._lead(client, "this-node|1", 60))
    assert report.resent_tasks == 0 and "another reaper leads now" in caplog.text
    assert client.get(reaper.REAPER_LOCK) == b"other-node|2" and client.ttl(reaper.REAPER_LOCK) <= 60
