"""Safe ZIP expansion: names decoded right, nothing escapes the job dir, limits on real bytes."""

import errno
import hashlib
import io
import struct
import time
import zipfile

import pytest

from sqlcheck import archive
from sqlcheck.archive import ExpansionLimits, declared_entries, decode_member_name, expand_zip_safely, safe_relative_path
from sqlcheck.errors import ArchiveError
from sqlcheck.retries import is_transient
from sqlcheck.states import FailureReason
from tests.helpers import make_zip
from tests.zipcraft import (ENCRYPTED_FLAG, damage_member_data, set_flag_bits, zip_of_zeros,
                             zip_with_lzma_member_without_end_marker, zip_with_raw_names,
                             zip_with_symlink)

LIMITS = ExpansionLimits(max_members=100, max_file_bytes=100_000, max_total_bytes=1_000_000, max_ratio=200)


def expand(tmp_path, zip_bytes: bytes, limits: ExpansionLimits = LIMITS):
    zip_path = tmp_path / "upload.zip"
    zip_path.write_bytes(zip_bytes)
    dest = tmp_path / "job" / "sources"
    return expand_zip_safely(zip_path, dest, limits), dest


def files_under(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) if path.exists() else []


def by_name(expansion):
    return {m.name: m for m in expansion.members}


# ---- member names ------------------------------------------------------------------


def only_info(zip_bytes: bytes) -> zipfile.ZipInfo:
    (info,) = zipfile.ZipFile(io.BytesIO(zip_bytes)).infolist()
    return info


def test_name_with_utf8_flag():
    info = only_info(make_zip({"报表/查询.sql": "select 1"}))
    assert info.flag_bits & 0x800
    assert decode_member_name(info) == "报表/查询.sql"


def test_gbk_name_without_utf8_flag():
    raw = "报表/查询.sql".encode("gbk")
    info = only_info(zip_with_raw_names({raw: b"select 1"}))
    assert not info.flag_bits & 0x800
    assert info.filename != "报表/查询.sql"  # what zipfile alone would show (CP437 mojibake)
    assert decode_member_name(info) == "报表/查询.sql"


def test_utf8_name_without_flag():
    info = only_info(zip_with_raw_names({"données/été.sql".encode("utf-8"): b"select 1"}))
    assert decode_member_name(info) == "données/été.sql"


def test_cp437_name_when_neither_utf8_nor_gb18030():
    raw = "café.sql".encode("cp437")  # 0x82 then '.': not UTF-8, not GB18030
    info = only_info(zip_with_raw_names({raw: b"select 1"}))
    assert decode_member_name(info) == "café.sql"


@pytest.mark.parametrize(
    "name,expected",
    [
        ("a/b.sql", "a/b.sql"),
        ("./a//b.sql", "a/b.sql"),
        ("a\\b.sql", "a/b.sql"),
        ("../b.sql", None),
        ("a/../../b.sql", None),
        ("a/../b.sql", None),  # any '..' is refused, even one that would stay inside
        ("..\\b.sql", None),
        ("/etc/b.sql", None),
        ("\\\\server\\share\\b.sql", None),
        ("C:\\b.sql", None),
        ("c:b.sql", None),
        ("a\x00.sql", None),
        ("", None),
        ("./", None),
    ],
)
def test_safe_relative_path(name, expected):
    assert safe_relative_path(name) == expected


# ---- members -------------------------------------------------------------------------


def test_sql_members_written_with_directories_kept(tmp_path):
    exp, dest = expand(tmp_path, make_zip({"a/x.sql": "select 1", "b/x.sql": "select 2", "Q.SQL": "select 3",
                                           "deep/er/y.Sql": "select 4"}))
    assert files_under(dest) == ["Q.SQL", "a/x.sql", "b/x.sql", "deep/er/y.Sql"]
    assert (dest / "b" / "x.sql").read_text() == "select 2"
    m = by_name(exp)["a/x.sql"]
    assert (m.path, m.size, m.rejected) == ("a/x.sql", 8, None)
    assert m.sha256 == hashlib.sha256(b"select 1").hexdigest()
    assert exp.total_bytes == 32


