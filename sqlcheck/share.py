"""The shared (NFS) directory: where every job's files live, and how they are written.

Layout, relative to the share root (a contract with the web service)::

    uploads/...                      ZIPs as the web service stores them (any path it likes)
    jobs/<job_id>/sources/<member>   expanded SQL files, directory structure kept
    jobs/<job_id>/results/<task_id>.json
    jobs/<job_id>/summary.json
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import secrets
import shutil
from pathlib import Path, PurePosixPath

from sqlcheck.errors import SqlcheckError


class OutsideShare(SqlcheckError):
    """Raised when a relative path would resolve outside the directory it must stay in."""


def resolve_inside(base: Path, relative: str | PurePosixPath) -> Path:
    """Join ``relative`` onto ``base`` and refuse any result that leaves ``base``.

    Symlinks already on disk are resolved too, so a planted link cannot redirect a write.
    """
    return _join_inside(base.resolve(), relative)


def _join_inside(base: Path, relative: str | PurePosixPath) -> Path:
    """resolve_inside for a ``base`` that is already resolved (saves its lstat calls per path)."""
    rel = str(relative)
    if rel.startswith("/") or "\x00" in rel:
        raise OutsideShare(f"path {rel!r} is absolute or invalid")
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise OutsideShare(f"path {rel!r} leaves {base}")
    return target


class SharePaths:
    """Every path on the share, in one place; all relative paths are POSIX strings."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        # a job's results directory, resolved once per job (see result_path); a worker sees many jobs
        self._results_dir = functools.lru_cache(maxsize=1024)(lambda job_id: self.absolute(f"jobs/{job_id}/results"))

    def absolute(self, relative: str) -> Path:
        return _join_inside(self.root, relative)

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    @staticmethod
    def job_dir_rel(job_id: str) -> str:
        return f"jobs/{job_id}"

    def job_dir(self, job_id: str) -> Path:
        return self.absolute(self.job_dir_rel(job_id))

    def source_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "sources"

    @staticmethod
    def source_rel(job_id: str, member_path: str) -> str:
        return f"jobs/{job_id}/sources/{member_path}"

    @staticmethod
    def result_rel(job_id: str, task_id: str) -> str:
        return f"jobs/{job_id}/results/{task_id}.json"

    def result_path(self, job_id: str, task_id: str) -> Path:
        """The absolute path of result_rel. The job's results directory is resolved once per job,
        not once per file (resolving every component of the path cost ~0.1 ms a file); the file
        name is a task id of ours, checked to be a plain name."""
        if "/" in task_id or "\x00" in task_id or task_id.startswith("."):
            raise OutsideShare(f"task id {task_id!r} is not a plain file name")
        return self._results_dir(job_id) / f"{task_id}.json"

    @staticmethod
    def summary_rel(job_id: str) -> str:
        return f"jobs/{job_id}/summary.json"

    @staticmethod
    def upload_rel(job_id: str) -> str:
        """Where `sqlcheckctl submit` stores a ZIP (the web service may choose its own path)."""
        return f"uploads/{job_id}.zip"

    def sync_to_disk(self) -> None:
        """Make every file written on the share so far durable, before a SUCCESS row naming one commits.

        Result files are written without an fsync each; this runs once per lint message and per
        block of cached results instead: one syncfs(2) of the share's file system (0.5 ms for a
        message's 8 files on the bench VM's disk, 7 ms for 594 files, against 0.35 ms a file
        with fsync). Without it, a crash of a machine whose share is a local disk could leave a
        SUCCESS row whose result file is empty. (Sources are checked against their SHA-256 when
        linted instead: syncing 10,000 of them cost seconds when the disk was slow.) On NFS,
        close() has already sent the data, so there is little left to wait for.
        """
        if _syncfs is None:  # not Linux: every file system, the only portable call
            os.sync()
            return
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _syncfs(fd) != 0:  # a write-back error (EIO...) is reported here since Linux 5.8
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs of the share failed: {os.strerror(err)}")
        finally:
            os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs():
    """Linux's syncfs(2) (the os module has no wrapper), or None where libc lacks it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    return getattr(libc, "syncfs", None)


_syncfs = _load_syncfs()


def _create_temporary(path: Path, mode: int) -> tuple[int, str]:
    """A new file beside ``path``, under a short random name (not derived from ``path``'s: a name
    the share just holds would be too long with a suffix): (descriptor, name)."""
    while True:
        tmp = str(path.parent / f".sqlcheck-{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode), tmp
        except FileExistsError:
            continue


def write_new_file(path: Path, data: bytes) -> None:
    """Write a file that nobody can be reading yet, in place; atomically if it already exists.

    A source is read only after its lint message is sent, a result only after its row says
    SUCCESS, both after this write; a redelivery finds the file there and replaces it whole
    (atomic_write). Saves the temporary name and the rename per file (~35 us of ~70). O_EXCL
    also refuses a planted symlink.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # less the umask, as atomic_write
    except FileExistsError:
        atomic_write(path, data, fsync=False, make_parents=False)
        return
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def atomic_write(path: Path, data: bytes | Path, fsync: bool = True, make_parents: bool = True,
                 mode: int = 0o666) -> None:
    """Write ``data`` (bytes, or the contents of the file at that Path, streamed) so that a reader
    sees the old file or the whole new one, never half.

    The temporary file lives in the same directory, so ``os.replace`` is a rename
    on the same file system (atomic on NFS too); the rename also replaces, never
    follows, a symlink planted at ``path``. It is created with O_EXCL under a random name (a
    link planted there is refused) and ``mode`` less the umask: the web service reads the share
    as another user of the group (mkstemp's 0600 shut it out). With ``fsync`` the file and then
    its directory (the rename) are on disk when this returns.
    """
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, Path):
                with open(data, "rb") as source:
                    shutil.copyfileobj(source, fh, 1 << 20)
            else:
                fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
