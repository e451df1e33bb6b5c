"""The names of hard-linked files on the primary's mount, for keeping their attributes exact.

libfuse's high-level API gives every *name* its own kernel inode, each with its own attribute
cache: a change made through one name of a hard-linked file (its link count, mode, owner,
size, times) leaves the others stale until the cache expires. The mount therefore remembers,
for every file with more than one link, the names the kernel has asked about (`saw`), and after
a change through one name tells the kernel to forget what it cached for the others
(`ReplicatedFS._invalidate`). Files with one link, the usual case, cost a dictionary look-up.

Pure bookkeeping (no I/O), one lock; paths are the mount's ("/dir/name").
"""

from __future__ import annotations

import threading


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def _moved(path: str, old: str, new: str) -> str:
    return new + path[len(old) :]


class Names:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: dict[int, set[str]] = {}  # inode -> its names the kernel may cache
        self._inode: dict[str, int] = {}  # name -> inode, for the names in _paths

    def saw(self, path: str, ino: int, nlink: int) -> None:
        """The kernel was told the attributes of `path` (a non-directory)."""
        if nlink <= 1 and path not in self._inode:
            return  # the usual case, without the lock
        with self._lock:
            if nlink > 1:
                self._forget(path)
                self._paths.setdefault(ino, set()).add(path)
                self._inode[path] = ino
            else:  # one name left: nothing else to keep coherent
                self._forget(path)
                for p in self._paths.pop(ino, set()):
                    self._inode.pop(p, None)

    def linked(self, source: str, target: str, ino: int) -> list[str]:
        """A new name `target` for `source` (inode `ino`): the names to invalidate (all the
        others, `source` included: their link count changed)."""
        with self._lock:
            names = self._paths.setdefault(ino, set())
            names.add(source)
            self._inode[source] = ino
            others = sorted(names)
            names.add(target)
            self._inode[target] = ino
            return others

    def others(self, path: str) -> list[str]:
        """The other names of the file at `path` (empty if it has one link)."""
        ino = self._inode.get(path)
        if ino is None:
            return []
        with self._lock:
            return sorted(self._paths.get(ino, set()) - {path})

    def removed(self, path: str) -> list[str]:
        """`path` was unlinked (or replaced by a rename): its other names, to invalidate."""
        with self._lock:
            ino = self._inode.get(path)
            self._forget(path)
            return sorted(self._paths.get(ino, set())) if ino is not None else []

    def renamed(self, old: str, new: str, exchange: bool) -> None:
        """`old` (a file or a whole directory) is now `new`; with `exchange`, `new` is `old`."""
        with self._lock:
            moves = {p: _moved(p, old, new) for p in self._inode if _under(p, old)}
            if exchange:
                moves |= {p: _moved(p, new, old) for p in self._inode if _under(p, new)}
            else:
                for p in [p for p in self._inode if _under(p, new)]:
                    self._forget(p)  # replaced
            inodes = {p: self._inode.pop(p) for p in moves}
            for p, ino in inodes.items():
                self._paths[ino].discard(p)
            for p, ino in inodes.items():
                self._paths[ino].add(moves[p])
                self._inode[moves[p]] = ino

    def _forget(self, path: str) -> None:
        ino = self._inode.pop(path, None)
        if ino is None:
            return
        names = self._paths.get(ino)
        if names is not None:
            names.discard(path)
            if not names:
                del self._paths[ino]

    def __len__(self) -> int:
        return len(self._inode)
