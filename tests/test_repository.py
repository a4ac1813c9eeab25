"""Row reads and writes on both databases: idempotent inserts, conditional moves, one finalizer."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import create_engine, text, update

from sqlcheck import repository as repo
from sqlcheck.database import Database, upgrade_schema
from sqlcheck.models import Job
from sqlcheck.states import FailureReason, JobStatus, TaskStatus


def fresh_database(url: str) -> Database:
    if url.startswith("postgresql"):
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS tasks, jobs, alembic_version CASCADE"))
        engine.dispose()
    upgrade_schema(url)
    return Database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'repo.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_server_url")
    database = fresh_database(url)
    yield database
    database.engine.dispose()


@pytest.fixture
def pg_db(pg_server_url):
    database = fresh_database(pg_server_url)
    yield database
    database.engine.dispose()


def new_job(db: Database, members: list[str], rejected: dict[str, FailureReason] | None = None) -> str:
    """A PROCESSING job with one task row per member, as expand_job leaves it."""
    job_id = str(uuid.uuid4())
    rejected = rejected or {}
    with db.session() as s:
        repo.insert_job(s, job_id, f"uploads/{job_id}.zip", None)
    with db.session() as s:
        assert repo.claim_job(s, job_id)
    with db.session() as s:
        repo.create_tasks(s, job_id, [new_task(m, rejected.get(m)) for m in members])
    return job_id


def new_task(member: str, rejected: FailureReason | None = None) -> repo.NewTask:
    return repo.NewTask(member, None if rejected else f"jobs/x/sources/{member}", 10, "0" * 64, rejected,
                        "rejected" if rejected else None)


def task_id(job_id: str, member: str) -> str:
    return repo.task_id_for(job_id, member)


def job_row(db: Database, job_id: str):
    with db.session() as s:
        return repo.get_job(s, job_id)


def task_row(db: Database, tid: str):
    with db.session() as s:
        return repo.get_task(s, tid)


def claim(db, tid, max_attempts=3) -> bool:
    with db.session() as s:
        return repo.claim_task(s, tid, "host-1", max_attempts) is not None


def succeed(db, tid) -> bool:
    with db.session() as s:
        return repo.finish_task_success(s, repo.FileResult(tid, f"jobs/x/results/{tid}.json", 2, {"LT01": 2},
                                                            "utf-8", 0.01))


def fail(db, tid, reason=FailureReason.TIMEOUT) -> bool:
    with db.session() as s:
        return repo.fail_task(s, tid, reason, "it failed")


def finalize(db, job_id) -> bool:
    with db.session() as s:
        return repo.finalize_job_if_complete(s, job_id)


# ---- jobs ------------------------------------------------------------------------------


def test_no_task_rows_for_a_job_failed_while_it_was_being_expanded(db):
    """The zip child's hard limit or memory kill fails the job from the main process while the
    child may still reach create_tasks: it must not add rows (and messages) to a FAILED job."""
    job_id = str(uuid.uuid4())
    with db.session() as s:
        repo.insert_job(s, job_id, "uploads/a.zip", None, None)
        repo.claim_job(s, job_id)
    with db.session() as s:
        assert repo.fail_job(s, job_id, "expanding the archive took longer than 60 s")
    with db.session() as s:
        assert repo.create_tasks(s, job_id, [repo.NewTask("a.sql", "jobs/x/sources/a.sql", 9, "00", None, None)]) is None
    with db.session() as s:
        assert repo.list_tasks(s, job_id) == [] and repo.get_job(s, job_id).total_tasks == 0


def test_claim_job_moves_pending_to_processing_once_terminal_stays(db):
    job_id = str(uuid.uuid4())
    with db.session() as s:
        repo.insert_job(s, job_id, "uploads/a.zip", "postgres", {"rules": ["LT01"]})
    row = job_row(db, job_id)
    assert (row.status, row.dialect, row.total_tasks, row.started_at) == ("PENDING", "postgres", 0, None)
    with db.session() as s:
        assert repo.claim_job(s, job_id)
    started = job_row(db, job_id).started_at
    assert started is not None
    with db.session() as s:
        assert repo.claim_job(s, job_id)  # a redelivered message may claim a PROCESSING job again
    restarted = job_row(db, job_id).started_at
    assert restarted > started  # not expanded yet: when the latest expansion began (the reaper reads it)
    with db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(total_tasks=1))
    with db.session() as s:
        assert repo.claim_job(s, job_id)
    assert job_row(db, job_id).started_at == restarted  # expanded: the start time is kept
    with db.session() as s:
        assert not repo.fail_job(s, job_id, "cut short")  # expanded: it ends from its files
        s.execute(update(Job).where(Job.id == job_id).values(total_tasks=0))
    with db.session() as s:
        assert repo.fail_job(s, job_id, "corrupt archive")
    with db.session() as s:
        assert not repo.claim_job(s, job_id)
        assert not repo.fail_job(s, job_id, "again")
    row = job_row(db, job_id)
    assert (row.status, row.error_message) == ("FAILED", "corrupt archive")
    assert row.finished_at is not None


def test_claim_unknown_job_is_false(db):
    with db.session() as s:
        assert not repo.claim_job(s, str(uuid.uuid4()))


# ---- tasks ---------------------------------------------------------------------------


def test_create_tasks_is_idempotent(db):
    members = ["a/x.sql", "b/x.sql", "evil.sql"]
    rejected = {"evil.sql": FailureReason.UNSAFE_MEMBER}
    job_id = new_job(db, members, rejected)
    with db.session() as s:
        first = {t.id: (t.archive_member, t.status, t.failure_reason) for t in repo.list_tasks(s, job_id)}
    with db.session() as s:  # the redelivered zip message does it all again
        total = repo.create_tasks(s, job_id, [new_task(m, rejected.get(m)) for m in members])
    with db.session() as s:
        again = {t.id: (t.archive_member, t.status, t.failure_reason) for t in repo.list_tasks(s, job_id)}
    assert total == 3 and again == first
    assert first[task_id(job_id, "evil.sql")] == ("evil.sql", "FAILURE", "unsafe_member")
    assert first[task_id(job_id, "a/x.sql")] == ("a/x.sql", "PENDING", None)
    assert job_row(db, job_id).total_tasks == 3


def test_task_ids_are_deterministic_per_job_and_member():
    job_a, job_b = str(uuid.uuid4()), str(uuid.uuid4())
    assert repo.task_id_for(job_a, "x.sql") == repo.task_id_for(job_a, "x.sql")
    assert repo.task_id_for(job_a, "x.sql") != repo.task_id_for(job_b, "x.sql")
    assert repo.task_id_for(job_a, "a/x.sql") != repo.task_id_for(job_a, "b/x.sql")


def test_create_tasks_in_batches(db):
    members = [f"d{i % 7}/f{i}.sql" for i in range(1203)]  # more than one insert batch
    job_id = new_job(db, members)
    with db.session() as s:
        assert repo.create_tasks(s, job_id, [new_task(m) for m in members[:600]]) == 1203
        assert len(repo.undispatched_tasks(s, job_id)) == 1203


def test_dispatch_is_recorded_so_a_redelivery_resends_only_the_rest(db):
    job_id = new_job(db, ["a.sql", "b.sql", "c.sql", "bad.sql"], {"bad.sql": FailureReason.TOO_LARGE})
    with db.session() as s:
        pending = [t for t, _ in repo.undispatched_tasks(s, job_id)]
    assert pending == [task_id(job_id, m) for m in ("a.sql", "b.sql", "c.sql")]  # never the rejected one
    with db.session() as s:
        repo.mark_dispatched(s, pending[:2])
    with db.session() as s:
        assert [t for t, _ in repo.undispatched_tasks(s, job_id)] == pending[2:]


def test_claim_task_is_conditional_and_counts_attempts(db):
    job_id = new_job(db, ["a.sql"])
    tid = task_id(job_id, "a.sql")
    assert claim(db, tid, max_attempts=2)
    row = task_row(db, tid)
    assert (row.status, row.attempts, row.worker_hostname) == ("IN_PROGRESS", 1, "host-1")
    assert claim(db, tid, max_attempts=2)  # redelivered after a dead child: a second attempt
    assert not claim(db, tid, max_attempts=2)  # the attempt budget is spent
    assert task_row(db, tid).attempts == 2
    assert succeed(db, tid)
    assert not claim(db, tid, max_attempts=99)  # terminal rows are never claimed again


def test_give_back_attempt_only_uncounts_a_running_task(db):
    job_id = new_job(db, ["a.sql"])
    tid = task_id(job_id, "a.sql")
    with db.session() as s:
        assert not repo.give_back_attempt(s, tid)  # PENDING, nothing counted yet
    for _ in range(3):  # three deliveries retrying an outage: each claims, then gives its attempt back
        assert claim(db, tid, max_attempts=1)
        with db.session() as s:
            assert repo.give_back_attempt(s, tid)
    assert task_row(db, tid).attempts == 0
    assert claim(db, tid, max_attempts=1) and succeed(db, tid)
    with db.session() as s:
        assert not repo.give_back_attempt(s, tid)  # terminal rows keep their count
    assert task_row(db, tid).attempts == 1


def test_finish_is_conditional_first_ending_wins(db):
    job_id = new_job(db, ["a.sql", "b.sql"])
    a, b = task_id(job_id, "a.sql"), task_id(job_id, "b.sql")
    assert not succeed(db, a)  # not claimed: nothing to finish
    claim(db, a)
    assert succeed(db, a)
    assert not succeed(db, a)
    assert not fail(db, a)  # a late failure handler cannot overwrite SUCCESS
    row = task_row(db, a)
    assert (row.status, row.violation_count, row.encoding, row.failure_reason) == ("SUCCESS", 2, "utf-8", None)
    claim(db, b)
    assert fail(db, b, FailureReason.MEMORY)
    assert not fail(db, b, FailureReason.TIMEOUT)  # the first reason is kept
    assert not succeed(db, b)
    row = task_row(db, b)
    assert (row.status, row.failure_reason) == ("FAILURE", "memory")
    with db.session() as s:
        assert repo.open_task_ids(s, job_id) == []


def result_for(tid: str, count: int = 2) -> repo.FileResult:
    return repo.FileResult(tid, f"jobs/x/results/{tid}.json", count, {"LT01": count}, "utf-8", 0.01)


def test_finishing_together_is_all_or_nothing(db):
    """A batch's files are recorded in one transaction; if one had ended meanwhile (the reaper, a
    duplicate), none is changed, and the caller finishes them one by one to learn which."""
    job_id = new_job(db, ["a.sql", "b.sql", "c.sql"])
    a, b, c = (task_id(job_id, m) for m in ("a.sql", "b.sql", "c.sql"))
    for tid in (a, b, c):
        claim(db, tid)
    assert fail(db, c, FailureReason.TIMEOUT)
    with db.autocommit() as conn:
        assert not repo.finish_tasks_success_together(conn, [result_for(a), result_for(b), result_for(c)])
        assert [task_row(db, t).status for t in (a, b)] == ["IN_PROGRESS", "IN_PROGRESS"]  # rolled back
        assert repo.finish_tasks_success_together(conn, [result_for(a, 1), result_for(b, 3)])
        rows = [task_row(db, t) for t in (a, b, c)]  # another connection sees them: committed
    assert [(r.status, r.violation_count) for r in rows] == [("SUCCESS", 1), ("SUCCESS", 3), ("FAILURE", None)]
    assert rows[0].finished_at is not None and rows[0].duration_s == pytest.approx(0.01)


@pytest.mark.parametrize(
    "outcomes,status",
    [
        ({"a.sql": "ok", "b.sql": "ok"}, "SUCCESS"),
        ({"a.sql": "ok", "b.sql": "fail"}, "PARTIAL_SUCCESS"),
        ({"a.sql": "fail", "b.sql": "fail"}, "FAILED"),
    ],
)
def test_finalize_exactly_once_with_the_right_status(db, outcomes, status):
    job_id = new_job(db, list(outcomes))
    tids = {m: task_id(job_id, m) for m in outcomes}
    for m, outcome in outcomes.items():
        assert not finalize(db, job_id)  # something is still open
        claim(db, tids[m])
        succeed(db, tids[m]) if outcome == "ok" else fail(db, tids[m])
    assert finalize(db, job_id)
    assert not finalize(db, job_id)
    row = job_row(db, job_id)
    ok = sum(1 for o in outcomes.values() if o == "ok")
    assert (row.status, row.total_tasks, row.succeeded_tasks, row.failed_tasks) == (status, 2, ok, 2 - ok)
    assert row.finished_at is not None
    assert (row.error_message is not None) == (status == "FAILED")
    with db.session() as s:
        assert repo.task_progress(s, job_id) == {k: v for k, v in
                                                 {"SUCCESS": ok, "FAILURE": 2 - ok}.items() if v}


def test_job_without_tasks_is_never_finalized_as_success(db):
    job_id = new_job(db, [])
    assert not finalize(db, job_id)
    assert job_row(db, job_id).status == "PROCESSING"


def test_job_of_only_rejected_members_finalizes_failed(db):
    job_id = new_job(db, ["big.sql"], {"big.sql": FailureReason.TOO_LARGE})
    assert finalize(db, job_id)
    row = job_row(db, job_id)
    assert (row.status, row.failed_tasks, row.succeeded_tasks) == ("FAILED", 1, 0)


def test_counts_by_status(db):
    new_job(db, ["a.sql"])
    with db.session() as s:
        counts = repo.job_counts_by_status(s)
        assert counts.get("PROCESSING", 0) >= 1
        assert [j.status for j in repo.jobs_in_status(s, ["PROCESSING"])].count("PROCESSING") >= 1


# ---- the race: two workers end the last two files of one job at the same moment ---------------

ROUNDS = 100


def test_two_last_finishers_finalize_exactly_once(pg_db):
    """Two threads (own connections) finish the last two tasks behind a barrier, then both finalize."""
    db = pg_db
    for round_no in range(ROUNDS):
        members = [f"f{i}.sql" for i in range(5)]
        job_id = new_job(db, members)
        tids = [task_id(job_id, m) for m in members]
        for tid in tids:
            assert claim(db, tid)
        for tid in tids[:3]:
            assert succeed(db, tid)
        barrier = threading.Barrier(2)
        finalizers: list[str] = []
        errors: list[BaseException] = []

        def finish_last(tid: str, ok: bool) -> None:
            try:
                barrier.wait(10)
                assert succeed(db, tid) if ok else fail(db, tid)
                if round_no % 2:
                    barrier.wait(10)  # every other round: both finalize at the same instant too
                if finalize(db, job_id):
                    finalizers.append(tid)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=finish_last, args=(tids[3], True)),
                   threading.Thread(target=finish_last, args=(tids[4], round_no % 3 != 0))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), f"round {round_no}: a finisher hung"
        assert not errors, errors
        assert len(finalizers) == 1, f"round {round_no}: finalized by {finalizers}"
        row = job_row(db, job_id)
        failed = 1 if round_no % 3 == 0 else 0
        assert (row.status, row.total_tasks, row.succeeded_tasks, row.failed_tasks) == (
            JobStatus.PARTIAL_SUCCESS.value if failed else JobStatus.SUCCESS.value, 5, 5 - failed, failed)
        with db.session() as s:
            assert TaskStatus.IN_PROGRESS.value not in repo.task_progress(s, job_id)


def test_undispatched_tasks_come_largest_first(db):
    """Big files start first, so no child is left linting one alone at the end of a job."""
    job_id = str(uuid.uuid4())
    sizes = {"a.sql": 10, "b.sql": 90_000, "c.sql": 500, "d.sql": 500}
    with db.session() as s:
        repo.insert_job(s, job_id, f"uploads/{job_id}.zip", None)
        repo.claim_job(s, job_id)
    with db.session() as s:
        repo.create_tasks(s, job_id, [repo.NewTask(m, f"jobs/x/sources/{m}", n, "0" * 64) for m, n in sizes.items()])
        pending = [t for t, _ in repo.undispatched_tasks(s, job_id)]
    assert pending == [task_id(job_id, m) for m in ("b.sql", "c.sql", "d.sql", "a.sql")]
