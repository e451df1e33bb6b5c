"""Applies replicated file operations to the secondary's copy of a directory.

Every operation is applied relative to a handle on the replica's root directory (the first
component of a path is the directory's index in the module's list), walking the path one
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
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from hakit.wire.replication import Kind, Op, unpack_pairs

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
AT_FDCWD = -100

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_syncfs = _libc.syncfs
_syncfs.argtypes = [ctypes.c_int]
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


class PathRefused(OSError):
    pass


class Keeper(Protocol):
    def before(self, op: Op) -> None: ...


def _components(path: bytes) -> list[bytes]:
    if not path or path.startswith(b"/") or b"\0" in path:
        raise PathRefused(E.EINVAL, f"refused path {path!r}")
    parts = path.split(b"/")
    if any(p in (b"", b".", b"..") for p in parts):
        raise PathRefused(E.EINVAL, f"refused path {path!r}")
    return parts


CACHED_FDS = 64
_KEEPS_NAMES = frozenset(
    {
        Kind.WRITE,
        Kind.TRUNCATE,
        Kind.FALLOCATE,
        Kind.FSYNC,
        Kind.CHMOD,
        Kind.CHOWN,
        Kind.UTIMENS,
        Kind.SETXATTR,
        Kind.REMOVEXATTR,
        Kind.SET_XATTRS,
        Kind.SYNCFS,
    }
)
"""Operations that change no name: cached descriptors stay valid across them."""


@contextmanager
def parent_of(roots: list[int], path: bytes) -> Iterator[tuple[int, bytes]]:
    """(directory fd, last name) for a wire path; intermediate symlinks are refused (ELOOP).

    The descriptor is valid inside the `with` block only."""
    parts = _components(path)
    index = parts[0]
    # decimal digits only, no sign or leading zero: `-1` is not the last directory
    if not (index.isdigit() and (index == b"0" or not index.startswith(b"0"))):
        raise PathRefused(E.EPROTO, f"bad directory index in {path!r}")
    if int(index) >= len(roots):
        raise PathRefused(E.EPROTO, f"no replicated directory {int(index)} for {path!r}")
    root = roots[int(index)]
    fd = os.dup(root)
    parts = [b"."] if len(parts) == 1 else parts[1:]  # `INDEX` alone: the directory itself
    try:
        for p in parts[:-1]:
            nfd = os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        yield fd, parts[-1]
    finally:
        os.close(fd)


class Applier:
    """Applies operations below `roots` (open directories, by index; not closed here).

    Not thread-safe: `apply` and `forget` belong to one thread at a time, the secondary's
    current session (its cached descriptors are closed by that session only); only
    `make_durable` runs beside it, on descriptors of its own."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.keeper: Keeper | None = None  # keeps a diverged copy's entries (split brain)
        self._fds: dict[bytes, int] = {}  # path -> O_RDWR descriptor of a regular file
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
            Kind.REMOVE_TREE: self._remove_tree,
            Kind.SET_XATTRS: self._set_xattrs,
            Kind.SYNCFS: self._syncfs,
        }

    def apply(self, op: Op) -> int:
        """Apply one operation; its errno (0 = done). Never raises for a file system error."""
        handler = self._ops.get(op.kind)
        if handler is None:
            return E.EINVAL
        if op.kind not in _KEEPS_NAMES:
            self.forget()
        if self.keeper is not None:
            self.keeper.before(op)
        try:
            handler(op)
        except OSError as e:
            return e.errno or E.EIO
        return 0

    def forget(self) -> None:
        """Close the cached descriptors (names changed, or the replica is released)."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def _cached(self, path: bytes) -> int:
        fd = self._fds.get(path)
        if fd is None:
            with self._parent(path) as (d, name):
                fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
            if len(self._fds) >= CACHED_FDS:
                os.close(self._fds.pop(next(iter(self._fds))))
            self._fds[path] = fd
        return fd

    # --- resolution without following links --------------------------------------------------

    def _parent(self, path: bytes) -> AbstractContextManager[tuple[int, bytes]]:
        return parent_of(self.roots, path)

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
        fd = self._cached(op.path)
        view = memoryview(op.blobs[1])
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n

    def _truncate(self, op: Op) -> None:
        os.ftruncate(self._cached(op.path), op.ints[0])

    def _create(self, op: Op) -> None:
        mode, uid, gid = op.ints
        with self._file(op.path, os.O_WRONLY | os.O_CREAT) as fd:
            os.fchmod(fd, mode & 0o7777)
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)

    def _owner(self, d: int, name: bytes, uid: int, gid: int) -> None:
        if uid != -1 or gid != -1:
            os.chown(name, uid, gid, dir_fd=d, follow_symlinks=False)

    def _mkdir(self, op: Op) -> None:
        mode, uid, gid = op.ints
        with self._parent(op.path) as (d, name):
            os.mkdir(name, mode & 0o7777, dir_fd=d)
            self._owner(d, name, uid, gid)

    def _mknod(self, op: Op) -> None:
        mode, rdev, uid, gid = op.ints
        with self._parent(op.path) as (d, name):
            os.mknod(name, mode, rdev, dir_fd=d)
            self._owner(d, name, uid, gid)

    def _symlink(self, op: Op) -> None:
        uid, gid = op.ints
        with self._parent(op.path) as (d, name):
            os.symlink(op.blobs[1], name, dir_fd=d)
            self._owner(d, name, uid, gid)

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
        if _fallocate(self._cached(op.path), mode, offset, length) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def _fsync(self, op: Op) -> None:
        fd = self._fds.get(op.path)
        if fd is not None:
            (os.fdatasync if op.ints[0] else os.fsync)(fd)
            return
        with self._parent(op.path) as (d, name):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
        try:
            (os.fdatasync if op.ints[0] else os.fsync)(fd)
        finally:
            os.close(fd)

    def make_durable(self, op: Op) -> int:
        """FSYNC or SYNCFS from another thread than `apply`'s (own descriptors); the errno."""
        try:
            if op.kind is Kind.SYNCFS:
                self._syncfs(op)
                return 0
            with self._parent(op.path) as (d, name):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
            try:
                (os.fdatasync if op.ints[0] else os.fsync)(fd)
            finally:
                os.close(fd)
        except OSError as e:
            return e.errno or E.EIO
        return 0

    def _syncfs(self, op: Op) -> None:
        for fd in self.roots:
            if _syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))

    def _remove_tree(self, op: Op) -> None:
        with self._parent(op.path) as (d, name):
            remove_tree(d, name)

    def _set_xattrs(self, op: Op) -> None:
        wanted = dict(unpack_pairs(op.blobs[1]))
        with self._parent(op.path) as (d, name):
            p = self._proc(d, name)
            for n in os.listxattr(p, follow_symlinks=False):
                if n.encode() not in wanted:
                    os.removexattr(p, n, follow_symlinks=False)
            for key, value in wanted.items():
                os.setxattr(p, key, value, 0, follow_symlinks=False)


def remove_tree(d: int, name: bytes) -> None:
    """Remove `name` in directory `d` whatever it is, without following links (ENOENT: fine)."""
    try:
        os.unlink(name, dir_fd=d)
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:
        pass
    except PermissionError:  # EPERM: unlink of a directory on Linux
        if not os.path.isdir(f"/proc/self/fd/{d}/".encode() + name):
            raise
    sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
    try:
        for child in os.listdir(sub):
            remove_tree(sub, os.fsencode(child))
    finally:
        os.close(sub)
    os.rmdir(name, dir_fd=d)
