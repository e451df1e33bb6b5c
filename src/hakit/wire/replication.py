"""Replication frames: file operations from the primary, acknowledgements from the secondary.

Pure codec, no I/O. Every modifying file operation the primary's filesystem layer intercepts
becomes one `Op` with a sequence number; the secondary applies operations strictly in sequence
order and acknowledges each with the errno it got (0 = applied). Paths are relative to the
replicated directory, as bytes (Linux paths need not be UTF-8).

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
    ACK = 100  # from the secondary: seq applied with errno


class FrameError(Exception):
    """A frame that cannot be decoded: the stream is out of step and must be dropped."""


# kind -> (fixed struct, number of byte strings)
_FIELDS: dict[Kind, tuple[struct.Struct, int]] = {
    Kind.WRITE: (struct.Struct("!Q"), 2),  # offset; path, data
    Kind.TRUNCATE: (struct.Struct("!Q"), 1),  # size; path
    Kind.CREATE: (struct.Struct("!I"), 1),  # mode; path
    Kind.MKDIR: (struct.Struct("!I"), 1),  # mode; path
    Kind.MKNOD: (struct.Struct("!IQ"), 1),  # mode, rdev; path
    Kind.SYMLINK: (struct.Struct("!"), 2),  # ; path, target
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
    Kind.ACK: (struct.Struct("!i"), 0),  # errno
}
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
    return Op(kind, seq, tuple(ints), tuple(blobs))
