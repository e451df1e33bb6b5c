"""Replication frames: file operations from the primary, acknowledgements from the secondary.

Pure codec, no I/O. Every modifying file operation the primary's filesystem layer intercepts
becomes one `Op` with a sequence number; the secondary applies operations strictly in sequence
order and acknowledges each with the errno it got (0 = applied). A module may replicate several
directories over one stream (one order for all): a path is `INDEX/relative path`, INDEX being
the directory's position in the module's list, and `INDEX` alone is that directory itself. Paths
are bytes (Linux paths need not be UTF-8).

Besides modifications, the primary sends queries for resynchronisation and verification
(`LIST`: the replica's entries with their metadata; `SUMS`: checksums of blocks of a file),
answered by `LISTING` / `CHECKSUMS` frames carrying the query's sequence number, and `DONE`,
which marks the end of a resynchronisation (the replica is identical once it has applied
everything before it).

Frame: `length u32 | kind u8 | seq u64 | body` (network byte order; `length` counts what follows
it). Bodies are fixed fields then length-prefixed byte strings, per kind (see `_FIELDS`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

MAX_FRAME = 64 * 1024 * 1024 + 4096  # a write carries at most 64 MiB
_HEAD = struct.Struct("!IBQ")


class Kind(IntEnum):
    WRITE = 1
    TRUNCATE = 2
    CREATE = 3  # regular file (mode); O_EXCL semantics are the primary's business
    MKDIR = 4
    MKNOD = 5
    SYMLINK = 6
    LINK = 7
    UNLINK = 8
    RMDIR = 9
    RENAME = 10  # flags: RENAME_NOREPLACE=1, RENAME_EXCHANGE=2 (Linux values)
    CHMOD = 11
    CHOWN = 12
    UTIMENS = 13
    SETXATTR = 14
    REMOVEXATTR = 15
    FALLOCATE = 16
    FSYNC = 17  # make everything up to this sequence number durable (datasync flag)
    REMOVE_TREE = 18  # resync: remove a path whatever it is (recursively)
    SET_XATTRS = 19  # resync: the exact set of extended attributes of a path
    LIST = 20  # query: every entry of the replica (answered by LISTING)
    SUMS = 21  # query: checksums of blocks of a file (answered by CHECKSUMS)
    DONE = 22  # resync complete: everything before this is the primary's state
    PROGRESS = 23  # resync progress for the secondary's `hakit state` (JSON)
    ACTIVITY = 24  # query: regions a replica that was primary may hold unreplicated
    SYNCFS = 25  # make everything applied so far durable (acknowledged after syncfs)
    ACK = 100  # from the secondary: seq applied with errno (seq 0: "still working", no errno)
    LISTING = 101  # errno; encoded entries (see `encode_entries`)
    CHECKSUMS = 102  # errno; digests, DIGEST bytes per block asked
    ACTIVITY_LIST = 103  # errno; packed (path, packed ranges) pairs; no range = whole file


class FrameError(Exception):
    """A frame that cannot be decoded: the stream is out of step and must be dropped."""


# kind -> (fixed struct, number of byte strings)
_FIELDS: dict[Kind, tuple[struct.Struct, int]] = {
    Kind.WRITE: (struct.Struct("!Q"), 2),  # offset; path, data
    Kind.TRUNCATE: (struct.Struct("!Q"), 1),  # size; path
    # creations carry the owner (-1 = leave it to the replica's process, i.e. root)
    Kind.CREATE: (struct.Struct("!Iii"), 1),  # mode, uid, gid; path
    Kind.MKDIR: (struct.Struct("!Iii"), 1),  # mode, uid, gid; path
    Kind.MKNOD: (struct.Struct("!IQii"), 1),  # mode, rdev, uid, gid; path
    Kind.SYMLINK: (struct.Struct("!ii"), 2),  # uid, gid; path, target
    Kind.LINK: (struct.Struct("!"), 2),  # ; existing, new
    Kind.UNLINK: (struct.Struct("!"), 1),
    Kind.RMDIR: (struct.Struct("!"), 1),
    Kind.RENAME: (struct.Struct("!I"), 2),  # flags; old, new
    Kind.CHMOD: (struct.Struct("!I"), 1),
    Kind.CHOWN: (struct.Struct("!ii"), 1),  # uid, gid (-1 = unchanged)
    Kind.UTIMENS: (struct.Struct("!qq"), 1),  # atime ns, mtime ns
    Kind.SETXATTR: (struct.Struct("!I"), 3),  # flags; path, name, value
    Kind.REMOVEXATTR: (struct.Struct("!"), 2),  # ; path, name
    Kind.FALLOCATE: (struct.Struct("!IQQ"), 1),  # mode, offset, length; path
    Kind.FSYNC: (struct.Struct("!B"), 1),  # datasync; path
    Kind.REMOVE_TREE: (struct.Struct("!"), 1),
    Kind.SET_XATTRS: (struct.Struct("!"), 2),  # ; path, packed (name, value) pairs
    Kind.LIST: (struct.Struct("!"), 0),
    Kind.SUMS: (struct.Struct("!I"), 2),  # block size; path, packed (offset, length) ranges
    Kind.DONE: (struct.Struct("!"), 0),
    Kind.PROGRESS: (struct.Struct("!"), 1),
    Kind.ACTIVITY: (struct.Struct("!"), 0),
    Kind.SYNCFS: (struct.Struct("!"), 0),
    Kind.ACK: (struct.Struct("!i"), 0),  # errno
    Kind.LISTING: (struct.Struct("!i"), 1),  # errno; entries
    Kind.CHECKSUMS: (struct.Struct("!i"), 1),  # errno; digests
    Kind.ACTIVITY_LIST: (struct.Struct("!i"), 1),  # errno; regions
}
REPLIES = frozenset({Kind.ACK, Kind.LISTING, Kind.CHECKSUMS, Kind.ACTIVITY_LIST})
QUERIES = frozenset({Kind.LIST, Kind.SUMS, Kind.ACTIVITY})
DURABILITY = frozenset({Kind.FSYNC, Kind.SYNCFS})
"""Handled beside the stream by the secondary in `sync` mode (a long fsync must not hold up
the application's other writes): acknowledged once the data is durable."""
DIGEST = 16  # bytes per block checksum (BLAKE2b-128)
_LEN = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class Op:
    kind: Kind
    seq: int
    ints: tuple[int, ...] = ()
    blobs: tuple[bytes, ...] = field(default=())

    @property
    def path(self) -> bytes:
        return self.blobs[0] if self.blobs else b""

    @property
    def size(self) -> int:
        """Payload bytes (for accounting and bandwidth limits)."""
        return sum(len(b) for b in self.blobs)


def encode(op: Op) -> bytes:
    fixed, nblobs = _FIELDS[op.kind]
    if len(op.blobs) != nblobs:
        raise ValueError(f"{op.kind.name} takes {nblobs} byte strings, not {len(op.blobs)}")
    parts = [fixed.pack(*op.ints)]
    for b in op.blobs:
        parts += [_LEN.pack(len(b)), b]
    body = b"".join(parts)
    length = 1 + 8 + len(body)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes is over the {MAX_FRAME} limit")
    return _HEAD.pack(length, op.kind, op.seq) + body


def ack(seq: int, errno: int = 0) -> Op:
    return Op(Kind.ACK, seq, (errno,))


class Decoder:
    """Incremental: feed bytes as they arrive, take the complete frames out."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Op]:
        self._buf += data
        out: list[Op] = []
        while len(self._buf) >= 4:
            (length,) = _LEN.unpack_from(self._buf, 0)
            if length < 9 or length > MAX_FRAME:
                raise FrameError(f"frame length {length} out of range")
            if len(self._buf) < 4 + length:
                break
            frame = bytes(self._buf[4 : 4 + length])
            del self._buf[: 4 + length]
            out.append(_decode_frame(frame))
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


def _decode_frame(frame: bytes) -> Op:
    kind_raw, seq = struct.unpack_from("!BQ", frame, 0)
    try:
        kind = Kind(kind_raw)
    except ValueError:
        raise FrameError(f"unknown frame kind {kind_raw}") from None
    fixed, nblobs = _FIELDS[kind]
    pos = 9
    try:
        ints = fixed.unpack_from(frame, pos)
        pos += fixed.size
        blobs = []
        for _ in range(nblobs):
            (n,) = _LEN.unpack_from(frame, pos)
            pos += 4
            if pos + n > len(frame):
                raise FrameError(f"{kind.name}: byte string overruns the frame")
            blobs.append(frame[pos : pos + n])
            pos += n
    except struct.error as e:
        raise FrameError(f"{kind.name}: truncated frame ({e})") from None
    if pos != len(frame):
        raise FrameError(f"{kind.name}: {len(frame) - pos} trailing bytes")
    op = Op(kind, seq, tuple(ints), tuple(blobs))
    _check(op)
    return op


MAX_OFFSET = (1 << 63) - 1  # file offsets and sizes (off_t)
MAX_SUM_BLOCK = 16 * 1024 * 1024
_OFFSETS: dict[Kind, tuple[int, ...]] = {  # positions of u64 fields that are off_t
    Kind.WRITE: (0,),
    Kind.TRUNCATE: (0,),
    Kind.FALLOCATE: (1, 2),
}
_OWNERS: dict[Kind, tuple[int, int]] = {  # positions of (uid, gid), -1 = unchanged
    Kind.CREATE: (1, 2),
    Kind.MKDIR: (1, 2),
    Kind.MKNOD: (2, 3),
    Kind.SYMLINK: (0, 1),
    Kind.CHOWN: (0, 1),
}


def _check(op: Op) -> None:
    """Bounds of decoded fields that the applier hands to the kernel as they are."""
    for i in _OFFSETS.get(op.kind, ()):
        if op.ints[i] > MAX_OFFSET:
            raise FrameError(f"{op.kind.name}: offset or size {op.ints[i]} out of range")
    for i in _OWNERS.get(op.kind, ()):
        if op.ints[i] < -1:
            raise FrameError(f"{op.kind.name}: owner id {op.ints[i]} out of range")
    if op.kind is Kind.RENAME and op.ints[0] not in (0, 1, 2):
        raise FrameError(f"RENAME: flags {op.ints[0]} (0, NOREPLACE=1 or EXCHANGE=2)")
    if op.kind is Kind.FSYNC and op.ints[0] > 1:
        raise FrameError(f"FSYNC: datasync flag {op.ints[0]}")
    if op.kind is Kind.SUMS and op.ints[0] > MAX_SUM_BLOCK:
        raise FrameError(f"SUMS: block size {op.ints[0]} over {MAX_SUM_BLOCK}")


# --- bodies of resynchronisation frames ------------------------------------------------------

_PAIR = struct.Struct("!QQ")


def pack_ranges(ranges: list[tuple[int, int]]) -> bytes:
    return b"".join(_PAIR.pack(o, n) for o, n in ranges)


def unpack_ranges(blob: bytes) -> list[tuple[int, int]]:
    if len(blob) % _PAIR.size:
        raise FrameError("ranges: truncated")
    return [_PAIR.unpack_from(blob, i) for i in range(0, len(blob), _PAIR.size)]


def pack_pairs(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(_LEN.pack(len(a)) + a + _LEN.pack(len(b)) + b for a, b in pairs)


def unpack_pairs(blob: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 0
    try:
        while pos < len(blob):
            items = []
            for _ in range(2):
                (n,) = _LEN.unpack_from(blob, pos)
                items.append(blob[pos + 4 : pos + 4 + n])
                pos += 4 + n
            if pos > len(blob):
                raise FrameError("pairs: overrun")
            out.append((items[0], items[1]))
    except struct.error:
        raise FrameError("pairs: truncated") from None
    return out


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a replicated tree, as compared by resynchronisation and verification."""

    path: bytes
    mode: int  # st_mode: type and permissions
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ino: int  # to find hard links (same ino on one side)
    nlink: int
    target: bytes = b""  # symbolic link target
    xattrs: bytes = b""  # digest of the extended attributes ("" = none)


_ENTRY = struct.Struct("!IIIQqQI")


def encode_entries(entries: list[Entry]) -> bytes:
    parts = []
    for e in entries:
        parts += [
            _LEN.pack(len(e.path)),
            e.path,
            _ENTRY.pack(e.mode, e.uid, e.gid, e.size, e.mtime_ns, e.ino, e.nlink),
            _LEN.pack(len(e.target)),
            e.target,
            _LEN.pack(len(e.xattrs)),
            e.xattrs,
        ]
    return b"".join(parts)


def decode_entries(blob: bytes) -> list[Entry]:
    out, pos = [], 0

    def string() -> bytes:
        nonlocal pos
        (n,) = _LEN.unpack_from(blob, pos)
        if pos + 4 + n > len(blob):
            raise FrameError("entries: string overruns")
        pos += 4 + n
        return blob[pos - n : pos]

    try:
        while pos < len(blob):
            path = string()
            mode, uid, gid, size, mtime_ns, ino, nlink = _ENTRY.unpack_from(blob, pos)
            pos += _ENTRY.size
            target = string()
            xattrs = string()
            out.append(Entry(path, mode, uid, gid, size, mtime_ns, ino, nlink, target, xattrs))
    except struct.error:
        raise FrameError("entries: truncated") from None
    return out
