"""Keeps a diverged copy's files before the resynchronisation overwrites them.

After a split brain (both nodes were primary) or an operator's decision to make a node with
newer changes a secondary, the node that rejoins holds changes the new primary never saw. The
resynchronisation makes its copy identical to the primary's: every entry whose content it is
about to overwrite, truncate, rename over or remove is first copied, as it is, under a dated folder
(`$HAKIT_VAR/modules/MODULE/split-brain/WHEN-genN-ID/<replicated dir>/<path>`), once per path.
Nothing of the diverged side is silently lost: `REPORT.txt` there lists what was kept and why.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from pathlib import Path

from hakit.replication.apply import PathRefused, parent_of
from hakit.wire.replication import Kind, Op

# the entries an operation may overwrite or remove: the op's path, and for these kinds the
# second path too
_SECOND_PATH = frozenset({Kind.RENAME, Kind.LINK})
_KEEPS = frozenset(
    {
        Kind.WRITE,
        Kind.TRUNCATE,
        Kind.FALLOCATE,
        Kind.CREATE,
        Kind.SYMLINK,
        Kind.MKNOD,
        Kind.UNLINK,
        Kind.RENAME,
        Kind.LINK,
        Kind.REMOVE_TREE,
    }
)
"""Operations that may change or remove content. Metadata alone (modes, owners, times,
extended attributes) is not worth a copy: the content is what the application wrote."""
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
REPORT = "REPORT.txt"
MANIFEST = "preserved.json"


class Keeper:
    """Copies each entry an operation is about to change, once, before it is applied."""

    def __init__(self, roots: list[int], dirs: list[str], dest: Path, why: str) -> None:
        self.roots = roots
        self.dirs = dirs
        self.dest = dest
        self.why = why
        self.seen: set[bytes] = set()
        self.kept: list[str] = []
        self.errors: list[str] = []
        self.started = time.time()
        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._load()

    def _load(self) -> None:
        """A keeper restarted on the same folder (interrupted resync) does not copy twice."""
        with contextlib.suppress(OSError, ValueError):
            data = json.loads((self.dest / MANIFEST).read_text())
            self.kept = list(data.get("kept", []))
            self.seen = {os.fsencode(p) for p in data.get("seen", [])}
            self.started = float(data.get("started", self.started))

    def before(self, op: Op) -> None:
        if op.kind not in _KEEPS or (
            op.kind is Kind.TRUNCATE and self._size(op.path) == op.ints[0]
        ):
            return  # (the resynchronisation ends every file with a truncate to its size)
        self._keep(op.path)
        if op.kind in _SECOND_PATH and len(op.blobs) > 1:
            self._keep(op.blobs[1])

    def _size(self, path: bytes) -> int:
        try:
            with parent_of(self.roots, path) as (d, name):
                return os.stat(name, dir_fd=d, follow_symlinks=False).st_size
        except (OSError, PathRefused):
            return -1

    def _keep(self, path: bytes) -> None:
        if not path or path in self.seen:
            return
        self.seen.add(path)
        index, _, rel = path.partition(b"/")
        try:
            base = self.dirs[int(index)].lstrip("/")
        except (ValueError, IndexError):
            return
        target = self.dest / base / os.fsdecode(rel) if rel else self.dest / base
        try:
            with parent_of(self.roots, path) as (d, name):
                self._copy(d, name, target)
        except FileNotFoundError:
            return  # nothing there on this side: nothing to keep
        except (OSError, PathRefused) as e:
            self.errors.append(f"{os.fsdecode(path)}: {e}")

    def _copy(self, d: int, name: bytes, target: Path) -> None:
        st = os.stat(name, dir_fd=d, follow_symlinks=False)
        target.parent.mkdir(parents=True, exist_ok=True)
        shown = str(target.relative_to(self.dest))
        if stat.S_ISLNK(st.st_mode):
            with contextlib.suppress(FileExistsError):
                os.symlink(os.readlink(name, dir_fd=d), target)
        elif stat.S_ISREG(st.st_mode):
            src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
            try:
                # never over an earlier copy: after an interrupted resynchronisation the entry
                # may already be the primary's version, the copy is the diverged original
                try:
                    out = os.open(
                        target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
                    )
                except FileExistsError:
                    return
                try:
                    left = st.st_size
                    offset = 0
                    while left > 0:
                        n = os.sendfile(out, src, offset, min(left, 1 << 24))
                        if n == 0:
                            break
                        offset += n
                        left -= n
                finally:
                    os.close(out)
            finally:
                os.close(src)
            os.chmod(target, stat.S_IMODE(st.st_mode))
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        elif stat.S_ISDIR(st.st_mode):
            target.mkdir(exist_ok=True)
            sub = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d
            )
            try:
                for child in sorted(os.listdir(sub)):
                    self._copy(sub, os.fsencode(child), target / child)
            finally:
                os.close(sub)
            return
        else:
            return  # devices, fifos, sockets: their content is not data
        self.kept.append(shown)

    def save(self) -> None:
        """The manifest (kept across an interrupted resynchronisation) and the report."""
        manifest = {
            "started": self.started,
            "why": self.why,
            "kept": self.kept,
            "seen": sorted(os.fsdecode(p) for p in self.seen),
            "errors": self.errors,
        }
        tmp = self.dest / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest))
        tmp.replace(self.dest / MANIFEST)
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.started))
        lines = [
            f"Files of this node's diverged copy, kept before the resynchronisation of {when}",
            f"overwrote or removed them. Why: {self.why}",
            "",
            f"{len(self.kept)} entries kept (paths below this folder; the first part is the",
            "replicated directory without its leading /):",
            "",
            *(f"  {p}" for p in self.kept),
        ]
        if self.errors:
            lines += ["", f"{len(self.errors)} entries could not be kept:", *self.errors]
        lines += [
            "",
            "To bring a file back, copy it into the replicated directory on the primary: it is",
            "replicated like any write.",
            "",
        ]
        (self.dest / REPORT).write_text("\n".join(lines))