def test_non_sql_directories_and_macos_entries_skipped(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("dir/", "")
        zf.writestr("dir/x.sql", "select 1")
        zf.writestr("readme.txt", "hello")
        zf.writestr("x.sql.bak", "select 1")
        zf.writestr("__MACOSX/dir/._x.sql", "\x00\x05\x16\x07")
        zf.writestr("dir/._y.sql", "\x00\x05\x16\x07")
    exp, dest = expand(tmp_path, buf.getvalue())
    assert [m.name for m in exp.members] == ["dir/x.sql"]
    assert files_under(dest) == ["dir/x.sql"]
    assert {s["member"]: s["reason"] for s in exp.skipped} == {
        "readme.txt": "not a .sql file",
        "x.sql.bak": "not a .sql file",
        "__MACOSX/dir/._x.sql": "macOS resource fork",
        "dir/._y.sql": "macOS resource fork",
    }


@pytest.mark.parametrize("evil", ["../evil.sql", "a/../../evil.sql", "/tmp/evil.sql", "C:\\evil.sql", "C:/evil.sql",
                                  "..\\..\\evil.sql"])
def test_escaping_member_rejected_and_nothing_written_outside(tmp_path, evil):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(zipfile.ZipInfo(evil), "drop table users;")  # ZipInfo keeps the name as given
        zf.writestr("ok.sql", "select 1")
    exp, dest = expand(tmp_path, buf.getvalue())
    m = by_name(exp)[evil]
    assert m.rejected is FailureReason.UNSAFE_MEMBER and m.path is None
    assert files_under(tmp_path) == ["job/sources/ok.sql", "upload.zip"]


@pytest.mark.parametrize("long_name", ["a" * 300 + ".sql", "/".join(["d" * 200] * 6) + "/x.sql"])
def test_name_too_long_for_the_share_rejects_that_member_only(tmp_path, long_name):
    exp, dest = expand(tmp_path, make_zip({long_name: "select 1", "ok.sql": "select 2"}))
    m = by_name(exp)[long_name]
    assert m.rejected is FailureReason.UNSAFE_MEMBER and "too long" in m.message and m.path is None
    assert by_name(exp)["ok.sql"].rejected is None and files_under(dest) == ["ok.sql"]


def test_nul_in_a_name_is_rejected_and_stored_printable(tmp_path):
    """PostgreSQL text columns refuse NUL: the rejected name is kept with the NUL spelled out."""
    exp, dest = expand(tmp_path, zip_with_raw_names({b"evil\x00.sql": b"select 1", b"fine.sql": b"select 2"}))
    (m,) = [m for m in exp.members if m.rejected]
    assert m.rejected is FailureReason.UNSAFE_MEMBER and m.name == "evil\\x00.sql" and "\x00" not in m.name
    assert files_under(dest) == ["fine.sql"]


@pytest.mark.parametrize("raw", [b"\x00.sql", b"a/\x00.sql"])
def test_a_nul_where_zipfile_cuts_the_name_is_still_a_rejected_member(tmp_path, raw):
    """zipfile cuts a name at its NUL ("" or "a/", a directory): it must still get its row."""
    exp, dest = expand(tmp_path, zip_with_raw_names({raw: b"select 1", b"fine.sql": b"select 2"}))
    (m,) = [m for m in exp.members if m.rejected]
    assert m.rejected is FailureReason.UNSAFE_MEMBER and m.name == raw.decode().replace("\x00", "\\x00")
    assert files_under(dest) == ["fine.sql"] and exp.skipped == []


def test_a_local_header_whose_name_is_not_utf8_is_a_corrupt_archive(tmp_path):
    """The UTF-8 flag set in the local header only, over a name that is not UTF-8: zipfile raises
    UnicodeDecodeError when opening the member; that is a damaged archive, not an internal error."""
    whole = bytearray(zip_with_raw_names({b"ok.sql": b"select 1", b"\xff.sql": b"select 2"}))
    local = whole.find(b"PK\x03\x04", whole.find(b"\xff.sql") - 30 - 10)
    whole[local + 7] |= 0x08  # 0x800 in the local header's flags
    with pytest.raises(ArchiveError, match="corrupt"):
        expand(tmp_path, bytes(whole))


def test_symlink_member_rejected(tmp_path):
    exp, dest = expand(tmp_path, zip_with_symlink("link.sql", "/etc/passwd", {"ok.sql": b"select 1"}))
    m = by_name(exp)["link.sql"]
    assert m.rejected is FailureReason.UNSAFE_MEMBER and "symbolic link" in m.message
    assert files_under(dest) == ["ok.sql"]
    assert not (dest / "link.sql").is_symlink()


def test_symlink_planted_in_destination_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "job" / "sources"
    dest.mkdir(parents=True)
    (dest / "a").symlink_to(outside, target_is_directory=True)
    zip_path = tmp_path / "upload.zip"
    zip_path.write_bytes(make_zip({"a/x.sql": "select 1"}))
    exp = expand_zip_safely(zip_path, dest, LIMITS)
    assert exp.members[0].rejected is FailureReason.UNSAFE_MEMBER
    assert list(outside.iterdir()) == []


def test_encrypted_member_rejected_without_reading(tmp_path):
    zip_bytes = set_flag_bits(make_zip({"secret.sql": "select 1", "ok.sql": "select 2"}), "secret.sql", ENCRYPTED_FLAG)
    exp, dest = expand(tmp_path, zip_bytes)
    assert by_name(exp)["secret.sql"].rejected is FailureReason.ENCRYPTED
    assert files_under(dest) == ["ok.sql"]


def test_duplicate_paths_rejected_first_one_kept(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, pytest.warns(UserWarning, match="Duplicate"):
        zf.writestr("a/x.sql", "select 1")
        zf.writestr("a/x.sql", "select 2")
        zf.writestr("./a/x.sql", "select 3")
    exp, dest = expand(tmp_path, buf.getvalue())
    assert [m.rejected for m in exp.members] == [None, FailureReason.DUPLICATE_MEMBER, FailureReason.DUPLICATE_MEMBER]
    assert (dest / "a" / "x.sql").read_text() == "select 1"


def test_a_rejected_first_copy_still_owns_its_path(tmp_path):
    """A symlink named x.sql, then a regular x.sql: the second is the duplicate (it used to be
    written to sources/ and then dropped, its name's one task row being the symlink's)."""
    with pytest.warns(UserWarning, match="Duplicate"):
        zip_bytes = zip_with_symlink("x.sql", "/etc/passwd", {"x.sql": b"select 1", "ok.sql": b"select 2"})
    exp, dest = expand(tmp_path, zip_bytes)
    assert [(m.name, m.rejected) for m in exp.members] == [
        ("x.sql", FailureReason.UNSAFE_MEMBER), ("x.sql", FailureReason.DUPLICATE_MEMBER), ("ok.sql", None)]
    assert files_under(dest) == ["ok.sql"]


@pytest.mark.parametrize("names", [("x.sql", "x.sql/y.sql"), ("x.sql", "x.sql/a/y.sql"), ("x.sql/y.sql", "x.sql")])
def test_file_and_directory_of_the_same_name_do_not_crash(tmp_path, names):
    first, second = names
    exp, dest = expand(tmp_path, make_zip({first: "select 1", second: "select 2", "ok.sql": "select 3"}))
    members = by_name(exp)
    assert members[first].rejected is None
    assert members[second].rejected is FailureReason.DUPLICATE_MEMBER
    assert members["ok.sql"].rejected is None
    assert (dest / first).read_text() == "select 1"
    assert (dest / "ok.sql").read_text() == "select 3"


def test_oversize_member_rejected_too_large_without_writing(tmp_path):
    limits = ExpansionLimits(100, max_file_bytes=1000, max_total_bytes=1_000_000, max_ratio=1000)
    exp, dest = expand(tmp_path, make_zip({"big.sql": "select 1;\n" * 101, "fits.sql": "x" * 1000}), limits)
    big = by_name(exp)["big.sql"]
    assert big.rejected is FailureReason.TOO_LARGE and "SQLCHECK_MAX_FILE_BYTES" in big.message
    assert by_name(exp)["fits.sql"].rejected is None
    assert files_under(dest) == ["fits.sql"]


def test_ratio_bomb_refused_quickly_without_writing_inflated_bytes(tmp_path):
    zip_bytes = zip_of_zeros({"a.sql": 10, "bomb.sql": 200 * 1024 * 1024})
    assert len(zip_bytes) < 1_000_000
    limits = ExpansionLimits(100, max_file_bytes=1 << 30, max_total_bytes=1 << 31, max_ratio=200)
    started = time.monotonic()
    with pytest.raises(ArchiveError, match="200:1"):
        expand(tmp_path, zip_bytes, limits)
    assert time.monotonic() - started < 5
    written = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file() and p.name != "upload.zip")
    assert written < 1_000


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_bzip2_and_lzma_bombs_are_refused_before_they_are_inflated(tmp_path, method):
    """zipfile inflates a bzip2/LZMA member a whole compressed read at a time (a 500-byte member
    is hundreds of MiB at once): memory must stay bounded before the ratio check refuses it."""
    import tracemalloc

    zip_bytes = zip_of_zeros({"bomb.sql": 64 * 1024 * 1024}, method)
    limits = ExpansionLimits(100, max_file_bytes=1 << 30, max_total_bytes=1 << 31, max_ratio=200)
    tracemalloc.start()
    try:
        with pytest.raises(ArchiveError, match="200:1"):
            expand(tmp_path, zip_bytes, limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # zipfile alone: the whole 64 MiB at once; bounded: the ~2 MiB the ratio check lets through (LZMA
    # compresses these zeros only ~7000:1) and a few buffers
    assert peak < 16 * 1024 * 1024, f"{peak / 2**20:.0f} MiB allocated while refusing a 64 MiB bomb"


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_bzip2_and_lzma_members_are_expanded_whole(tmp_path, method):
    text = "".join(f"select c{i}, count(*) from t{i % 7} group by c{i};\n" for i in range(20_000)).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr("big.sql", text)  # ~1 MiB: many chunks in and out
        zf.writestr("empty.sql", b"")
    limits = ExpansionLimits(100, max_file_bytes=1 << 22, max_total_bytes=1 << 24, max_ratio=200)
    exp, dest = expand(tmp_path, buf.getvalue(), limits)
    assert [(m.name, m.rejected) for m in exp.members] == [("big.sql", None), ("empty.sql", None)]
    assert (dest / "big.sql").read_bytes() == text and (dest / "empty.sql").read_bytes() == b""
    assert by_name(exp)["big.sql"].sha256 == hashlib.sha256(text).hexdigest()


def test_an_lzma_dictionary_claim_is_bounded_by_the_member_size(tmp_path):
    """An LZMA header may ask for a 4 GiB dictionary, which the decoder allocates up front."""
    import tracemalloc

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_LZMA) as zf:
        zf.writestr("f.sql", "select 1;\n" * 100)
    whole = bytearray(buf.getvalue())
    data_at = whole.find(b"f.sql") + len("f.sql")  # the first (local) header's name, then the data
    assert whole[data_at + 2] == 5  # the properties' size
    whole[data_at + 5:data_at + 9] = (3 << 30).to_bytes(4, "little")  # dictionary: 3 GiB
    tracemalloc.start()
    try:
        exp, dest = expand(tmp_path, bytes(whole))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (dest / "f.sql").read_bytes() == b"select 1;\n" * 100 and exp.members[0].rejected is None
    assert peak < 4 * 1024 * 1024, f"{peak / 2**20:.0f} MiB for a 1 kB member"


def test_an_lzma_member_without_an_end_marker_is_expanded(tmp_path):
    """The ZIP specification lets an LZMA stream end where its compressed bytes do (flag bit 1
    clear), as 7-Zip may write it; zipfile reads it, and so must we."""
    for n in range(1, 120):  # the decoder may run a byte or two past the end for some lengths
        text = "".join(f"select c{i} from t where x = '中文{i}';\n" for i in range(n)).encode()
        (tmp_path / str(n)).mkdir()
        exp, dest = expand(tmp_path / str(n), zip_with_lzma_member_without_end_marker("noeos.sql", text))
        assert exp.members[0].rejected is None and (dest / "noeos.sql").read_bytes() == text, n


def test_a_bzip2_member_longer_than_its_header_says_is_corrupt(tmp_path):
    """zipfile refuses a member whose bytes differ from its header's size (deflate too)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_BZIP2) as zf:
        zf.writestr("f.sql", "select 1;\n" * 100)
    whole = bytearray(buf.getvalue())
    for sig, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size in both headers
        where = whole.find(sig) + at
        whole[where:where + 4] = (10).to_bytes(4, "little")
    with pytest.raises(ArchiveError, match="corrupt"):
        expand(tmp_path, bytes(whole))


def test_a_wrong_crc_of_a_bzip2_member_is_corrupt(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_BZIP2) as zf:
        zf.writestr("f.sql", "select 1;\n" * 100)
    whole = bytearray(buf.getvalue())
    cd = whole.rfind(b"PK\x01\x02")
    whole[cd + 16] ^= 0xFF  # the CRC-32 in the central directory
    with pytest.raises(ArchiveError, match="corrupt"):
        expand(tmp_path, bytes(whole))


def test_lying_header_cannot_pass_the_size_limit(tmp_path):
    """The limit is on inflated bytes: a member whose header claims 10 bytes is still stopped."""
    zip_bytes = bytearray(make_zip({"x.sql": "select 1;\n" * 1000}))
    info = zipfile.ZipFile(io.BytesIO(bytes(zip_bytes))).getinfo("x.sql")
    cd = bytes(zip_bytes).rfind(b"PK\x01\x02")
    zip_bytes[cd + 24 : cd + 28] = (10).to_bytes(4, "little")  # uncompressed size claimed in the central dir
    assert info.file_size == 10_000
    limits = ExpansionLimits(100, max_file_bytes=5000, max_total_bytes=1_000_000, max_ratio=1000)
    try:
        exp, dest = expand(tmp_path, bytes(zip_bytes), limits)
    except ArchiveError:
        return  # refusing the whole archive is fine too
    assert exp.members[0].rejected is FailureReason.TOO_LARGE
    assert files_under(dest) == []


def test_total_bytes_limit(tmp_path):
    limits = ExpansionLimits(100, max_file_bytes=60_000, max_total_bytes=100_000, max_ratio=1000)
    entries = {f"f{i}.sql": "select 1;\n" * 5000 for i in range(3)}  # 50 kB each
    with pytest.raises(ArchiveError, match="SQLCHECK_MAX_UNCOMPRESSED_BYTES"):
        expand(tmp_path, make_zip(entries), limits)


def test_too_many_members(tmp_path):
    limits = ExpansionLimits(3, 1000, 10_000, 1000)
    with pytest.raises(ArchiveError, match="SQLCHECK_MAX_ZIP_MEMBERS"):
        expand(tmp_path, make_zip({f"{i}.sql": "select 1" for i in range(4)}), limits)
    exp, _ = expand(tmp_path, make_zip({f"{i}.sql": "select 1" for i in range(3)}), limits)
    assert len(exp.members) == 3


def test_member_count_is_judged_from_the_end_record_before_the_directory_is_parsed(tmp_path):
    """The end record's count (zip64 too) refuses a huge archive before zipfile builds an object
    per entry; the entries actually listed are still counted (the record may understate them)."""
    limits = ExpansionLimits(20_000, 1000, 10_000, 1000)
    whole = bytearray(make_zip({"a.sql": "select 1"}))
    eocd = whole.rfind(b"PK\x05\x06")
    assert declared_entries(io.BytesIO(bytes(whole))) == 1
    claimed = bytes(whole[:eocd + 8]) + struct.pack("<HH", 30_000, 30_000) + bytes(whole[eocd + 12:])
    with pytest.raises(ArchiveError, match="has 30000 entries, more than 20000"):
        expand(tmp_path, claimed, limits)
    # zip64: the classic record says 0xFFFF, the zip64 end record holds the real count
    body = bytes(whole[:eocd])
    cd_start = int.from_bytes(whole[eocd + 16:eocd + 20], "little")
    zip64_at = len(body)
    zip64 = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, 10**6, 10**6, zip64_at - cd_start, cd_start)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, zip64_at, 1)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    assert declared_entries(io.BytesIO(body + zip64 + locator + end)) == 10**6
    with pytest.raises(ArchiveError, match="has 1000000 entries"):
        expand(tmp_path, body + zip64 + locator + end, limits)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "not a valid ZIP"),
        (b"this is not a zip file at all" * 10, "not a valid ZIP"),
        (b"PK\x05\x06" + bytes(18), "empty"),  # only an end-of-central-directory record
    ],
)
def test_unusable_archives(tmp_path, content, message):
    with pytest.raises(ArchiveError, match=message):
        expand(tmp_path, content)


def test_empty_zip_written_by_zipfile(tmp_path):
    buf = io.BytesIO()
    zipfile.ZipFile(buf, "w").close()
    with pytest.raises(ArchiveError, match="empty"):
        expand(tmp_path, buf.getvalue())


def test_truncated_zip(tmp_path):
    whole = make_zip({f"f{i}.sql": f"select {i} from t;\n" * 200 for i in range(5)})
    with pytest.raises(ArchiveError, match="not a valid ZIP"):
        expand(tmp_path, whole[: len(whole) // 2])


def test_corrupt_member_data(tmp_path):
    whole = make_zip({"f.sql": "select a, b, c from some_table where x = 1;\n" * 200})
    with pytest.raises(ArchiveError, match="corrupt"):
        expand(tmp_path, damage_member_data(whole, "f.sql", 5, 25))


def test_corrupt_bzip2_and_lzma_member_data(tmp_path):
    for method in (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", method) as zf:
            zf.writestr("f.sql", "select a, b, c from some_table where x = 1;\n" * 200)
        (tmp_path / str(method)).mkdir()
        with pytest.raises(ArchiveError, match="corrupt"):
            expand(tmp_path / str(method), damage_member_data(buf.getvalue(), "f.sql", 5, 25))


def test_unsupported_zip_version_is_not_a_valid_zip(tmp_path):
    whole = bytearray(make_zip({"f.sql": "select 1"}))
    eocd = whole.rfind(b"PK\x05\x06")
    central = int.from_bytes(whole[eocd + 16:eocd + 20], "little")
    whole[central + 6] = 0xFF  # "version needed to extract" of the central directory entry
    with pytest.raises(ArchiveError, match="not a valid ZIP"):
        expand(tmp_path, bytes(whole))


def _fail_with(err: int):
    def fail(*_args, **_kwargs):
        raise OSError(err, "injected share error")
    return fail


def test_a_name_the_share_cannot_hold_under_a_long_share_root_rejects_that_member_only(tmp_path):
    """Our own length limits leave room for a share root of ~3 kB; a longer one gets ENAMETOOLONG
    from the file system, which used to fail the whole job as an internal error."""
    dest = tmp_path.joinpath(*["r" * 200] * 15) / "job" / "sources"  # ~3 kB before the member's path
    deep = "/".join(["n" * 200] * 5) + ".sql"  # within MAX_PATH_BYTES, past PATH_MAX under that root
    zip_path = tmp_path / "upload.zip"
    zip_path.write_bytes(make_zip({deep: "SELECT 1\n", "ok.sql": "SELECT 2\n"}))
    exp = expand_zip_safely(zip_path, dest, LIMITS)
    m = by_name(exp)[deep]
    assert m.rejected is FailureReason.UNSAFE_MEMBER and "cannot hold this name" in m.message
    assert by_name(exp)["ok.sql"].rejected is None and (dest / "ok.sql").read_text() == "SELECT 2\n"


@pytest.mark.parametrize("where", ["opening the upload", "reading a member"])
def test_share_errors_reach_the_retry_not_the_job(tmp_path, monkeypatch, where):
    """Only the archive's own bytes make it "not a valid ZIP" or "corrupt": an NFS error (ESTALE,
    EIO) opening or reading the upload propagates, and the expand task retries it."""
    if where == "opening the upload":
        monkeypatch.setattr(archive, "open", _fail_with(errno.ESTALE), raising=False)
    else:
        monkeypatch.setattr(zipfile.ZipExtFile, "read", _fail_with(errno.EIO))
    with pytest.raises(OSError) as caught:
        expand(tmp_path, make_zip({"a.sql": "SELECT 1\n"}))
    assert not isinstance(caught.value, ArchiveError) and is_transient(caught.value)


def test_missing_upload(tmp_path):
    with pytest.raises(ArchiveError, match="not found"):
        expand_zip_safely(tmp_path / "nope.zip", tmp_path / "d", LIMITS)
