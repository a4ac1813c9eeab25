"""Hand-made ZIPs that the zipfile module will not write by itself.

zipfile always stores names as ASCII/CP437 or UTF-8 (with the UTF-8 flag), never sets
the encryption flag on write, and always writes the real sizes. Archives made on
Chinese Windows, by attackers or by broken tools do other things; these helpers
write a normal archive and patch its bytes (names and flags live in both the local
header and the central directory; neither is covered by the CRC).
"""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib

LOCAL_SIG = b"PK\x03\x04"
CENTRAL_SIG = b"PK\x01\x02"
UTF8_FLAG = 0x800
ENCRYPTED_FLAG = 0x1


def damage_member_data(zip_bytes: bytes, member: str, first: int, last: int) -> bytes:
    """The archive with bytes [first, last) of `member`'s compressed data inverted (headers intact)."""
    data = bytearray(zip_bytes)
    info = zipfile.ZipFile(io.BytesIO(zip_bytes)).getinfo(member)
    start = info.header_offset + 30 + len(info.orig_filename)  # after its local header (no extra field)
    for i in range(start + first, start + last):
        data[i] ^= 0xFF
    return bytes(data)


def zip_with_raw_names(entries: dict[bytes, bytes]) -> bytes:
    """A ZIP whose member names are these exact bytes, with the UTF-8 flag cleared.

    Each name is first written as a unique ASCII placeholder of the same length, then
    replaced in place (exactly twice: local header and central directory).
    """
    placeholders = {}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i, (raw, data) in enumerate(entries.items()):
            tag = f"~{i}~".encode()
            if len(raw) < len(tag):
                raise ValueError(f"name {raw!r} too short to patch")
            placeholder = tag + b"#" * (len(raw) - len(tag))
            placeholders[placeholder] = raw
            zf.writestr(placeholder.decode("ascii"), data)
    out = buf.getvalue()
    for placeholder, raw in placeholders.items():
        if out.count(placeholder) != 2:
            raise AssertionError(f"placeholder {placeholder!r} found {out.count(placeholder)} times")
        out = out.replace(placeholder, raw)
    return out


def set_flag_bits(zip_bytes: bytes, member: str, bits: int) -> bytes:
    """Set general-purpose flag bits of one member in both of its headers."""
    data = bytearray(zip_bytes)
    info = zipfile.ZipFile(io.BytesIO(zip_bytes)).getinfo(member)
    local = info.header_offset
    assert data[local : local + 4] == LOCAL_SIG
    struct.pack_into("<H", data, local + 6, struct.unpack_from("<H", data, local + 6)[0] | bits)
    name = info.orig_filename.encode("utf-8" if info.flag_bits & UTF8_FLAG else "cp437")
    pos = data.find(CENTRAL_SIG)
    while pos != -1:
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        if bytes(data[pos + 46 : pos + 46 + name_len]) == name:
            struct.pack_into("<H", data, pos + 8, struct.unpack_from("<H", data, pos + 8)[0] | bits)
            return bytes(data)
        pos = data.find(CENTRAL_SIG, pos + 4)
    raise AssertionError(f"central directory entry of {member!r} not found")


def zip_with_symlink(link_name: str, target: str, extra: dict[str, bytes] | None = None) -> bytes:
    """A ZIP holding a Unix symlink member (as `zip --symlinks` writes it) plus normal files."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(link_name)
        info.create_system = 3  # Unix: external_attr holds st_mode
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, target)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def zip_of_zeros(members: dict[str, int], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A ZIP whose members are runs of zero bytes of the given sizes (bombs compress ~1000:1)."""
    chunk = bytes(1 << 20)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, size in members.items():
            with zf.open(name, "w", force_zip64=size > 0x7FFFFFFF) as fh:
                left = size
                while left:
                    n = min(left, len(chunk))
                    fh.write(chunk[:n])
                    left -= n
    return buf.getvalue()


def lzma1_without_end_marker(data: bytes) -> tuple[bytes, bytes]:
    """(LZMA1 properties, stream) of `data` coded as literals only, with no end marker: what
    7-Zip may write in a ZIP (flag bit 1 clear, the stream ends where its compressed size does).
    Python's own LZMA encoder always writes the marker, so it cannot make one."""
    lc, lp, pb = 3, 0, 2
    out = bytearray()
    low, rng, cache, pending = 0, 0xFFFFFFFF, 0, 1

    def shift_low():
        nonlocal low, cache, pending
        if low < 0xFF000000 or low >= 1 << 32:
            carry = low >> 32
            byte = cache
            while pending:
                out.append((byte + carry) & 0xFF)
                byte, pending = 0xFF, pending - 1
            cache = (low >> 24) & 0xFF
        pending += 1
        low = (low & 0x00FFFFFF) << 8

    def encode_bit(probs, i, bit):
        nonlocal low, rng
        bound = (rng >> 11) * probs[i]
        if bit:
            low, rng = low + bound, rng - bound
            probs[i] -= probs[i] >> 5
        else:
            rng = bound
            probs[i] += (2048 - probs[i]) >> 5
        while rng < 1 << 24:
            rng = (rng << 8) & 0xFFFFFFFF
            shift_low()

    is_match, literal, previous = [1024] * (12 << 4), [1024] * (0x300 << (lc + lp)), 0
    for pos, byte in enumerate(data):
        encode_bit(is_match, pos & ((1 << pb) - 1), 0)  # state 0: a literal follows a literal
        base, symbol = 0x300 * (previous >> (8 - lc)), 1
        for k in range(7, -1, -1):
            bit = (byte >> k) & 1
            encode_bit(literal, base + symbol, bit)
            symbol = (symbol << 1) | bit
        previous = byte
    for _ in range(5):
        shift_low()
    return bytes([(pb * 5 + lp) * 9 + lc]) + (1 << 16).to_bytes(4, "little"), bytes(out)


def zip_with_lzma_member_without_end_marker(name: str, data: bytes) -> bytes:
    """A ZIP of one LZMA member whose stream has no end marker (flag bit 1 clear)."""
    props, stream = lzma1_without_end_marker(data)
    payload = struct.pack("<BBH", 9, 4, len(props)) + props + stream
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(name, payload)
    out = bytearray(buf.getvalue())
    crc = zlib.crc32(data)
    local, central = out.find(LOCAL_SIG), out.find(CENTRAL_SIG)
    for at, fields in ((local + 4, "<HHH"), (central + 6, "<HHH")):  # version needed, flags, method
        struct.pack_into(fields, out, at, 63, 0, zipfile.ZIP_LZMA)
    struct.pack_into("<III", out, local + 14, crc, len(payload), len(data))
    struct.pack_into("<III", out, central + 16, crc, len(payload), len(data))
    return bytes(out)
