"""The primary's interception: a FUSE filesystem mounted over each replicated directory.

libfuse3's high-level, multi-threaded API through mfusepy (see docs/adr/0001-fuse-binding.md).
The directory is opened *before* the mount; every real operation is done relative to that
handle, underneath the mount. Every modifying operation goes through `Replicator.modify`
(applied locally and sent in one order, acknowledged per the mode); reads are served locally.
New entries are given to the calling process's user and group (the daemon runs as root), and
the owner travels in the creation frame. Paths excluded by the module's filters are changed
locally only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as E
import fcntl
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
import mfusepy as fuse

from hakit.replication.apply import RENAME_EXCHANGE
from hakit.replication.names import Names
from hakit.replication.primary import Replicated, Replicator
from hakit.wire.replication import Kind, Op

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.renameat2.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_invalidate_path = fuse._libfuse.fuse_invalidate_path
_invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_invalidate_path.restype = ctypes.c_int
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
_STAT_KEYS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks")
_STATVFS_KEYS = (
    "f_bsize",
    "f_frsize",
    "f_blocks",
    "f_bfree",
    "f_bavail",
    "f_files",
    "f_ffree",
    "f_favail",
    "f_flag",
    "f_namemax",
)


def _b(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _rel(path: str) -> str:
    return path.lstrip("/") or "."


def _errno(e: OSError) -> fuse.FuseOSError:
    return fuse.FuseOSError(e.errno or E.EIO)


class ReplicatedFS(fuse.Operations):  # type: ignore[misc]
    """One mounted directory. Methods follow mfusepy's `Operations` (paths as str)."""

    use_ns = True
    # mfusepy wraps every call in a logging `__getattribute__`; we do without it
    __getattribute__ = object.__getattribute__

    def __init__(self, d: Replicated, rep: Replicator) -> None:
        self.d = d
        self.root = d.fd
        self.rep = rep
        self.names = Names()
        self._written: set[int] = set()  # handles written to, of files with other names

    # --- helpers ------------------------------------------------------------------------------

    def _wire(self, path: str) -> bytes:
        rel = path.lstrip("/")
        return self.d.wire(_b(rel))

    def _replicated(self, path: str) -> bool:
        rel = path.lstrip("/")
        return not rel or self.d.filter.replicated(_b(rel))

    def _do(self, op: Op | Callable[[], Op], path: str, local: Callable[[], Any]) -> Any:
        try:
            return self.rep.modify(op, local, replicated=self._replicated(path))
        except OSError as e:
            raise _errno(e) from None

    def _set(self, op: Op, path: str, local: Callable[[], Any]) -> None:
        """`_do` for a change of the file's attributes or size, which its other names see."""
        self._do(op, path, local)
        self._changed(path)

    def _owner(self, path: str) -> tuple[int, int]:
        """The owner of a new entry at `path`: the caller, with the group of the directory
        when it has the set-group-ID bit (as the kernel does)."""
        uid, gid, _ = fuse.fuse_get_context()
        if uid == 0 and gid == 0:
            return (-1, -1)  # the daemon's own: the kernel underneath decides as for the caller
        parent = os.path.dirname(_rel(path)) or "."
        try:
            st = os.stat(parent, dir_fd=self.root, follow_symlinks=False)
        except OSError as e:
            raise _errno(e) from None
        return (uid, st.st_gid if st.st_mode & 0o2000 else gid)

    def _masked(self, mode: int) -> int:
        """The caller's umask applied to a new entry's mode (the kernel usually did it already;
        this process runs with umask 0 so that its own does not apply on top)."""
        return mode & ~int(fuse._libfuse.fuse_get_context().contents.umask)

    def _chown_local(self, rel: str, uid: int, gid: int) -> None:
        if uid != -1 or gid != -1:
            os.chown(rel, uid, gid, dir_fd=self.root, follow_symlinks=False)

    def _invalidate(self, paths: list[str]) -> None:
        """The kernel forgets what it cached for these names (other names of a file that
        changed: see replication/names.py). A name it does not know is no error."""
        if paths:
            f = fuse._libfuse.fuse_get_context().contents.fuse
            for p in paths:
                _invalidate_path(f, _b(p))

    def _changed(self, path: str) -> None:
        """The file at `path` changed (attributes, size, times): its other names are stale."""
        self._invalidate(self.names.others(path))

    def _proc(self, path: str) -> str:
        return f"/proc/self/fd/{self.root}/{_rel(path)}"

    # --- reading --------------------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        if config is not None:
            config.use_ino = 1

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        try:
            st = (
                os.fstat(fh)
                if fh is not None
                else os.stat(_rel(path), dir_fd=self.root, follow_symlinks=False)
            )
        except OSError as e:
            raise _errno(e) from None
        if path is not None and not stat.S_ISDIR(st.st_mode):
            self.names.saw(path, st.st_ino, st.st_nlink)
        out = {k: getattr(st, k) for k in _STAT_KEYS}
        out |= {
            "st_atime": st.st_atime_ns,
            "st_mtime": st.st_mtime_ns,
            "st_ctime": st.st_ctime_ns,
            "st_rdev": st.st_rdev,
            "st_blksize": st.st_blksize,
        }
        return out

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        try:
            fd = os.open(_rel(path), os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.root)
        except OSError as e:
            raise _errno(e) from None
        try:
            st = os.fstat(fd)
            out = [(".", {"st_ino": st.st_ino, "st_mode": st.st_mode}, 0)]
            out.append(("..", {"st_ino": 1, "st_mode": 0o40755}, 0))
            with os.scandir(fd) as it:
                for ent in it:
                    t = ent.stat(follow_symlinks=False).st_mode & 0o170000
                    out.append((ent.name, {"st_ino": ent.inode(), "st_mode": t}, 0))
            return out
        finally:
            os.close(fd)

    def readlink(self, path: str) -> str:
        try:
            return os.readlink(_rel(path), dir_fd=self.root)
        except OSError as e:
            raise _errno(e) from None

    def statfs(self, path: str) -> dict[str, int]:
        s = os.fstatvfs(self.root)
        return {k: getattr(s, k) for k in _STATVFS_KEYS}

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        try:
            return os.getxattr(self._proc(path), name, follow_symlinks=False)
        except OSError as e:
            raise _errno(e) from None

    def listxattr(self, path: str) -> list[str]:
        try:
            return os.listxattr(self._proc(path), follow_symlinks=False)
        except OSError as e:
            raise _errno(e) from None

    def access(self, path: str, amode: int) -> int:
        return 0  # `default_permissions`: the kernel checks

    def open(self, path: str, flags: int) -> int:
        """With O_DIRECT the kernel sends the program's I/O straight here (no page cache); the
        file underneath is opened without it: its alignment rules would refuse our buffers,
        and durability is the program's fsync as for anyone (O_DIRECT alone promises none)."""
        rel = _rel(path)

        def local() -> int:
            return os.open(rel, flags & ~(os.O_CREAT | os.O_EXCL | os.O_DIRECT), dir_fd=self.root)

        if flags & os.O_TRUNC:  # read-only too: Linux truncates (with write permission)
            fd = int(self._do(Op(Kind.TRUNCATE, 0, (0,), (self._wire(path),)), path, local))
            self._changed(path)
            return fd
        try:
            return local()
        except OSError as e:
            raise _errno(e) from None

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        try:
            return os.pread(fh, size, offset)
        except OSError as e:
            raise _errno(e) from None

    def lseek(self, path: str, offset: int, whence: int, fh: int) -> int:
        """SEEK_DATA and SEEK_HOLE answered by the file underneath (the kernel's own answer
        would be "all data")."""
        try:
            return os.lseek(fh, offset, whence)
        except OSError as e:
            raise _errno(e) from None

    def flush(self, path: str, fh: int) -> int:
        self._after_writes(path, fh)
        return 0

    def release(self, path: str, fh: int) -> int:
        self._after_writes(path, fh)
        os.close(fh)
        return 0

    def _after_writes(self, path: str, fh: int) -> None:
        """Other names of a file written through `fh` are invalidated at its flush (close),
        fsync or release, not in the write itself: the kernel holds the written pages locked
        until the write returns, and two writers through two names invalidating each other's
        pages would wait for each other for ever."""
        if fh in self._written:
            self._written.discard(fh)
            self._changed(path)

    # --- modifying ------------------------------------------------------------------------------

    def create(self, path: str, mode: int, fi: int | None = None) -> int:
        flags = fi if isinstance(fi, int) else os.O_WRONLY
        rel = _rel(path)
        mode = self._masked(mode)
        uid, gid = self._owner(path)

        def local() -> int:
            fd = os.open(rel, (flags | os.O_CREAT) & ~os.O_DIRECT, mode, dir_fd=self.root)
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            if flags & os.O_TRUNC:
                os.ftruncate(fd, 0)
            return fd

        op = Op(Kind.CREATE, 0, (mode & 0o7777, uid, gid), (self._wire(path),))
        fd = int(self._do(op, path, local))
        if flags & os.O_TRUNC:
            self._set(Op(Kind.TRUNCATE, 0, (0,), (self._wire(path),)), path, lambda: None)
        return fd

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if fcntl.fcntl(fh, fcntl.F_GETFL) & os.O_APPEND:
            # The data lands at the end of the file as it is now, which the kernel's offset
            # (its cached size, stale after a write through another name of a hard-linked
            # file) may not be: the frame takes the real end, read under the order lock.
            wire = self._wire(path)

            def appended() -> Op:
                return Op(Kind.WRITE, 0, (os.fstat(fh).st_size,), (wire, data))

            n = int(self._do(appended, path, lambda: os.write(fh, data)))
        else:
            op = Op(Kind.WRITE, 0, (offset,), (self._wire(path), data))
            n = int(self._do(op, path, lambda: os.pwrite(fh, data, offset)))
        if self.names.others(path):
            self._written.add(fh)
        return n

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        rel = _rel(path)

        def local() -> None:
            fd = os.open(rel, os.O_WRONLY, dir_fd=self.root)
            try:
                os.ftruncate(fd, length)
            finally:
                os.close(fd)

        self._set(Op(Kind.TRUNCATE, 0, (length,), (self._wire(path),)), path, local)

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        def local() -> None:
            (os.fdatasync if datasync else os.fsync)(fh)

        self._after_writes(path, fh)
        if not self._replicated(path):
            local()
            return 0
        try:
            self.rep.fsync(Op(Kind.FSYNC, 0, (1 if datasync else 0,), (self._wire(path),)), local)
        except OSError as e:
            raise _errno(e) from None
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        def local() -> None:
            fd = os.open(_rel(path), os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.root)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        try:
            if self._replicated(path):
                self.rep.fsync(Op(Kind.FSYNC, 0, (0,), (self._wire(path),)), local)
            else:
                local()
        except OSError as e:
            raise _errno(e) from None
        return 0

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        def local() -> None:
            if _libc.fallocate(fh, mode, offset, size) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))

        self._do(Op(Kind.FALLOCATE, 0, (mode, offset, size), (self._wire(path),)), path, local)
        if self.names.others(path):
            self._written.add(fh)
        return 0

    def mkdir(self, path: str, mode: int) -> None:
        rel = _rel(path)
        mode = self._masked(mode)
        uid, gid = self._owner(path)

        def local() -> None:
            os.mkdir(rel, mode, dir_fd=self.root)
            self._chown_local(rel, uid, gid)

        self._do(Op(Kind.MKDIR, 0, (mode & 0o7777, uid, gid), (self._wire(path),)), path, local)

    def mknod(self, path: str, mode: int, dev: int) -> None:
        rel = _rel(path)
        mode = self._masked(mode)
        uid, gid = self._owner(path)

        def local() -> None:
            os.mknod(rel, mode, dev, dir_fd=self.root)
            self._chown_local(rel, uid, gid)

        self._do(Op(Kind.MKNOD, 0, (mode, dev, uid, gid), (self._wire(path),)), path, local)

    def rmdir(self, path: str) -> None:
        rel = _rel(path)
        self._do(
            Op(Kind.RMDIR, 0, (), (self._wire(path),)),
            path,
            lambda: os.rmdir(rel, dir_fd=self.root),
        )

    def unlink(self, path: str) -> None:
        rel = _rel(path)
        self._do(
            Op(Kind.UNLINK, 0, (), (self._wire(path),)),
            path,
            lambda: os.unlink(rel, dir_fd=self.root),
        )
        self._invalidate(self.names.removed(path))

    def symlink(self, target: str, source: str) -> None:  # mfusepy: (link path, its target)
        rel = _rel(target)
        uid, gid = self._owner(target)

        def local() -> None:
            os.symlink(source, rel, dir_fd=self.root)
            self._chown_local(rel, uid, gid)

        op = Op(Kind.SYMLINK, 0, (uid, gid), (self._wire(target), _b(source)))
        self._do(op, target, local)

    def link(self, target: str, source: str) -> None:  # mfusepy: (new name, existing)
        def local() -> None:
            os.link(
                _rel(source),
                _rel(target),
                src_dir_fd=self.root,
                dst_dir_fd=self.root,
                follow_symlinks=False,
            )

        if self._replicated(source) != self._replicated(target):
            self._cross(local, source, target)
        else:
            op = Op(Kind.LINK, 0, (), (self._wire(source), self._wire(target)))
            self._do(op, target, local)
        try:
            ino = os.stat(_rel(target), dir_fd=self.root, follow_symlinks=False).st_ino
        except OSError:
            return  # already gone again
        self._invalidate(self.names.linked(source, target, ino))

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        def local() -> None:
            if flags == 0:
                os.rename(_rel(old), _rel(new), src_dir_fd=self.root, dst_dir_fd=self.root)
            elif _libc.renameat2(self.root, _b(_rel(old)), self.root, _b(_rel(new)), flags) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))

        exchange = bool(flags & RENAME_EXCHANGE)
        if self._replicated(old) != self._replicated(new):
            self._cross(local, old, new, exchange=exchange)
        else:
            op = Op(Kind.RENAME, 0, (flags,), (self._wire(old), self._wire(new)))
            self._do(op, new, local)
        self._renamed(old, new, exchange)

    def _renamed(self, old: str, new: str, exchange: bool) -> None:
        """The names' bookkeeping after a rename; the other names of a replaced file (one link
        fewer) and of the moved ones (a new ctime) are invalidated."""
        if not exchange:
            try:
                os.stat(_rel(old), dir_fd=self.root, follow_symlinks=False)
                return  # `old` and `new` were two names of one file: nothing was renamed
            except OSError:
                pass
        replaced = [] if exchange else self.names.removed(new)
        self.names.renamed(old, new, exchange)
        moved = self.names.others(new) + (self.names.others(old) if exchange else [])
        self._invalidate(replaced + moved)

    def _cross(self, local: Callable[[], None], old: str, new: str, exchange: bool = False) -> None:
        """A rename or link between a replicated and an excluded path: the replicated side
        disappears from the secondary (removed) or appears there (copied by the next
        resynchronisation pass, which the replicator schedules)."""
        try:
            if self._replicated(old):  # leaves the replicated set
                self.rep.modify(Op(Kind.REMOVE_TREE, 0, (), (self._wire(old),)), local)
                if exchange:
                    self.rep.tracker.mark_whole(self._wire(old))
                    self.rep.on_diverged()
            else:  # enters it
                local()
                self.rep.tracker.mark_whole(self._wire(new))
                self.rep.on_diverged()
        except OSError as e:
            raise _errno(e) from None

    def chmod(self, path: str, mode: int) -> None:
        rel = _rel(path)
        self._set(
            Op(Kind.CHMOD, 0, (mode & 0o7777,), (self._wire(path),)),
            path,
            lambda: os.chmod(rel, mode & 0o7777, dir_fd=self.root),
        )

    def chown(self, path: str, uid: int, gid: int) -> None:
        rel = _rel(path)
        # the kernel passes -1 as an unsigned 32-bit value
        uid = -1 if uid in (-1, 0xFFFFFFFF) else uid
        gid = -1 if gid in (-1, 0xFFFFFFFF) else gid
        self._set(
            Op(Kind.CHOWN, 0, (uid, gid), (self._wire(path),)),
            path,
            lambda: os.chown(rel, uid, gid, dir_fd=self.root, follow_symlinks=False),
        )

    def utimens(self, path: str, times: tuple[tuple[int, int], tuple[int, int]] | None) -> int:
        """`times`: ((sec, nsec) atime, (sec, nsec) mtime) with UTIME_NOW/OMIT as libfuse gives
        them; resolved here, and the resolved times are what the secondary gets."""
        rel = _rel(path)

        def local() -> tuple[int, int]:
            st = os.stat(rel, dir_fd=self.root, follow_symlinks=False)
            now = time.time_ns()
            if times is None:
                ns = (now, now)
            else:
                cur = (st.st_atime_ns, st.st_mtime_ns)
                ns = tuple(  # type: ignore[assignment]
                    c if nsec == UTIME_OMIT else now if nsec == UTIME_NOW else sec * 10**9 + nsec
                    for (sec, nsec), c in zip(times, cur, strict=True)
                )
            os.utime(rel, ns=ns, dir_fd=self.root, follow_symlinks=False)
            return ns

        wire = self._wire(path)
        try:
            self.rep.modify(
                Op(Kind.UTIMENS, 0, (0, 0), (wire,)),
                local,
                resolve=lambda ns: Op(Kind.UTIMENS, 0, ns, (wire,)),
                replicated=self._replicated(path),
            )
        except OSError as e:
            raise _errno(e) from None
        self._changed(path)
        return 0

    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> None:
        p = self._proc(path)
        self._set(
            Op(Kind.SETXATTR, 0, (options,), (self._wire(path), _b(name), value)),
            path,
            lambda: os.setxattr(p, name, value, options, follow_symlinks=False),
        )

    def removexattr(self, path: str, name: str) -> None:
        p = self._proc(path)
        self._set(
            Op(Kind.REMOVEXATTR, 0, (), (self._wire(path), _b(name))),
            path,
            lambda: os.removexattr(p, name, follow_symlinks=False),
        )


