"""Applies replicated file operations to the secondary's copy of a directory.

Every operation is applied relative to a handle on the replica's root, walking the path one
component at a time without following symbolic links (`O_NOFOLLOW`), so an operation can never
reach outside the replicated directory, whatever the names or links in it. The result is the
errno the operation got (0 = applied), which the secondary sends back in its acknowledgement:
a primary that succeeded and a secondary that failed means the replicas differ.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as E
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hakit.wire.replication import Kind, Op

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
AT_FDCWD = -100

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


class PathRefused(OSError):
    pass


def _components(path: bytes) -> list[bytes]:
    if not path or path.startswith(b"/") or b"\0" in path:
        raise PathRefused(E.EINVAL, f"refused path {path!r}")
    parts = path.split(b"/")
    if any(p in (b"", b".", b"..") for p in parts):
        raise PathRefused(E.EINVAL, f"refused path {path!r}")
    return parts


class Applier:
    """Applies operations below `root_fd` (an open directory; not closed here)."""

    def __init__(self, root_fd: int) -> None:
        self.root = root_fd
        self._ops: dict[Kind, Callable[[Op], None]] = {
            Kind.WRITE: self._write,
            Kind.TRUNCATE: self._truncate,
            Kind.CREATE: self._create,
            Kind.MKDIR: self._mkdir,
            Kind.MKNOD: self._mknod,
            Kind.SYMLINK: self._symlink,
            Kind.LINK: self._link,
            Kind.UNLINK: self._unlink,
            Kind.RMDIR: self._rmdir,
            Kind.RENAME: self._rename,
            Kind.CHMOD: self._chmod,
            Kind.CHOWN: self._chown,
            Kind.UTIMENS: self._utimens,
            Kind.SETXATTR: self._setxattr,
            Kind.REMOVEXATTR: self._removexattr,
            Kind.FALLOCATE: self._fallocate,
            Kind.FSYNC: self._fsync,
        }

    def apply(self, op: Op) -> int:
        """Apply one operation; its errno (0 = done). Never raises for a file system error."""
        handler = self._ops.get(op.kind)
        if handler is None:
            return E.EINVAL
        try:
            handler(op)
        except OSError as e:
            return e.errno or E.EIO
        return 0

    # --- resolution without following links --------------------------------------------------

    @contextmanager
    def _parent(self, path: bytes) -> Iterator[tuple[int, bytes]]:
        """(directory fd, last name) for `path`; intermediate symlinks are refused (ELOOP)."""
        parts = _components(path)
        fd = os.dup(self.root)
        try:
            for p in parts[:-1]:
                nfd = os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nfd
            yield fd, parts[-1]
        finally:
            os.close(fd)

    @contextmanager
    def _file(self, path: bytes, flags: int) -> Iterator[int]:
        with self._parent(path) as (d, name):
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
        try:
            yield fd
        finally:
            os.close(fd)

    def _proc(self, d: int, name: bytes) -> bytes:
        return f"/proc/self/fd/{d}/".encode() + name

    # --- operations ---------------------------------------------------------------------------

    def _write(self, op: Op) -> None:
        (offset,) = op.ints
        data = op.blobs[1]
        with self._file(op.path, os.O_WRONLY) as fd:
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n

    def _truncate(self, op: Op) -> None:
        with self._file(op.path, os.O_WRONLY) as fd:
            os.ftruncate(fd, op.ints[0])

    def _create(self, op: Op) -> None:
        with self._file(op.path, os.O_WRONLY | os.O_CREAT) as fd:
            os.fchmod(fd, op.ints[0] & 0o7777)

    def _mkdir(self, op: Op) -> None:
        with self._parent(op.path) as (d, name):
            os.mkdir(name, op.ints[0] & 0o7777, dir_fd=d)

    def _mknod(self, op: Op) -> None:
        with self._parent(op.path) as (d, name):
            os.mknod(name, op.ints[0], op.ints[1], dir_fd=d)

    def _symlink(self, op: Op) -> None:
        with self._parent(op.path) as (d, name):
            os.symlink(op.blobs[1], name, dir_fd=d)

    def _link(self, op: Op) -> None:
        with self._parent(op.path) as (d1, old), self._parent(op.blobs[1]) as (d2, new):
            os.link(old, new, src_dir_fd=d1, dst_dir_fd=d2, follow_symlinks=False)

    def _unlink(self, op: Op) -> None:
        with self._parent(op.path) as (d, name):
            os.unlink(name, dir_fd=d)

    def _rmdir(self, op: Op) -> None:
        with self._parent(op.path) as (d, name):
            os.rmdir(name, dir_fd=d)

    def _rename(self, op: Op) -> None:
        (flags,) = op.ints
        with self._parent(op.path) as (d1, old), self._parent(op.blobs[1]) as (d2, new):
            if flags == 0:
                os.rename(old, new, src_dir_fd=d1, dst_dir_fd=d2)
            elif _renameat2(d1, old, d2, new, flags) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))

    def _chmod(self, op: Op) -> None:
        with self._parent(op.path) as (d, name):
            if os.path.islink(self._proc(d, name)):
                return  # Linux has no mode on symbolic links
            os.chmod(name, op.ints[0] & 0o7777, dir_fd=d)

    def _chown(self, op: Op) -> None:
        with self._parent(op.path) as (d, name):
            os.chown(name, op.ints[0], op.ints[1], dir_fd=d, follow_symlinks=False)

    def _utimens(self, op: Op) -> None:
        with self._parent(op.path) as (d, name):
            os.utime(name, ns=(op.ints[0], op.ints[1]), dir_fd=d, follow_symlinks=False)

    def _setxattr(self, op: Op) -> None:
        with self._parent(op.path) as (d, name):
            os.setxattr(
                self._proc(d, name), op.blobs[1], op.blobs[2], op.ints[0], follow_symlinks=False
            )

    def _removexattr(self, op: Op) -> None:
        with self._parent(op.path) as (d, name):
            os.removexattr(self._proc(d, name), op.blobs[1], follow_symlinks=False)

    def _fallocate(self, op: Op) -> None:
        mode, offset, length = op.ints
        with self._file(op.path, os.O_WRONLY) as fd:
            if _fallocate(fd, mode, offset, length) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))

    def _fsync(self, op: Op) -> None:
        with self._parent(op.path) as (d, name):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
        try:
            if op.ints[0]:
                os.fdatasync(fd)
            else:
                os.fsync(fd)
        finally:
            os.close(fd)
