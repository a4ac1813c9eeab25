"""The share: no path leaves its root, and writes are all-or-nothing."""

import json
import os
import threading

import pytest

from sqlcheck.share import OutsideShare, SharePaths, atomic_write, resolve_inside, write_new_file


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", "a/\x00b", "jobs/../../outside"])
def test_resolve_inside_refuses_escapes(tmp_path, rel):
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(OutsideShare):
        resolve_inside(root, rel)


def test_resolve_inside_accepts_paths_that_stay(tmp_path):
    assert resolve_inside(tmp_path, "a/b/../c.sql") == tmp_path.resolve() / "a" / "c.sql"
    assert resolve_inside(tmp_path, ".") == tmp_path.resolve()


def test_resolve_inside_refuses_a_symlink_planted_on_disk(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "jobs").mkdir(parents=True)
    outside.mkdir()
    (root / "jobs" / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutsideShare):
        resolve_inside(root, "jobs/evil/x.sql")
    # a link that stays inside the root is fine
    (root / "jobs" / "alias").symlink_to(root / "jobs", target_is_directory=True)
    assert resolve_inside(root, "jobs/alias/y") == (root / "jobs" / "y").resolve()


def test_share_paths_layout(tmp_path):
    share = SharePaths(tmp_path)
    assert share.source_rel("J", "a/x.sql") == "jobs/J/sources/a/x.sql"
    assert share.result_rel("J", "T") == "jobs/J/results/T.json"
    assert share.summary_rel("J") == "jobs/J/summary.json"
    assert share.result_path("J", "T") == share.absolute(share.result_rel("J", "T"))
    assert share.relative(share.absolute("jobs/J/summary.json")) == "jobs/J/summary.json"
    with pytest.raises(OutsideShare):
        share.absolute("jobs/../../x")


@pytest.mark.parametrize("task_id", ["../T", "a/T", ".hidden", "T\x00"])
def test_result_path_takes_plain_task_ids_only(tmp_path, task_id):
    with pytest.raises(OutsideShare):
        SharePaths(tmp_path).result_path("J", task_id)


def test_result_path_refuses_a_results_dir_linked_outside(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "jobs" / "J").mkdir(parents=True)
    outside.mkdir()
    (root / "jobs" / "J" / "results").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutsideShare):
        SharePaths(root).result_path("J", "T")


def test_atomic_write_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "f.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two", fsync=False)
    assert target.read_bytes() == b"two"
    assert sorted(os.listdir(target.parent)) == ["f.json"]  # no temp file left behind


def test_a_file_with_the_longest_name_the_share_holds_can_be_replaced(tmp_path):
    """A redelivered expansion replaces its sources: the temporary name must fit where the name did."""
    target = tmp_path / ("n" * 251 + ".sql")
    write_new_file(target, b"SELECT 1\n")
    write_new_file(target, b"SELECT 2\n")  # exists: replaced by rename
    assert target.read_bytes() == b"SELECT 2\n" and os.listdir(tmp_path) == [target.name]


def test_share_files_are_readable_by_the_group_as_the_umask_says(tmp_path):
    """The web service reads summary.json and the results as another user of the group: files
    get 0666 less the umask (supervisord's 027 gives 0640), not mkstemp's 0600."""
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "summary.json", b"{}")
        atomic_write(tmp_path / "upload.zip", tmp_path / "summary.json")
        write_new_file(tmp_path / "result.json", b"{}")
        atomic_write(tmp_path / "result.json", b"[]", fsync=False)  # a redelivery replaces it
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"summary.json": 0o640, "upload.zip": 0o640, "result.json": 0o640}


def test_atomic_write_streams_a_file(tmp_path):
    """An upload is copied, not read into memory: a Path is streamed in chunks."""
    import tracemalloc

    source = tmp_path / "upload.zip"
    source.write_bytes(os.urandom(16 * 2**20 + 17))  # many chunks, not a multiple of one
    target = tmp_path / "share" / "uploads" / "j.zip"
    tracemalloc.start()
    try:
        atomic_write(target, source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB held to copy a 16 MiB file"
    assert target.read_bytes() == source.read_bytes()
    assert os.listdir(target.parent) == ["j.zip"]


def test_atomic_write_leaves_old_file_and_no_temp_on_failure(tmp_path):
    target = tmp_path / "f"
    atomic_write(target, b"old")


    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]  # write() fails midway
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_reader_never_sees_half_a_file(tmp_path):
    target = tmp_path / "f"
    big_a, big_b = b"a" * 2_000_000, b"b" * 2_000_000
    atomic_write(target, big_a, fsync=False)
    seen = set()
    stop = threading.Event()

    def read():
        while not stop.is_set():
            data = target.read_bytes()
            seen.add((len(data), data[:1], data[-1:]))

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(30):
        atomic_write(target, big_b if i % 2 else big_a, fsync=False)
    stop.set()
    reader.join()
    assert seen <= {(2_000_000, b"a", b"a"), (2_000_000, b"b", b"b")}


def test_task_result_is_written_in_place_then_replaced_whole(tmp_path):
    from sqlcheck.lint_engine import LintReport
    from sqlcheck.result_files import task_result_document, write_task_result

    share = SharePaths(tmp_path)

    def doc(count):
        violations = [{"code": "LT01", "start_line_no": i + 1} for i in range(count)]
        return task_result_document("J", "T", "a.sql", "utf-8", "ansi", LintReport(violations, 0, 0.0))

    rel = write_task_result(share, doc(1))  # the job's first result: its folder is made
    assert rel == "jobs/J/results/T.json"
    written = json.loads((tmp_path / rel).read_text("utf-8"))
    assert written["violation_count"] == 1
    write_task_result(share, doc(3))  # linted again: the file is replaced, not appended to
    assert json.loads((tmp_path / rel).read_text("utf-8"))["violation_count"] == 3
    assert os.listdir(tmp_path / "jobs/J/results") == ["T.json"]  # no temporary file left


