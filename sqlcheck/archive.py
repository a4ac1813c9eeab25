"""Safe ZIP expansion: limits on the bytes really inflated, no path may leave the job dir.

The header sizes in a ZIP are claims made by the uploader; every limit here is
checked while inflating, so a lying header cannot get past it.
"""

from __future__ import annotations

import bz2
import copy
import errno
import hashlib
import lzma
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from sqlcheck.errors import ArchiveError
from sqlcheck.share import OutsideShare, resolve_inside, write_new_file
from sqlcheck.states import FailureReason

CHUNK_BYTES = 64 * 1024
#: a name the share cannot hold (NAME_MAX), and a whole relative path with room left for the share's own prefix
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 1024
#: what a damaged member's decompressor raises (bz2 raises a plain OSError, without an errno)
CORRUPT_DATA = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError)
#: members smaller than this are never judged by their compression ratio (tiny files compress oddly)
RATIO_CHECK_MIN_BYTES = 64 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ExpansionLimits:
    max_members: int
    max_file_bytes: int
    max_total_bytes: int
    max_ratio: int


@dataclass
class ArchiveMember:
    """One .sql entry: either written under the sources dir, or rejected with a reason."""

    name: str  # the path as stored in the ZIP, decoded
    path: str | None  # normalised relative path under sources/, None when rejected for its name
    size: int = 0
    sha256: str | None = None
    rejected: FailureReason | None = None
    message: str | None = None


@dataclass
class Expansion:
    members: list[ArchiveMember] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # non-SQL entries: {"member", "reason"}
    total_bytes: int = 0


