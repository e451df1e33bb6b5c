"""Dirty-region tracking for resynchronisation. Pure: no I/O.

The primary tracks what the secondary may not have: every block written while the secondary is
away, and — while it is there — every block in flight (sent, not yet acknowledged), so that a
primary that crashes with writes in flight knows which of its blocks may differ from the node
that takes over. Tracking is crash-safe by a write-ahead rule: `mark(...)` returns the journal
records to make durable *before* the operation proceeds; a block already dirty costs nothing, so
the journal grows with the number of distinct blocks touched, not with the number of writes.

Three kinds of dirt, each resynchronised differently:
- data blocks of a file (`BLOCK` bytes each), or the whole file;
- metadata of a path (mode, owner, times, xattrs, size);
- entries of a directory (created, removed, renamed, linked names).

`DirtyMap.replay(records)` rebuilds the map from a journal; `snapshot()` gives the minimal
records of the current state (to compact the journal).
"""

from __future__ import annotations

from dataclasses import dataclass, field

BLOCK = 64 * 1024
ALL = -1  # the whole file

Record = tuple[str, bytes, int, int]
"""Journal record (kind, path, a, b): `d` data blocks a..b (inclusive; a = ALL: the whole
file), `m` metadata of path, `n` entries of directory path, `u` forget path (removed), `r` / `x`
rename / exchange, with path = old + NUL + new."""


def parent(path: bytes) -> bytes:
    i = path.rfind(b"/")
    return path[:i] if i > 0 else b""


def _under(path: bytes, prefix: bytes) -> bool:
    return path == prefix or path.startswith(prefix + b"/")


