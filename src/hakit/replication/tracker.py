"""What the secondary is missing, on the primary's disk: a `DirtyMap` with a write-ahead journal.

While the secondary is away, every modifying operation is marked here *before* it is applied
locally, and the journal records that mark makes are made durable first: a primary that
crashes (power cut included) finds, when it starts again, every region it may have changed
since its secondary last had the same data. The map is valid relative to a *base*: the data
generation the secondary had when it was last identical (`base`). Resynchronisation trusts the
map only for a secondary whose data is still that generation; otherwise it compares checksums.

Journal: a JSON header line (`base`, `block`) then one record per line,
`kind TAB hex(path) TAB a TAB b`; compacted (rewritten from a snapshot, atomically) when it is
much larger than the map it describes. A torn last line (crash while appending) is ignored:
its operation had not started.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from hakit.core.regions import DirtyMap, Record
from hakit.replication.apply import RENAME_EXCHANGE
from hakit.wire.replication import Kind, Op, pack_ranges

TRACK_BLOCK = 1024 * 1024  # resync compares checksums per 64 KiB inside a dirty block
COMPACT_AT = 4096  # records appended since the last snapshot


def marks_of(m: DirtyMap, op: Op) -> list[Record]:
    """The marks an operation makes (what the secondary must be sent again)."""
    k, p = op.kind, op.path
    if k is Kind.WRITE:
        return m.mark_write(p, op.ints[0], len(op.blobs[1]))
    if k is Kind.FALLOCATE:
        return m.mark_write(p, op.ints[1], op.ints[2])
    if k is Kind.TRUNCATE:
        return m.mark_truncate(p, op.ints[0])
    if k in (Kind.CREATE, Kind.MKDIR, Kind.MKNOD, Kind.SYMLINK):
        return m.mark_created(p)
    if k is Kind.LINK:
        return m.mark_created(op.blobs[1]) + m.mark_whole(p)
    if k in (Kind.UNLINK, Kind.RMDIR, Kind.REMOVE_TREE):
        return m.mark_removed(p)
    if k is Kind.RENAME:
        return m.mark_renamed(p, op.blobs[1], bool(op.ints[0] & RENAME_EXCHANGE))
    if k in (Kind.CHMOD, Kind.CHOWN, Kind.UTIMENS, Kind.SETXATTR, Kind.REMOVEXATTR):
        return m.mark_meta(p)
    if k is Kind.SET_XATTRS:
        return m.mark_meta(p)
    return []  # FSYNC, queries: nothing to resend


class Tracker:
    """Thread-safe; `mark` returns once its records are durable."""

    def __init__(self, path: Path, block: int = TRACK_BLOCK) -> None:
        self.path = path
        self.block = block
        self.base = ""
        self.map = DirtyMap(block=block)
        self.active = False  # a journal exists (tracking since `base`)
        self._lock = threading.Lock()
        self._fd = -1
        self._appended = 0
        self._load()

    # --- lifecycle ----------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        lines = raw.split(b"\n")
        try:
            header = json.loads(lines[0])
            self.base = str(header["base"])
            block = int(header["block"])
        except (ValueError, KeyError, TypeError):
            raise RuntimeError(f"{self.path}: unreadable tracking journal header") from None
        records: list[Record] = []
        for line in lines[1:]:
            parts = line.split(b"\t")
            if len(parts) != 4:
                continue  # torn last line
            try:
                records.append(
                    (
                        parts[0].decode(),
                        bytes.fromhex(parts[1].decode()),
                        int(parts[2]),
                        int(parts[3]),
                    )
                )
            except ValueError:
                continue
        self.map = DirtyMap.replay(records, block=block)
        self.block = block
        self.active = True
        self._appended = len(records)

    def start(self, base: str) -> None:
        """Begin tracking relative to `base`, unless a journal already tracks (it is kept:
        what it holds is still missing from a secondary of its base)."""
        with self._lock:
            if self.active:
                return
            self.base = base
            self._rewrite([])
            self.active = True

    def reset(self, base: str) -> None:
        """The secondary is identical as of `base`: forget everything, keep tracking."""
        with self._lock:
            self.base = base
            self.map = DirtyMap(block=self.block)
            self._rewrite([])
            self.active = True

    def drop(self) -> None:
        """This node no longer tracks for a secondary (it became one)."""
        with self._lock:
            self._close()
            self.path.unlink(missing_ok=True)
            self.map = DirtyMap(block=self.block)
            self.base = ""
            self.active = False

    def close(self) -> None:
        with self._lock:
            self._close()

    # --- marking ------------------------------------------------------------------------------

    def mark(self, op: Op) -> None:
        with self._lock:
            self._append(marks_of(self.map, op))

    def absorb(self, other: Tracker) -> None:
        """Mark every region `other` marks (one journal sync)."""
        with other._lock:
            regions = {p: other.map.regions(p) for p in other.map.data}
        with self._lock:
            records: list[Record] = []
            for path, ranges in regions.items():
                if ranges is None:
                    records += self.map.mark_whole(path)
                    continue
                for offset, length in ranges:
                    records += self.map.mark_write(path, offset, length)
            self._append(records)

    def follow(self, op: Op) -> None:
        """A rename or removal sent to the secondary as it happened (while resynchronising):
        the marks follow the names, or go."""
        with self._lock:
            if op.kind is Kind.RENAME:
                exchange = bool(op.ints[0] & RENAME_EXCHANGE)
                self._append(self.map.follow_rename(op.path, op.blobs[1], exchange))
            elif op.kind in (Kind.UNLINK, Kind.RMDIR, Kind.REMOVE_TREE):
                self._append(self.map.follow_removal(op.path))

    def mark_whole(self, path: bytes) -> None:
        self.mark_whole_many([path])

    def mark_whole_many(self, paths: list[bytes]) -> None:
        """Whole files, in one durable journal write."""
        with self._lock:
            self._append([r for p in paths for r in self.map.mark_whole(p)])

    def forget(self, path: bytes) -> None:
        """`path` was resynchronised (its marks are cleared; not journalled: a crash only
        means it is compared again)."""
        with self._lock:
            self.map.data.pop(path, None)
            self.map.meta.discard(path)

    def regions(self, path: bytes) -> list[tuple[int, int]] | None:
        with self._lock:
            return self.map.regions(path)

    def paths(self) -> set[bytes]:
        with self._lock:
            return set(self.map.data) | set(self.map.meta)

    def empty(self) -> bool:
        with self._lock:
            return not self.map.data and not self.map.meta

    # --- journal ------------------------------------------------------------------------------

    def _append(self, records: list[Record]) -> None:
        if not records:
            return
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        data = b"".join(
            b"%s\t%s\t%d\t%d\n" % (k.encode(), p.hex().encode(), a, b) for k, p, a, b in records
        )
        os.write(self._fd, data)
        os.fdatasync(self._fd)
        self._appended += len(records)
        if self._appended > COMPACT_AT and self._appended > 4 * len(self.map.snapshot()):
            self._rewrite(self.map.snapshot())

    def _rewrite(self, records: list[Record]) -> None:
        self._close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        header = json.dumps({"base": self.base, "block": self.block}).encode() + b"\n"
        body = b"".join(
            b"%s\t%s\t%d\t%d\n" % (k.encode(), p.hex().encode(), a, b) for k, p, a, b in records
        )
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, header + body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self._appended = len(records)

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


ACTIVITY_BLOCK = 4 * 1024 * 1024


class ActivityLog(Tracker):
    """What a primary *with* a secondary may have written that the secondary does not have yet:
    the regions of operations in flight, on disk before the operation is applied (DRBD calls
    it an activity log). Regions are coarse (4 MiB) and stay marked for at least one epoch, so
    a stream of writes to the same regions costs a journal sync only when an epoch starts.

    `rotate(seq)` starts a new epoch once every operation up to the previous epoch's last
    sequence number is acknowledged: the regions of the epoch before are then on the secondary
    and are forgotten (the journal is rewritten without them). After a crash, the journal holds
    at least every region whose operation may not have reached the secondary; when this node
    comes back as a secondary, it hands them to the new primary, which compares them (instead
    of every file)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, ACTIVITY_BLOCK)
        self.recent = DirtyMap(block=self.block)  # marks of the current epoch
        self.epoch_seq = 0  # last sequence number sent in the previous epoch

    def mark(self, op: Op) -> None:
        """Under the replicator's order lock, before the operation is applied and sent."""
        with self._lock:
            records = marks_of(self.recent, op)
            if records:
                marks_of(self.map, op)
                self._append(records)

    def rotate(self, durable_through: int, seq: int) -> bool:
        """Under the order lock. Every operation up to `durable_through` is durable on the
        secondary: if that covers the previous epoch, forget it and start a new one at `seq`
        (the last sequence number sent); True if it did."""
        with self._lock:
            if self.epoch_seq > durable_through:
                return False
            self.map = DirtyMap.replay(self.recent.snapshot(), block=self.block)
            self.recent = DirtyMap(block=self.block)
            self.epoch_seq = seq
            self._rewrite(self.map.snapshot())
            return True

    def exported(self) -> list[tuple[bytes, bytes]]:
        """(path, packed ranges) for the `ACTIVITY` answer; no ranges = the whole file."""
        with self._lock:
            out = []
            for path in sorted(self.map.data):
                regions = self.map.regions(path)
                out.append((path, pack_ranges(regions or [])))
            return out