def decode_member_name(info: zipfile.ZipInfo) -> str:
    """Decode a member name: UTF-8 flag, else UTF-8 if valid, else GB18030, else CP437.

    Without the UTF-8 flag, zipfile decoded the raw bytes as CP437, which is lossless,
    so encoding back to CP437 gives the bytes as stored.
    """
    if info.flag_bits & 0x800:
        return info.orig_filename
    raw = info.orig_filename.encode("cp437")
    for encoding in ("utf-8", "gb18030"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return info.orig_filename


def safe_relative_path(name: str) -> str | None:
    """The normalised relative path for a member name, or None if it could escape."""
    unified = name.replace("\\", "/")
    if unified.startswith("/") or _DRIVE.match(unified) or "\x00" in unified:
        return None
    parts = [p for p in PurePosixPath(unified).parts if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return "/".join(parts)


def too_long_for_the_share(rel: str) -> bool:
    return len(rel.encode("utf-8")) > MAX_PATH_BYTES or any(len(p.encode("utf-8")) > MAX_NAME_BYTES for p in rel.split("/"))


def _printable(name: str) -> str:
    """A rejected name as it can be stored and shown: PostgreSQL text refuses NUL."""
    return name.replace("\x00", "\\x00")


def _damaged(exc: Exception) -> bool:
    """An error from the archive's bytes, not from the share: any of CORRUPT_DATA, bz2's OSError
    'Invalid data stream' (no errno) or a seek to a bad offset (EINVAL). Share errors (EIO,
    ESTALE...) are not: they propagate to the retry."""
    return not isinstance(exc, OSError) or exc.errno in (None, errno.EINVAL)


def _is_sql(name: str) -> bool:
    return name.lower().endswith(".sql")


def _skip_reason(name: str, info: zipfile.ZipInfo) -> str | None:
    """Why a non-SQL entry is ignored, or None for an entry we must look at."""
    parts = name.replace("\\", "/").split("/")
    if name.endswith("/"):  # not info.is_dir(): zipfile cuts its name at a NUL ("a/\0.sql" -> "a/")
        return "directory"
    if "__MACOSX" in parts or parts[-1].startswith("._"):
        return "macOS resource fork"
    if not _is_sql(name):
        return "not a .sql file"
    return None


def _unsafe_kind(info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:  # Unix attributes present
        if stat.S_ISLNK(mode):
            return "symbolic link"
        if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
            return "not a regular file"
    return None


#: general purpose flag bit 1 of an LZMA member: its stream ends with an end marker; without
#: it, the stream ends where the compressed bytes do (the ZIP specification, 4.4.4)
LZMA_END_MARKER = 0x2


def member_chunks(zf: zipfile.ZipFile, info: zipfile.ZipInfo, most: int) -> Iterator[bytes]:
    """A member's bytes, at most CHUNK_BYTES at a time, for every compression method; `most` is
    how many bytes the caller reads at most (it bounds what the inflater may allocate).

    zipfile bounds what one read inflates only for deflate: a bzip2 or LZMA member is inflated a
    whole compressed read at a time (a 500-byte bzip2 member is ~800 MiB before any limit could
    look). Those two are read raw and inflated here with a bound on each output; their CRC and
    size are checked at the end, as zipfile checks them.
    """
    if info.compress_type not in (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        with zf.open(info) as fh:
            while chunk := fh.read(CHUNK_BYTES):
                yield chunk
        return
    raw = copy.copy(info)  # the same entry, read as stored: zipfile checks the header, we inflate
    raw.compress_type, raw.file_size = zipfile.ZIP_STORED, info.compress_size
    del raw.CRC  # the stored CRC is the inflated bytes', checked below
    # Without an end marker the decoder cannot tell where the stream ends and may decode a byte
    # or two of padding past it: such a member ends at its header's size, as zipfile ends it.
    unmarked = info.compress_type == zipfile.ZIP_LZMA and not info.flag_bits & LZMA_END_MARKER
    crc, size, inflater, data = 0, 0, None, b""
    dictionary_bound = min(info.file_size, most + CHUNK_BYTES)  # no distance reaches further back
    with zf.open(raw) as fh:
        while inflater is None:
            more = fh.read(CHUNK_BYTES)
            inflater, data = _raw_inflater(info.compress_type, data + more, not more, dictionary_bound)
        while not inflater.eof and not (unmarked and size == info.file_size):
            if inflater.needs_input and not data:
                data = fh.read(CHUNK_BYTES)
                if not data:
                    break  # the compressed bytes are used up: the size check below says if too soon
            chunk = inflater.decompress(data, CHUNK_BYTES)
            data = b""
            if unmarked:
                chunk = chunk[:info.file_size - size]
            if chunk:
                crc, size = zlib.crc32(chunk, crc), size + len(chunk)
                yield chunk
    if not (inflater.eof or unmarked) or crc != info.CRC or size != info.file_size:
        raise zipfile.BadZipFile(f"bad or truncated {'bzip2' if info.compress_type == zipfile.ZIP_BZIP2 else 'LZMA'} "
                                 f"data in {info.filename!r}")


def _raw_inflater(method: int, head: bytes, done: bool, dictionary_bound: int):
    """(decompressor, the input left for it), or (None, head) while an LZMA header is incomplete.

    A ZIP's LZMA member starts with a version (2 bytes), the properties' size (2 bytes) and
    the LZMA1 properties: lc/lp/pb in one byte, then the dictionary size."""
    if method == zipfile.ZIP_BZIP2:
        return bz2.BZ2Decompressor(), head
    if len(head) < 4 or len(head) < 4 + int.from_bytes(head[2:4], "little"):
        if done:
            raise zipfile.BadZipFile("truncated LZMA header")
        return None, head
    size = int.from_bytes(head[2:4], "little")
    props = head[4:4 + size]
    if size != 5 or props[0] >= 9 * 5 * 5:
        raise zipfile.BadZipFile("bad LZMA properties")
    pb, rest = divmod(props[0], 45)
    lp, lc = divmod(rest, 9)
    # The decoder allocates the whole dictionary the header asks for (up to 4 GiB) before the
    # first byte; no distance in the bytes read reaches further back than their length.
    dict_size = max(4096, min(int.from_bytes(props[1:5], "little"), dictionary_bound))
    lzma1 = {"id": lzma.FILTER_LZMA1, "dict_size": dict_size, "lc": lc, "lp": lp, "pb": pb}
    return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[lzma1]), head[4 + size:]


def _inflate(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, limits: ExpansionLimits, budget: int) -> bytes | None:
    """Read one member, at most max_file_bytes; None when it is larger. Raises on bombs."""
    chunks: list[bytes] = []
    size = 0
    for chunk in member_chunks(zf, info, limits.max_file_bytes):
        size += len(chunk)
        if size >= RATIO_CHECK_MIN_BYTES and size > limits.max_ratio * max(info.compress_size, 1):
            raise ArchiveError(
                f"member {name!r} inflates more than {limits.max_ratio}:1 (zip bomb?); archive refused"
            )
        if size > budget:
            raise ArchiveError(
                f"archive inflates to more than {limits.max_total_bytes} bytes (SQLCHECK_MAX_UNCOMPRESSED_BYTES)"
            )
        if size > limits.max_file_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


_EOCD = struct.Struct("<4s4xHH")  # signature, (disk numbers), entries on this disk, entries in all
_ZIP64_LOCATOR = struct.Struct("<4sIQI")  # signature, disk, offset of the zip64 end record, disks
_ZIP64_EOCD_ENTRIES_AT = 32  # offset of "entries in all" (8 bytes) in the zip64 end record


def declared_entries(fh: BinaryIO) -> int | None:
    """How many entries the archive's end record says it holds, read without parsing the central
    directory (zipfile builds an object per entry first: a million entries are ~0.5 GB of RAM
    before a member limit could refuse them). None when there is no end record to read."""
    size = fh.seek(0, 2)
    tail_start = max(0, size - (_EOCD.size + 65_535))  # the record, then a comment of up to 64 KiB
    fh.seek(tail_start)
    tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    _sig, _here, total = _EOCD.unpack_from(tail, at)
    if total != 0xFFFF or at < _ZIP64_LOCATOR.size:
        return total
    sig, _disk, record_at, _disks = _ZIP64_LOCATOR.unpack_from(tail, at - _ZIP64_LOCATOR.size)
    if sig != b"PK\x06\x07" or record_at + _ZIP64_EOCD_ENTRIES_AT + 8 > size:
        return total
    fh.seek(record_at + _ZIP64_EOCD_ENTRIES_AT)
    return int.from_bytes(fh.read(8), "little")


def _refuse_too_many(count: int, limits: ExpansionLimits) -> None:
    if count > limits.max_members:
        raise ArchiveError(
            f"the ZIP archive has {count} entries, more than {limits.max_members} (SQLCHECK_MAX_ZIP_MEMBERS)"
        )


def expand_zip_safely(zip_path: Path, dest: Path, limits: ExpansionLimits) -> Expansion:
    """Expand every .sql member of ``zip_path`` under ``dest``, keeping directories.

    Raises ArchiveError when the archive as a whole must be refused; a single bad
    member is returned as a rejected ArchiveMember instead.
    """
    try:
        with open(zip_path, "rb") as fh:
            declared = declared_entries(fh)
        if declared is not None:
            _refuse_too_many(declared, limits)
        zf = zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise ArchiveError(f"uploaded archive not found on the share: {zip_path.name}") from None
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        if not _damaged(exc):  # the share failed (EIO, ESTALE...), not the upload: the task retries
            raise
        raise ArchiveError(f"not a valid ZIP archive: {exc}") from None
    result = Expansion()
    writer = SourceWriter(dest)
    with zf:
        infos = zf.infolist()
        if not infos:
            raise ArchiveError("the ZIP archive is empty")
        _refuse_too_many(len(infos), limits)  # the end record may understate them
        seen: set[str] = set()
        for info in infos:
            name = decode_member_name(info)
            reason = _skip_reason(name, info)
            if reason:
                if reason != "directory":
                    result.skipped.append({"member": name, "reason": reason})
                continue
            result.members.append(
                _expand_member(zf, info, name, writer, limits, seen, limits.max_total_bytes - result.total_bytes)
            )
            result.total_bytes += result.members[-1].size
    return result


class SourceWriter:
    """Where members go under ``dest``: each folder is created and checked once per archive.

    Checking the folder (resolved, symlinks included) is enough: the file itself is
    created with O_EXCL or replaced by rename, neither of which follows a link at its name.
    """

    def __init__(self, dest: Path):
        self.dest = dest
        self._checked: dict[str, Path] = {}

    def target(self, rel: str) -> Path:
        folder, _, filename = rel.rpartition("/")
        parent = self._checked.get(folder)
        if parent is None:
            parent = resolve_inside(self.dest, folder) if folder else self.dest.resolve()
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                pass  # a file of the archive has this folder's name: the write reports it
            parent = resolve_inside(self.dest, folder) if folder else parent  # created: check what it is now
            self._checked[folder] = parent
        return parent / filename


#: what a share's file system says of a name it cannot hold (a long share root, an NFS server
#: that refuses some bytes): that member is refused, the others are expanded
_NAME_REFUSED = (errno.ENAMETOOLONG, errno.EILSEQ)


def _refused_name(name: str, exc: OSError) -> ArchiveMember:
    """The member, rejected when the share refused its name; any other error propagates."""
    if exc.errno not in _NAME_REFUSED:
        raise exc
    return ArchiveMember(name, None, rejected=FailureReason.UNSAFE_MEMBER,
                         message=f"the share cannot hold this name ({exc.strerror})")


def _expand_member(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    name: str,
    writer: SourceWriter,
    limits: ExpansionLimits,
    seen: set[str],
    budget: int,
) -> ArchiveMember:
    rel = safe_relative_path(name)
    if rel is None:
        return ArchiveMember(_printable(name), None, rejected=FailureReason.UNSAFE_MEMBER,
                             message="path is absolute, leaves the archive or holds a NUL byte")
    if too_long_for_the_share(rel):
        return ArchiveMember(name, None, rejected=FailureReason.UNSAFE_MEMBER,
                             message=f"path too long for the share (a name over {MAX_NAME_BYTES} bytes "
                                     f"or the whole path over {MAX_PATH_BYTES})")
    if rel in seen:  # before the checks below: a rejected first copy still owns the path
        return ArchiveMember(name, rel, rejected=FailureReason.DUPLICATE_MEMBER, message="same path appears twice in the archive")
    seen.add(rel)
    unsafe = _unsafe_kind(info)
    if unsafe:
        return ArchiveMember(name, None, rejected=FailureReason.UNSAFE_MEMBER, message=f"member is a {unsafe}")
    if info.flag_bits & 0x1:
        return ArchiveMember(name, rel, rejected=FailureReason.ENCRYPTED, message="member is encrypted")
    try:
        target = writer.target(rel)
    except OutsideShare as exc:
        return ArchiveMember(name, None, rejected=FailureReason.UNSAFE_MEMBER, message=str(exc))
    except OSError as exc:
        return _refused_name(name, exc)
    try:
        data = _inflate(zf, info, name, limits, budget)
    except (*CORRUPT_DATA, OSError, ValueError, OverflowError) as exc:  # ValueError: bad header fields, names
        if not _damaged(exc):
            raise
        raise ArchiveError(f"the ZIP archive is corrupt or truncated at {name!r}: {exc}") from None
    except NotImplementedError as exc:
        return ArchiveMember(name, rel, rejected=FailureReason.UNSAFE_MEMBER, message=f"unsupported member: {exc}")
    if data is None:
        return ArchiveMember(
            name, rel, size=0, rejected=FailureReason.TOO_LARGE,
            message=f"file is larger than {limits.max_file_bytes} bytes (SQLCHECK_MAX_FILE_BYTES)",
        )
    try:
        write_new_file(target, data)
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        # "x.sql" and "x.sql/y.sql" in one archive: a file and a folder cannot share a path
        return ArchiveMember(name, rel, rejected=FailureReason.DUPLICATE_MEMBER,
                             message="a file and a folder of the archive have the same path")
    except OSError as exc:
        return _refused_name(name, exc)
    return ArchiveMember(name, rel, size=len(data), sha256=hashlib.sha256(data).hexdigest())