@dataclass
class DirtyMap:
    block: int = BLOCK
    data: dict[bytes, set[int]] = field(default_factory=dict)  # {ALL} = whole file
    meta: set[bytes] = field(default_factory=set)
    dirs: set[bytes] = field(default_factory=set)

    # --- marking (returns what must be journalled first) ------------------------------------

    def mark_write(self, path: bytes, offset: int, length: int) -> list[Record]:
        if length <= 0:
            return []
        blocks = self.data.setdefault(path, set())
        if ALL in blocks:
            return []
        lo, hi = offset // self.block, (offset + length - 1) // self.block
        new = [b for b in range(lo, hi + 1) if b not in blocks]
        if not new:
            return []
        blocks.update(new)
        return [("d", path, a, b) for a, b in _runs(new)]

    def mark_whole(self, path: bytes) -> list[Record]:
        if self.data.get(path) == {ALL}:
            return []
        self.data[path] = {ALL}
        return [("d", path, ALL, ALL)]

    def mark_meta(self, path: bytes) -> list[Record]:
        if path in self.meta:
            return []
        self.meta.add(path)
        return [("m", path, 0, 0)]

    def mark_entries(self, directory: bytes) -> list[Record]:
        if directory in self.dirs:
            return []
        self.dirs.add(directory)
        return [("n", directory, 0, 0)]

    def mark_truncate(self, path: bytes, size: int) -> list[Record]:
        out = self.mark_meta(path)
        if size % self.block:
            out += self.mark_write(path, size, 1)  # the partial last block changes
        # Blocks past the new end stay marked: resync reads the file as it is then, so they
        # cost nothing, and the journal needs no record for a shrink.
        return out

    def mark_created(self, path: bytes) -> list[Record]:
        """A new name (file, directory, link, node): its directory changed, its content too."""
        return self.mark_entries(parent(path)) + self.mark_whole(path) + self.mark_meta(path)

    def mark_removed(self, path: bytes) -> list[Record]:
        out = self.mark_entries(parent(path))
        if self._forget(path):
            out.append(("u", path, 0, 0))
        return out

    def mark_renamed(self, old: bytes, new: bytes, exchange: bool = False) -> list[Record]:
        out = self.mark_entries(parent(old)) + self.mark_entries(parent(new))
        self._move(old, new, exchange)
        out.append(("x" if exchange else "r", old + b"\0" + new, 0, 0))
        # the renamed object is resent whole: cheap to be sure it lands where it now belongs
        out += self.mark_whole(new) + self.mark_meta(new)
        if exchange:
            out += self.mark_whole(old) + self.mark_meta(old)
        return out

    def follow_rename(self, old: bytes, new: bytes, exchange: bool = False) -> list[Record]:
        """A rename the peer applies too: marks move with the names, nothing new is dirty."""
        marked = [*self.data, *self.meta, *self.dirs]
        if not any(_under(p, old) or _under(p, new) for p in marked):
            return []
        self._move(old, new, exchange)
        return [("x" if exchange else "r", old + b"\0" + new, 0, 0)]

    def follow_removal(self, path: bytes) -> list[Record]:
        """A removal the peer applies too: the marks under `path` go."""
        return [("u", path, 0, 0)] if self._forget(path) else []

    # --- after acknowledgement ----------------------------------------------------------------

    def clear(self, path: bytes, offset: int, length: int) -> None:
        """The secondary has these bytes: no journal record (a crash only resends more)."""
        blocks = self.data.get(path)
        if not blocks or ALL in blocks or length <= 0:
            return
        lo, hi = offset // self.block, (offset + length - 1) // self.block
        blocks.difference_update(range(lo, hi + 1))
        if not blocks:
            del self.data[path]

    def reset(self) -> None:
        """The peer is fully synchronised."""
        self.data.clear()
        self.meta.clear()
        self.dirs.clear()

    # --- reading ------------------------------------------------------------------------------

    def regions(self, path: bytes) -> list[tuple[int, int]] | None:
        """Dirty (offset, length) ranges of `path`, merged; None means the whole file."""
        blocks = self.data.get(path)
        if not blocks:
            return []
        if ALL in blocks:
            return None
        return [(a * self.block, (b - a + 1) * self.block) for a, b in _runs(sorted(blocks))]

    def empty(self) -> bool:
        return not (self.data or self.meta or self.dirs)

    # --- journal ------------------------------------------------------------------------------

    def snapshot(self) -> list[Record]:
        out: list[Record] = []
        for path, blocks in sorted(self.data.items()):
            if ALL in blocks:
                out.append(("d", path, ALL, ALL))
            else:
                out += [("d", path, a, b) for a, b in _runs(sorted(blocks))]
        out += [("m", p, 0, 0) for p in sorted(self.meta)]
        out += [("n", p, 0, 0) for p in sorted(self.dirs)]
        return out

    @classmethod
    def replay(cls, records: list[Record], block: int = BLOCK) -> DirtyMap:
        m = cls(block=block)
        for kind, path, a, b in records:
            if kind == "d":
                if a == ALL:
                    m.data[path] = {ALL}
                elif ALL not in m.data.get(path, set()):
                    m.data.setdefault(path, set()).update(range(a, b + 1))
            elif kind == "m":
                m.meta.add(path)
            elif kind == "n":
                m.dirs.add(path)
            elif kind == "u":
                m._forget(path)
            elif kind in ("r", "x"):
                old, _, new = path.partition(b"\0")
                m._move(old, new, kind == "x")
            else:
                raise ValueError(f"unknown journal record kind {kind!r}")
        return m

    # --- internals ----------------------------------------------------------------------------

    def _forget(self, path: bytes) -> bool:
        gone = [p for p in self.data if _under(p, path)]
        gone_meta = [p for p in self.meta if _under(p, path)]
        for p in gone:
            del self.data[p]
        self.meta.difference_update(gone_meta)
        return bool(gone or gone_meta)

    def _move(self, old: bytes, new: bytes, exchange: bool) -> None:
        if exchange:
            swap = b"\0swap\0"  # cannot be a real path (NUL)
            self._rename_prefix(old, swap)
            self._rename_prefix(new, old)
            self._rename_prefix(swap, new)
        else:
            self._forget(new)
            self._rename_prefix(old, new)

    def _rename_prefix(self, a: bytes, b: bytes) -> None:
        def moved(p: bytes) -> bytes:
            return b + p[len(a) :] if _under(p, a) else p

        self.data = {moved(p): v for p, v in self.data.items()}
        self.meta = {moved(p) for p in self.meta}
        self.dirs = {moved(p) for p in self.dirs}


def _runs(blocks: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted block numbers as (first, last)."""
    out: list[tuple[int, int]] = []
    for b in sorted(blocks):
        if out and b == out[-1][1] + 1:
            out[-1] = (out[-1][0], b)
        else:
            out.append((b, b))
    return out
