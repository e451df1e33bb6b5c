"""Online resynchronisation, driven by the primary while the application keeps writing.

The application's operations keep flowing to the secondary during the copy (the replicator is
`resyncing`); the resynchronisation's own frames go through the same stream, and each decision
is taken under the replicator's order lock against the *current* local state, so a block read
and sent here can never overtake (or be overtaken by) an application write to it.

One pass:
1. list the secondary's entries (paths, types, modes, owners, sizes, xattrs) and ours;
2. remove what the secondary has and we do not; recreate what differs in type; create what is
   missing (hard links as links); set mode, owner, extended attributes and symlink targets;
3. for each regular file, *candidate regions*: the whole file when the secondary has no copy or
   the tracking cannot be trusted (different base generation, a secondary that crashed as a
   primary with writes in flight, files with several links), otherwise the regions the tracker
   marked plus any size difference. Candidates are compared by BLAKE2b checksums per 64 KiB
   block on both sides; only blocks that differ are sent.
Operations the secondary failed to apply during the pass are marked again; passes repeat
until nothing is marked (at most `MAX_PASSES`), then `DONE` is sent and the replicator is
`ready` in the same critical section. An interrupted resynchronisation leaves the tracker with
everything not yet done, so the next one resumes there (and checksums skip what already
arrived).
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hakit.replication.apply import parent_of
from hakit.replication.primary import Replicator
from hakit.replication.scan import SUM_BLOCK, block_sums, entry_of, walk, xattr_pairs
from hakit.wire.replication import (
    DIGEST,
    Entry,
    Kind,
    Op,
    decode_entries,
    pack_pairs,
    pack_ranges,
)

MAX_PASSES = 8
SUMS_CHUNK = 8 * 1024 * 1024  # bytes of file per checksum query (and per progress step)
INFLIGHT = 64  # blocks sent before waiting for their acknowledgements
REPORT_EVERY = 0.5


class ResyncError(Exception):
    pass


@dataclass
class Progress:
    started: float = field(default_factory=time.monotonic)
    phase: str = "listing"
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0  # bytes to compare
    bytes_done: int = 0  # compared so far
    bytes_sent: int = 0  # file data actually sent
    entries_fixed: int = 0  # names and metadata set on the secondary
    passes: int = 0
    full: bool = False

    def as_dict(self) -> dict[str, object]:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.bytes_done / elapsed
        left = max(self.bytes_total - self.bytes_done, 0)
        return {
            "phase": self.phase,
            "files_done": self.files_done,
            "files_total": self.files_total,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "bytes_sent": self.bytes_sent,
            "entries_fixed": self.entries_fixed,
            "pass": self.passes,
            "full_compare": self.full,
            "elapsed": round(elapsed, 2),
            "rate": round(rate),
            "eta": round(left / rate, 1) if rate > 0 and left else 0.0,
        }


def _type(mode: int) -> int:
    return stat.S_IFMT(mode)


class Resync:
    def __init__(
        self,
        rep: Replicator,
        trust: bool,
        bandwidth: int = 0,
        report: Callable[[dict[str, object]], None] = lambda p: None,
        extra: dict[bytes, list[tuple[int, int]] | None] | None = None,
    ) -> None:
        """`extra`: regions the secondary itself may have changed (its activity log, when it
        stopped uncleanly as a primary), compared in the first pass besides the tracked ones."""
        assert rep.sender is not None
        self.extra = extra or {}
        self.rep = rep
        self.sender = rep.sender
        self.trust = trust
        self.bandwidth = bandwidth
        self.report = report
        self.progress = Progress(full=not trust)
        self._last_report = 0.0
        self._waiting: list[tuple[int, Op]] = []  # sent under `order`, not yet waited for
        self._recreated: set[bytes] = set()
        self._roots = [d.fd for d in rep.dirs]

    # --- driver ---------------------------------------------------------------------------------

    def run(self) -> Progress:
        try:
            return self._run()
        finally:
            with self.rep.order:
                self.rep.full_pass = False

    def _run(self) -> Progress:
        full = not self.trust
        while True:
            self.progress.passes += 1
            with self.rep.order:
                self.rep.full_pass = full
            self._pass(full)
            self.extra = {}
            self._drain()
            self.sender.send(Op(Kind.PROGRESS, 0, (), (self._progress_blob(),)))
            full = False
            with self.rep.order:
                self.rep.full_pass = False
                # Whatever was sent before is applied, and every failure of the application's
                # operations is marked, before the tracker is looked at: a barrier (in `semi`
                # mode late errors arrive before its acknowledgement), then their threads.
                barrier = self.sender.submit(Op(Kind.PROGRESS, 0, (), (b"{}",)))
                if self.sender.answered(barrier, self.sender.ack_timeout + 1) is None:
                    raise ResyncError("the secondary did not acknowledge the final barrier")
                self.rep.settle(self.sender.ack_timeout + 1)
                # Marks of paths gone since: their removal was sent as it happened, or this
                # pass removed them from the secondary (`_remove_extra`).
                for path in self.rep.tracker.paths():
                    if self._stat(path) is None:
                        self.rep.tracker.forget(path)
                if self.rep.tracker.empty():
                    self.sender.submit(Op(Kind.DONE, 0))
                    self.rep.ready()
                    break
            if self.progress.passes >= MAX_PASSES:
                left = sorted(self.rep.tracker.paths())[:5]
                raise ResyncError(
                    f"still differing after {MAX_PASSES} passes (e.g. {left!r}): the "
                    "application changes these paths faster than they can be copied"
                )
        self.progress.phase = "done"
        self._tick(force=True)
        return self.progress

    def _pass(self, full: bool) -> None:
        p = self.progress
        p.phase = "listing"
        self._tick(force=True)
        reply = self.sender.query(Op(Kind.LIST, 0), timeout=600)
        if reply.ints[0]:
            raise ResyncError(f"the secondary could not list its copy: errno {reply.ints[0]}")
        remote = {e.path: e for e in decode_entries(reply.blobs[0])}
        filters = {d.index: d.filter for d in self.rep.dirs}
        local = list(walk(self._roots, lambda i, r: filters[i].replicated(r)))
        tracked = self.rep.tracker.paths()
        # what to compare
        todo: dict[bytes, list[tuple[int, int]] | None] = {}
        for e in local:
            if not stat.S_ISREG(e.mode):
                continue
            r = remote.get(e.path)
            if full or r is None or _type(r.mode) != _type(e.mode) or e.nlink > 1:
                todo[e.path] = None
                continue
            regions = self.rep.tracker.regions(e.path) if e.path in tracked else []
            if regions is not None and e.path in self.extra:
                theirs = self.extra[e.path]
                regions = None if theirs is None else [*regions, *theirs]
            if regions is None:
                todo[e.path] = None
                continue
            if r.size != e.size:
                lo = min(r.size, e.size)
                regions = [*regions, (lo - lo % SUM_BLOCK, max(r.size, e.size) - lo + SUM_BLOCK)]
            if regions:
                todo[e.path] = regions
        p.files_total += len(todo)
        p.bytes_total += sum(
            e.size if todo[e.path] is None else sum(n for _, n in todo[e.path] or [])
            for e in local
            if e.path in todo
        )
        p.phase = "copying"
        self._remove_extra(local, remote)
        linked: dict[int, bytes] = {}
        self._recreated = set()
        for e in local:
            self._entry(e, remote, linked, todo)
            self._tick()

    # --- names and metadata ---------------------------------------------------------------------

    def _remove_extra(self, local: list[Entry], remote: dict[bytes, Entry]) -> None:
        here = {e.path for e in local}
        removed: list[bytes] = []
        for path in sorted(remote):
            if path in here or any(path.startswith(r + b"/") for r in removed):
                continue
            with self.rep.order:
                if self._stat(path) is None:  # still absent here
                    self._submit(Op(Kind.REMOVE_TREE, 0, (), (path,)))
                    removed.append(path)
                    self.progress.entries_fixed += 1

    def _stat(self, path: bytes) -> Entry | None:
        try:
            with parent_of(self._roots, path) as (d, name):
                return entry_of(d, name, path)
        except OSError:
            return None

    def _entry(
        self,
        e: Entry,
        remote: dict[bytes, Entry],
        linked: dict[int, bytes],
        todo: dict[bytes, list[tuple[int, int]] | None],
    ) -> None:
        path = e.path
        r = remote.get(path)
        with self.rep.order:
            cur = self._stat(path)
            if cur is None:
                return  # removed meanwhile (and the removal was sent)
            if r is not None and (
                _type(r.mode) != _type(cur.mode)
                or (stat.S_ISLNK(cur.mode) and r.target != cur.target)
                # a single file here, one of several names of a file there: writing into it
                # would change the other names too; it is recreated (copied whole)
                or (stat.S_ISREG(cur.mode) and cur.nlink == 1 and r.nlink > 1)
            ):
                self._fix(Op(Kind.REMOVE_TREE, 0, (), (path,)))
                r = None
            if stat.S_ISREG(cur.mode) and cur.nlink > 1 and cur.ino in linked:
                leader = linked[cur.ino]
                theirs = remote.get(leader)
                same = (
                    r is not None
                    and theirs is not None
                    and theirs.ino == r.ino
                    and leader not in self._recreated
                )
                if not same:
                    if r is not None:
                        self._fix(Op(Kind.REMOVE_TREE, 0, (), (path,)))
                    self._fix(Op(Kind.LINK, 0, (), (linked[cur.ino], path)))
                todo.pop(path, None)
                if path in self.rep.tracker.paths():
                    # marked through this name: the data and metadata are the leader's, which
                    # may have been compared before the mark; compare it again next pass
                    self.rep.tracker.mark_whole(leader)
                    self.rep.tracker.forget(path)
                return
            if r is None:
                self._create(cur)
                self._recreated.add(path)
                if stat.S_ISREG(cur.mode):
                    todo[path] = None  # empty there: all of it (whatever the listing said)
            if stat.S_ISREG(cur.mode):
                if cur.nlink > 1:
                    linked[cur.ino] = path
                if path not in todo:  # marked since the listing (a failed operation)?
                    late = self.rep.tracker.regions(path)
                    if late is None or late:
                        todo[path] = late
            # Everything about this path is sent from now on (metadata just below, data right
            # after) and its later changes as they happen: its marks are done with.
            self.rep.tracker.forget(path)
            if r is None and stat.S_ISDIR(cur.mode) and cur.ino != e.ino:
                # created there just now, but moved here since the listing: its entries were
                # listed under other names, the next pass creates them
                self.rep.tracker.mark_whole(path)
            self._metadata(cur, r)
            if not stat.S_ISREG(cur.mode):  # listed as a file, replaced since
                todo.pop(path, None)
            if path not in todo:
                return
            # opened here, where it is `cur`; its data goes to its name of the moment, which
            # the replicator keeps up to date if the application renames it meanwhile
            with parent_of(self._roots, path) as (d, name):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
            self.rep.copying = path
        try:
            self._data(fd, todo.pop(path), r is None)
        except BaseException:
            with self.rep.order:
                now = self.rep.copying
            if now is not None:
                self.rep.tracker.mark_whole(now)  # interrupted in the middle of this file
            raise
        finally:
            os.close(fd)
            with self.rep.order:
                self.rep.copying = None
        self.progress.files_done += 1

    def _create(self, e: Entry) -> None:
        t, perm = _type(e.mode), stat.S_IMODE(e.mode)
        if t == stat.S_IFDIR:
            if b"/" not in e.path:  # the replicated directory itself always exists
                return
            op = Op(Kind.MKDIR, 0, (perm, e.uid, e.gid), (e.path,))
        elif t == stat.S_IFREG:
            op = Op(Kind.CREATE, 0, (perm, e.uid, e.gid), (e.path,))
        elif t == stat.S_IFLNK:
            op = Op(Kind.SYMLINK, 0, (e.uid, e.gid), (e.path, e.target))
        else:
            with parent_of(self._roots, e.path) as (d, name):
                rdev = os.stat(name, dir_fd=d, follow_symlinks=False).st_rdev
            op = Op(Kind.MKNOD, 0, (e.mode, rdev, e.uid, e.gid), (e.path,))
        self._fix(op)

    def _metadata(self, cur: Entry, r: Entry | None) -> None:
        path = cur.path
        if stat.S_ISLNK(cur.mode):
            if r is not None and (r.uid, r.gid) != (cur.uid, cur.gid):
                self._fix(Op(Kind.CHOWN, 0, (cur.uid, cur.gid), (path,)))
            return
        if r is None or stat.S_IMODE(r.mode) != stat.S_IMODE(cur.mode):
            self._fix(Op(Kind.CHMOD, 0, (stat.S_IMODE(cur.mode),), (path,)))
        if r is not None and (r.uid, r.gid) != (cur.uid, cur.gid):
            self._fix(Op(Kind.CHOWN, 0, (cur.uid, cur.gid), (path,)))
        if (r.xattrs if r is not None else b"") != cur.xattrs:
            with parent_of(self._roots, path) as (d, name):
                pairs = xattr_pairs(f"/proc/self/fd/{d}/".encode() + name)
            self._fix(Op(Kind.SET_XATTRS, 0, (), (path, pack_pairs(pairs))))
        if r is None or r.mtime_ns != cur.mtime_ns:
            self._fix(Op(Kind.UTIMENS, 0, (cur.mtime_ns, cur.mtime_ns), (path,)))

    def _fix(self, op: Op) -> None:
        self._submit(op)
        self.progress.entries_fixed += 1

    # --- data -----------------------------------------------------------------------------------

    def _data(self, fd: int, regions: list[tuple[int, int]] | None, missing: bool) -> None:
        """Send what differs of the open file `fd`, named `rep.copying` (None: removed)."""
        size = os.fstat(fd).st_size
        if regions is None:
            regions = [(0, size)]
        ranges = _aligned(regions, size)
        for chunk in _chunks(ranges, SUMS_CHUNK):
            if missing:
                differ = [o for o, n in chunk for o in range(o, o + n, SUM_BLOCK)]
            else:
                path = self.rep.copying
                if path is None:
                    return
                differ = self._differing(path, fd, chunk)
            compared = sum(min(n, max(size - o, 0)) for o, n in chunk)
            same = compared - sum(min(SUM_BLOCK, max(size - o, 0)) for o in differ)
            self.progress.bytes_done += same  # compared and equal: done
            for offset in differ:
                if not self._send_block(fd, offset):
                    return
                self.progress.bytes_done += min(SUM_BLOCK, max(size - offset, 0))
                self._tick()  # live progress within a large file, not only between files
        with self.rep.order:
            path = self.rep.copying
            if path is None:
                return
            now = os.fstat(fd)
            self._submit(Op(Kind.TRUNCATE, 0, (now.st_size,), (path,)))
            self._submit(Op(Kind.UTIMENS, 0, (now.st_atime_ns, now.st_mtime_ns), (path,)))

    def _differing(self, path: bytes, fd: int, chunk: list[tuple[int, int]]) -> list[int]:
        reply = self.sender.query(
            Op(Kind.SUMS, 0, (SUM_BLOCK,), (path, pack_ranges(chunk))), timeout=120
        )
        theirs = reply.blobs[0] if reply.ints[0] == 0 else b""
        ours = block_sums(fd, chunk, SUM_BLOCK)
        offsets = [o for o, n in chunk for o in range(o, o + n, SUM_BLOCK)]
        return [
            o
            for i, o in enumerate(offsets)
            if ours[i * DIGEST : (i + 1) * DIGEST] != theirs[i * DIGEST : (i + 1) * DIGEST]
        ]

    def _send_block(self, fd: int, offset: int) -> bool:
        """Send one block of the file being copied; False if it was removed meanwhile."""
        with self.rep.order:
            path = self.rep.copying
            if path is None:
                return False
            data = os.pread(fd, SUM_BLOCK, offset)
            if not data:
                return True
            self._submit(Op(Kind.WRITE, 0, (offset,), (path, data)))
        self.progress.bytes_sent += len(data)
        if self.bandwidth:
            ahead = self.progress.bytes_sent / self.bandwidth - (
                time.monotonic() - self.progress.started
            )
            if ahead > 0:
                time.sleep(min(ahead, 1.0))
        return True

    # --- plumbing -------------------------------------------------------------------------------

    def _submit(self, op: Op) -> None:
        """Send (the caller holds `order`); acknowledgements are collected in batches."""
        self._waiting.append((self.sender.submit(op), op))

    def _drain(self) -> None:
        """Wait for what was sent (never under `order`: that would stall the application)."""
        batch, self._waiting = self._waiting, []
        for seq, op in batch:
            reply = self.sender.wait(seq)
            if reply.ints[0]:
                self.rep.diverged(op, int(reply.ints[0]))

    def _progress_blob(self) -> bytes:
        return json.dumps(self.progress.as_dict()).encode()

    def _tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if len(self._waiting) >= INFLIGHT:
            self._drain()
        if not force and now - self._last_report < REPORT_EVERY:
            return
        self._last_report = now
        self.report(self.progress.as_dict())
        if not force:
            self._drain()
            self.sender.send(Op(Kind.PROGRESS, 0, (), (self._progress_blob(),)))


def _aligned(regions: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """Merge and align to checksum blocks, clipped to the file (at least one block when the
    file is empty, so a missing block shows up)."""
    out: list[tuple[int, int]] = []
    for o, n in sorted(regions):
        lo = o - o % SUM_BLOCK
        hi = min(o + n, max(size, 1))
        hi = hi + (-hi % SUM_BLOCK)
        if hi <= lo:
            continue
        if out and lo <= out[-1][0] + out[-1][1]:
            last = out[-1]
            out[-1] = (last[0], max(last[0] + last[1], hi) - last[0])
        else:
            out.append((lo, hi - lo))
    return out


def _chunks(ranges: list[tuple[int, int]], limit: int) -> list[list[tuple[int, int]]]:
    out: list[list[tuple[int, int]]] = [[]]
    size = 0
    for o, n in ranges:
        while n > 0:
            take = min(n, limit - size)
            out[-1].append((o, take))
            o, n, size = o + take, n - take, size + take
            if size >= limit:
                out.append([])
                size = 0
    return [c for c in out if c]
