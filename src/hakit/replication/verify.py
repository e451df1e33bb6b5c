"""`hakit verify`: compare both replicas by checksums while the application runs.

First pass without stopping anything: both listings (type, permissions, owner, size, symlink
target, extended attributes) and BLAKE2b checksums of every 64 KiB block of every regular file.
What differs may just be changing (a write on its way): those paths are checked a second time
in a consistent cut — under the replicator's order lock, after a barrier operation that the
secondary acknowledges only once everything sent before it is applied — and only differences
that are still there are reported. Modification times are not compared (the secondary's clock
dates the writes it applies); sizes, content and the rest are.
"""

from __future__ import annotations

import errno as E
import os
import stat
import time
from typing import Any

from hakit.replication.apply import parent_of
from hakit.replication.primary import Replicator
from hakit.replication.scan import SUM_BLOCK, block_sums, walk
from hakit.wire.replication import DIGEST, Entry, Kind, Op, decode_entries, pack_ranges

CHUNK = 64 * 1024 * 1024
MAX_REPORTED = 100


def _describe(a: Entry | None, b: Entry | None) -> str:
    if b is None:
        return "missing on the secondary"
    if a is None:
        return "only on the secondary"
    if stat.S_IFMT(a.mode) != stat.S_IFMT(b.mode):
        return "different types"
    what = []
    if stat.S_IMODE(a.mode) != stat.S_IMODE(b.mode) and not stat.S_ISLNK(a.mode):
        what.append(f"mode {stat.S_IMODE(a.mode):o} vs {stat.S_IMODE(b.mode):o}")
    if (a.uid, a.gid) != (b.uid, b.gid):
        what.append(f"owner {a.uid}:{a.gid} vs {b.uid}:{b.gid}")
    if a.size != b.size:
        what.append(f"size {a.size} vs {b.size}")
    if a.target != b.target:
        what.append("symlink target")
    if a.xattrs != b.xattrs:
        what.append("extended attributes")
    return ", ".join(what)


class _Compare:
    def __init__(self, rep: Replicator) -> None:
        assert rep.sender is not None
        self.rep = rep
        self.sender = rep.sender
        self.roots = [d.fd for d in rep.dirs]
        self.filters = {d.index: d.filter for d in rep.dirs}

    def listings(self) -> tuple[dict[bytes, Entry], dict[bytes, Entry]]:
        reply = self.sender.query(Op(Kind.LIST, 0), timeout=600)
        if reply.ints[0]:
            raise OSError(reply.ints[0], "the secondary could not list its copy")
        remote = {e.path: e for e in decode_entries(reply.blobs[0])}
        local = {e.path: e for e in walk(self.roots, lambda i, r: self.filters[i].replicated(r))}
        return local, remote

    def differing_blocks(self, path: bytes, size: int) -> list[int]:
        with parent_of(self.roots, path) as (d, name):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
        try:
            out = []
            for start in range(0, max(size, 1), CHUNK):
                chunk = [(start, min(CHUNK, max(size, 1) - start))]
                reply = self.sender.query(
                    Op(Kind.SUMS, 0, (SUM_BLOCK,), (path, pack_ranges(chunk))), timeout=120
                )
                theirs = reply.blobs[0] if reply.ints[0] == 0 else b""
                ours = block_sums(fd, chunk, SUM_BLOCK)
                for i in range(len(ours) // DIGEST):
                    if ours[i * DIGEST : (i + 1) * DIGEST] != theirs[i * DIGEST : (i + 1) * DIGEST]:
                        out.append(start + i * SUM_BLOCK)
            return out
        finally:
            os.close(fd)

    def pass_(self, only: set[bytes] | None) -> tuple[dict[bytes, str], int, int]:
        local, remote = self.listings()
        found: dict[bytes, str] = {}
        files = nbytes = 0
        for path in sorted(set(local) | set(remote)):
            if only is not None and path not in only:
                continue
            a, b = local.get(path), remote.get(path)
            what = _describe(a, b)
            if what:
                found[path] = what
                continue
            assert a is not None
            if stat.S_ISREG(a.mode):
                files += 1
                nbytes += a.size
                blocks = self.differing_blocks(path, a.size)
                if blocks:
                    shown = ", ".join(str(o // SUM_BLOCK) for o in blocks[:8])
                    more = f" (+{len(blocks) - 8} more)" if len(blocks) > 8 else ""
                    found[path] = f"content differs in 64 KiB blocks {shown}{more}"
        return found, files, nbytes


def _display(rep: Replicator, wire: bytes) -> str:
    index, _, rel = wire.partition(b"/")
    top = rep.dirs[int(index)].path.rstrip("/")
    return f"{top}/{os.fsdecode(rel)}" if rel else top


def verify(rep: Replicator) -> dict[str, Any]:
    started = time.monotonic()
    c = _Compare(rep)
    first, files, nbytes = c.pass_(None)
    confirmed: dict[bytes, str] = {}
    if first:
        with rep.order:  # a consistent cut: nothing is in flight while we look again
            barrier = c.sender.submit(Op(Kind.PROGRESS, 0, (), (b"{}",)))
            # (not `send`: on a timeout it would break the channel, which needs `order`)
            if c.sender.answered(barrier, c.sender.ack_timeout + 1) is None:
                raise OSError(E.ETIMEDOUT, "the secondary did not acknowledge the barrier")
            confirmed, _, _ = c.pass_(set(first))
    diffs = [{"path": _display(rep, p), "difference": w} for p, w in sorted(confirmed.items())]
    return {
        "ok": not diffs,
        "files": files,
        "bytes": nbytes,
        "differences": diffs[:MAX_REPORTED],
        "differences_total": len(diffs),
        "changing_ignored": len(set(first) - set(confirmed)),
        "seconds": round(time.monotonic() - started, 2),
    }