def test_a_result_file_is_read_back_only_when_whole_and_its_own(tmp_path):
    """What lets a killed child's written results be recorded later: a partial write reads as none."""
    from sqlcheck.lint_engine import LintReport
    from sqlcheck.result_files import read_task_result, task_result_document, write_task_result

    share = SharePaths(tmp_path)
    assert read_task_result(share, "J", "T") is None  # never written
    violations = [{"code": "LT01", "start_line_no": 1}, {"code": "CP01", "start_line_no": 2}]
    rel = write_task_result(share, task_result_document("J", "T", "a.sql", "latin-1", "ansi",
                                                        LintReport(violations, 0, 0.0)))
    doc = read_task_result(share, "J", "T")
    assert doc is not None and doc["violations"] == violations and doc["encoding"] == "latin-1"
    whole = (tmp_path / rel).read_bytes()
    for cut in (len(whole) - 1, len(whole) // 2, 1, 0):  # a child killed while writing it
        (tmp_path / rel).write_bytes(whole[:cut])
        assert read_task_result(share, "J", "T") is None, cut
    (tmp_path / rel).write_bytes(whole)
    (tmp_path / "jobs/J/results/U.json").write_bytes(whole)  # another task's document under this name
    assert read_task_result(share, "J", "U") is None


def test_sync_to_disk_syncs_the_share_and_reports_an_error(tmp_path):
    (tmp_path / "share").mkdir()
    share = SharePaths(tmp_path / "share")
    (tmp_path / "share" / "a.json").write_bytes(b"{}")
    share.sync_to_disk()  # the real syncfs(2)
    (tmp_path / "share").rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError):
        share.sync_to_disk()


def test_a_success_row_names_a_result_file_only_after_the_file_was_synced(rt, monkeypatch):
    """Result files before their SUCCESS rows, whether linted, from the result cache or recorded
    from a cut-short file: a machine crash cannot leave a SUCCESS row whose file the disk never
    got. (Sources are not synced: each is checked against its row's SHA-256 when linted.)"""
    from sqlcheck import repository as repo
    from sqlcheck import workflow
    from sqlcheck.models import Task
    from sqlcheck.states import FailureReason, TaskStatus
    from tests.helpers import make_zip

    synced: set[str] = set()  # the files on the share at the latest sync
    real_sync = rt.share.sync_to_disk

    def no_row_ahead_of_the_disk():
        with rt.db.session() as s:
            tasks = s.query(Task).all()
        assert all(t.result_file_path in synced for t in tasks if t.status == TaskStatus.SUCCESS.value)

    def sync_and_note():
        no_row_ahead_of_the_disk()  # a commit before its sync is caught here, a commit with none below
        real_sync()  # (the spy calls the real syncfs: only what was synced when is observed)
        synced.update(p.relative_to(rt.share.root).as_posix() for p in rt.share.root.rglob("*") if p.is_file())

    monkeypatch.setattr(rt.share, "sync_to_disk", sync_and_note)

    def rows_name_only_synced_files(job_id):
        no_row_ahead_of_the_disk()
        with rt.db.session() as s:
            tasks = repo.list_tasks(s, job_id)
        return tasks, sum(t.status == TaskStatus.SUCCESS.value for t in tasks)

    files = {f"f{i}.sql": f"select a{i} from t\n" for i in range(3)}

    def expanded(zip_files):
        job_id = rt.stack.submit(make_zip(zip_files))
        workflow.expand_job(rt, job_id, lambda ids: None)
        return job_id, rows_name_only_synced_files(job_id)

    job_id, (tasks, done) = expanded(files)
    assert done == 0
    for t in tasks:  # linted
        workflow.lint_task(rt, t.id, "test-host")
    assert rows_name_only_synced_files(job_id)[1] == 3
    assert expanded(files)[1][1] == 3  # the same files again: from the result cache
    job_id, (tasks, _) = expanded({"cut.sql": "select b from t\n"})
    with workflow.file_connections(rt) as (conn, claims):  # written, then the child is cut short
        assert workflow.lint_file(rt, conn, claims, tasks[0].id, "test-host") is not None
    assert workflow.record_cut_short(rt, tasks[0].id, FailureReason.TIMEOUT, "cut") == TaskStatus.SUCCESS
    assert rows_name_only_synced_files(job_id)[1] == 1


def test_a_durable_write_syncs_the_file_and_then_its_directory(tmp_path, monkeypatch):
    """A rename is durable only once its directory is synced: summary.json and the job's stored
    upload configuration (lost, it would read as "no configuration") are written so."""
    from sqlcheck import job_config

    synced: list[str] = []
    real_fsync = os.fsync

    def noting_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", noting_fsync)
    share = SharePaths(tmp_path)
    job_config.save_uploaded(share, "job-1", job_config.UploadedConfig())
    job_dir = str(share.job_dir("job-1"))
    assert len(synced) == 2 and synced[0].startswith(job_dir + "/.sqlcheck-") and synced[1] == job_dir
    assert (share.job_dir("job-1") / "uploaded_config.json").exists()