class _FUSE(fuse.FUSE):  # type: ignore[misc]
    """mfusepy 3.1.1 drops rename flags (an exchange became a plain rename: data loss) and
    folds UTIME_NOW/OMIT into nanosecond counts; both are passed through as they are. It has
    no `lseek` (SEEK_DATA/SEEK_HOLE)."""

    def lseek(self, path: bytes | None, offset: int, whence: int, fip: Any) -> int:
        ops: ReplicatedFS = self.operations
        return ops.lseek(
            (path or b"/").decode("utf-8", "surrogateescape"), offset, whence, fip.contents.fh
        )

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        ops: ReplicatedFS = self.operations
        ops.rename(
            old.decode("utf-8", "surrogateescape"), new.decode("utf-8", "surrogateescape"), flags
        )
        return 0

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        times = None
        if buf:
            a, m = buf.contents.actime, buf.contents.modtime
            times = ((a.tv_sec, a.tv_nsec), (m.tv_sec, m.tv_nsec))
        ops: ReplicatedFS = self.operations
        return ops.utimens((path or b"/").decode("utf-8", "surrogateescape"), times)


def mount_flags(fd: int) -> dict[str, bool]:
    """The FUSE mount takes the flags of the file system underneath (libfuse mounts `nosuid`
    and `nodev` unless told): device nodes and set-user-ID programs in the directory work as
    they did before it was replicated, and as they do where the file system forbids them."""
    flag = os.fstatvfs(fd).f_flag
    return {
        "suid": not flag & os.ST_NOSUID,
        "dev": not flag & os.ST_NODEV,
        "noexec": bool(flag & os.ST_NOEXEC),
    }


def serve(d: Replicated, rep: Replicator, module: str) -> threading.Thread:
    """Mount `d` and serve it from libfuse's worker threads; the thread ends at unmount."""
    errors: list[BaseException] = []
    flags = mount_flags(d.fd)

    def run() -> None:
        try:
            _FUSE(
                ReplicatedFS(d, rep),
                d.path,
                foreground=True,
                allow_other=True,
                default_permissions=True,
                fsname=f"hakit:{module}",
                subtype="hakit",
                **flags,
            )
        except BaseException as e:  # reported by `mounted`
            errors.append(e)

    t = threading.Thread(target=run, name=f"fuse-{d.index}", daemon=True)
    t.errors = errors  # type: ignore[attr-defined]
    t.start()
    return t
