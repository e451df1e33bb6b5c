# mypy: disable-error-code="func-returns-value"
# (the checks record "operation, then what it left" as one tuple: `(os.chmod(...), attrs(...))`)
"""The checks of the POSIX conformance tier (tests/contract/test_posix_conformance.py).

Each group of checks does a sequence of file operations in a directory and records what it
observes as data: link counts, modes, owners, sizes, contents, errno names, whether a time
moved, offsets of holes. Nothing here says what the answer should be: the tier runs every group
on a plain directory and on a replicated one and requires the same observations. Values that
depend on where the directory is (inode numbers, absolute times) are recorded as relations
(same inode, time moved, time equals the one set).

`python -m tests.contract.posix_checks nobody DIR` runs the group of a non-root user (uid and
gid 65534) in a process of its own and prints its observations as JSON.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

NOBODY = 65534
CLOCK_REALTIME_COARSE = 5  # not in the time module of Python 3.11
GROUP = 100  # a group the non-root user is not in
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]

Obs = dict[str, Any]


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def outcome(fn: Callable[[], object]) -> Any:
    """What `fn` returned (or "ok" for None), or the name of the errno it failed with."""
    try:
        r = fn()
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    return "ok" if r is None else r


def write(path: Path, data: bytes, flags: int = os.O_TRUNC) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def tick(after_ns: int) -> None:
    """Wait until the kernel's coarse clock (the one file times are taken from) is past
    `after_ns`, so that a time that should move can (bounded: a clock tick is milliseconds)."""
    for _ in range(10_000):
        if time.clock_gettime_ns(CLOCK_REALTIME_COARSE) > after_ns:
            return
        time.sleep(0.001)
    raise AssertionError("the coarse clock did not move")


def ctime_moves(path: Path, fn: Callable[[], object], *others: Path) -> list[bool]:
    """Whether the ctime of `path` (and of each of `others`, other names) moved across `fn`."""
    names = (path, *others)
    before = [os.lstat(p).st_ctime_ns for p in names]
    tick(max(before))
    fn()
    return [os.lstat(p).st_ctime_ns > b for p, b in zip(names, before, strict=True)]


def attrs(path: Path) -> tuple[int, int, int, int, int]:
    st = os.lstat(path)
    return (st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size)


# --- the groups -----------------------------------------------------------------------------------


def hard_links(d: Path, o: Obs) -> None:
    a, b, c = d / "a", d / "b", d / "c"
    write(a, b"12345")
    o["1 nlink a"] = os.lstat(a).st_nlink
    os.link(a, b)
    o["2 after link a->b: nlink a, b"] = [os.lstat(a).st_nlink, os.lstat(b).st_nlink]
    o["2 same inode"] = os.lstat(a).st_ino == os.lstat(b).st_ino
    o["3 ctime a moves on link a->c"] = ctime_moves(a, lambda: os.link(a, c), b)
    o["3 nlink a, b, c"] = [os.lstat(p).st_nlink for p in (a, b, c)]
    o["4 chmod b: ctime a, b, c"] = ctime_moves(b, lambda: os.chmod(b, 0o600), a, c)
    o["4 chmod b: attrs a, c"] = [attrs(a), attrs(c)]
    o["5 chown c"] = ctime_moves(c, lambda: os.chown(c, NOBODY, NOBODY), a, b)
    o["5 chown c: attrs a, b"] = [attrs(a), attrs(b)]
    o["6 write a: ctime b"] = ctime_moves(a, lambda: write(a, b"123456789", os.O_APPEND), b)
    o["6 write a: size and content of b"] = [os.lstat(b).st_size, b.read_bytes()]
    o["7 truncate b: size a"] = (os.truncate(b, 3), os.lstat(a).st_size, a.read_bytes())
    os.utime(c, ns=(1_000_000_000, 2_000_000_000))
    o["8 utime c: times of a"] = [os.lstat(a).st_atime_ns, os.lstat(a).st_mtime_ns]
    os.setxattr(a, "user.k", b"v")
    o["9 setxattr a: xattrs of b"] = os.listxattr(b)
    o["9 setxattr a: ctime c"] = ctime_moves(a, lambda: os.setxattr(a, "user.k", b"w"), c)
    o["10 unlink b: ctime a"] = ctime_moves(a, lambda: os.unlink(b), c)
    o["10 unlink b: nlink a, c"] = [os.lstat(a).st_nlink, os.lstat(c).st_nlink]
    # a rename over another name of the same inode does nothing: both names stay
    o["11 rename c over a"] = outcome(lambda: os.rename(c, a))
    o["11 names"] = sorted(os.listdir(d))
    o["11 nlink a"] = os.lstat(a).st_nlink
    # a rename that replaces one name of a linked file: the other names lose a link
    x = d / "x"
    write(x, b"x")
    o["12 rename x over c: nlink a"] = (os.rename(x, c), os.lstat(a).st_nlink)
    # names under a renamed directory stay coherent
    sub = d / "sub"
    sub.mkdir()
    os.link(a, sub / "z")
    os.rename(sub, d / "moved")
    os.chmod(a, 0o751)
    o["12 chmod a: the name under a renamed directory"] = attrs(d / "moved" / "z")
    o["12 unlink a: nlink of the name under it"] = (os.unlink(a), attrs(d / "moved" / "z"))
    os.link(d / "moved" / "z", a)
    o["13 link to a directory"] = outcome(lambda: os.link(d, d / "dirlink"))
    o["13 link onto an existing name"] = outcome(lambda: os.link(a, c))
    o["13 link a missing file"] = outcome(lambda: os.link(d / "missing", d / "m2"))


def renames(d: Path, o: Obs) -> None:
    f, g, h = d / "f", d / "g", d / "h"
    write(f, b"f")
    write(g, b"g")
    sub, sub2 = d / "sub", d / "sub2"
    sub.mkdir()
    sub2.mkdir()
    write(sub / "in", b"in")
    o["1 rename f -> h"] = (outcome(lambda: os.rename(f, h)), sorted(os.listdir(d)))
    before = os.lstat(h).st_ctime_ns
    tick(before)
    os.rename(h, f)
    o["1 ctime moves"] = os.lstat(f).st_ctime_ns > before
    o["2 rename over g"] = (outcome(lambda: os.rename(f, g)), g.read_bytes(), f.exists())
    write(f, b"f2")
    o["3 noreplace onto g"] = outcome(lambda: renameat2(f, g, RENAME_NOREPLACE))
    o["3 noreplace onto h"] = outcome(lambda: renameat2(f, h, RENAME_NOREPLACE))
    o["3 contents"] = [g.read_bytes(), h.read_bytes(), f.exists()]
    o["4 exchange g, h"] = outcome(lambda: renameat2(g, h, RENAME_EXCHANGE))
    o["4 contents"] = [g.read_bytes(), h.read_bytes()]
    o["5 exchange h, sub"] = outcome(lambda: renameat2(h, sub, RENAME_EXCHANGE))
    o["5 types"] = [stat.S_IFMT(os.lstat(p).st_mode) for p in (h, sub)]
    o["5 contents"] = [sorted(os.listdir(h)), sub.read_bytes()]
    o["6 exchange with a missing name"] = outcome(
        lambda: renameat2(g, d / "missing", RENAME_EXCHANGE)
    )
    o["6 both flags"] = outcome(lambda: renameat2(g, sub, RENAME_EXCHANGE | RENAME_NOREPLACE))
    o["7 dir over non-empty dir"] = outcome(lambda: os.rename(sub2, h))
    o["7 dir over empty dir"] = outcome(lambda: os.rename(h, sub2))
    o["7 dir into itself"] = outcome(lambda: os.rename(sub2, sub2 / "x"))
    o["7 file over dir"] = outcome(lambda: os.rename(g, sub2))
    o["7 dir over file"] = outcome(lambda: os.rename(sub2, g))
    o["7 missing"] = outcome(lambda: os.rename(d / "missing", d / "m2"))
    o["8 nlink of dirs"] = [os.lstat(p).st_nlink for p in (d, sub2)]
    (sub2 / "child").mkdir()
    parent = d / "p"
    parent.mkdir()
    o["8 nlink after mkdir"] = [os.lstat(p).st_nlink for p in (sub2, parent)]
    os.rename(sub2 / "child", parent / "child")
    o["8 nlink after moving a subdirectory"] = [os.lstat(p).st_nlink for p in (sub2, parent)]
    o["9 listing"] = sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def modes(d: Path, o: Obs) -> None:
    old = os.umask(0o022)
    try:
        fd = os.open(d / "m1", os.O_CREAT | os.O_WRONLY, 0o666)
        os.close(fd)
        (d / "m2").mkdir(0o777)
        os.umask(0o077)
        fd = os.open(d / "m3", os.O_CREAT | os.O_WRONLY, 0o666)
        os.close(fd)
        (d / "m4").mkdir(0o777)
        os.umask(0)
        fd = os.open(d / "m5", os.O_CREAT | os.O_WRONLY, 0o4777)
        os.close(fd)
    finally:
        os.umask(old)
    o["1 created"] = [os.lstat(d / f"m{i}").st_mode for i in range(1, 6)]
    for mode in (0o4755, 0o2755, 0o1777, 0o7777, 0o0, 0o640):
        o[f"2 chmod {mode:o}"] = (outcome(partial(os.chmod, d / "m1", mode)), attrs(d / "m1"))
    o["3 chmod dir 3777"] = (os.chmod(d / "m2", 0o3777), attrs(d / "m2"))
    os.chown(d / "m2", 0, GROUP)
    (d / "m2" / "sub").mkdir()
    write(d / "m2" / "file", b"")
    o["4 setgid dir: inherited group and bit"] = [
        attrs(d / "m2" / "sub"),
        attrs(d / "m2" / "file"),
    ]
    os.chmod(d / "m5", 0o6755)
    os.chown(d / "m5", NOBODY, NOBODY)
    o["5 chown clears setuid/setgid"] = attrs(d / "m5")
    os.chmod(d / "m5", 0o6755)
    write(d / "m5", b"data", os.O_APPEND)
    o["5 write as root keeps setuid/setgid"] = attrs(d / "m5")
    o["6 chmod of a symlink's target"] = (
        os.symlink("m1", d / "sl"),
        os.chmod(d / "sl", 0o604),
        attrs(d / "m1"),
    )


def owners(d: Path, o: Obs) -> None:
    f = d / "f"
    write(f, b"f")
    o["1 created by root"] = attrs(f)
    os.chown(f, NOBODY, -1)
    o["2 uid only"] = attrs(f)
    os.chown(f, -1, GROUP)
    o["3 gid only"] = attrs(f)
    os.chown(f, -1, -1)
    o["4 neither"] = attrs(f)
    o["4 ctime moves on chown -1 -1"] = ctime_moves(f, lambda: os.chown(f, -1, -1))
    os.symlink("f", d / "l")
    os.lchown(d / "l", 123, 456)
    o["5 lchown: link, target"] = [attrs(d / "l"), attrs(f)]
    os.chown(d / "l", 7, 8)
    o["6 chown through the link: link, target"] = [attrs(d / "l"), attrs(f)]
    (d / "dir").mkdir()
    os.chown(d / "dir", NOBODY, GROUP)
    o["7 directory"] = attrs(d / "dir")


def times(d: Path, o: Obs) -> None:
    f = d / "f"
    write(f, b"data")
    os.utime(f, ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
    st = os.lstat(f)
    o["1 utime exact"] = [st.st_atime_ns, st.st_mtime_ns]
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    o["2 mtime moves on write"] = (write(f, b"more", os.O_APPEND), os.lstat(f).st_mtime_ns > 2e9)
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    o["2 mtime moves on truncate"] = (os.truncate(f, 2), os.lstat(f).st_mtime_ns > 2e9)
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    o["2 mtime stays on chmod"] = (os.chmod(f, 0o600), os.lstat(f).st_mtime_ns)
    o["2 mtime stays on read"] = (f.read_bytes(), os.lstat(f).st_mtime_ns)
    o["3 ctime moves on chmod"] = ctime_moves(f, lambda: os.chmod(f, 0o640))
    o["3 ctime moves on chown"] = ctime_moves(f, lambda: os.chown(f, NOBODY, -1))
    o["3 ctime moves on write"] = ctime_moves(f, lambda: write(f, b"x", os.O_APPEND))
    o["3 ctime moves on truncate"] = ctime_moves(f, lambda: os.truncate(f, 1))
    o["3 ctime moves on utime"] = ctime_moves(f, lambda: os.utime(f, ns=(5, 6)))
    o["3 ctime moves on setxattr"] = ctime_moves(f, lambda: os.setxattr(f, "user.a", b"1"))
    o["3 ctime moves on link"] = ctime_moves(f, lambda: os.link(f, d / "g"))
    h = d / "h"
    before = os.lstat(f).st_ctime_ns
    tick(before)
    o["3 ctime moves on rename"] = (os.rename(f, h), os.lstat(h).st_ctime_ns > before)
    os.utime(h, ns=(1_000_000_000, 2_000_000_000))
    o["3 atime moves on read (relatime: older than mtime)"] = (
        h.read_bytes(),
        os.lstat(h).st_atime_ns > 1_000_000_000,
    )
    o["3 ctime stays on read"] = ctime_moves(h, lambda: h.read_bytes())
    o["3 ctime stays on stat"] = ctime_moves(h, lambda: os.stat(h))
    o["4 utime now"] = (os.utime(h), os.lstat(h).st_mtime_ns > 6, os.lstat(h).st_atime_ns > 5)
    # UTIME_OMIT for one of the two times
    fd = os.open(h, os.O_RDONLY)
    try:
        os.utime(h, ns=(10, 20))
        o["5 utime through fd"] = (os.utime(fd, ns=(30, 40)), os.lstat(h).st_atime_ns)
    finally:
        os.close(fd)
    sub = d / "sub"
    sub.mkdir()
    os.utime(sub, ns=(1_000_000_000, 2_000_000_000))
    o["6 dir mtime moves on create in it"] = (
        write(sub / "x", b""),
        os.lstat(sub).st_mtime_ns > 2e9,
    )
    os.utime(sub, ns=(1_000_000_000, 2_000_000_000))
    o["6 dir mtime moves on unlink in it"] = (
        os.unlink(sub / "x"),
        os.lstat(sub).st_mtime_ns > 2e9,
    )
    os.symlink("h", d / "l")
    os.utime(d / "l", ns=(7, 8), follow_symlinks=False)
    o["7 lutimes"] = [os.lstat(d / "l").st_mtime_ns, os.lstat(h).st_mtime_ns]


def special_files(d: Path, o: Obs) -> None:
    os.mkfifo(d / "fifo", 0o640)
    o["1 fifo"] = attrs(d / "fifo")
    fd = os.open(d / "fifo", os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(fd, b"through the pipe")
        o["1 fifo carries data"] = os.read(fd, 100)
    finally:
        os.close(fd)
    for name, mode, dev in (
        ("null", stat.S_IFCHR | 0o666, os.makedev(1, 3)),
        ("loop", stat.S_IFBLK | 0o600, os.makedev(7, 200)),
        ("sock", stat.S_IFSOCK | 0o755, 0),
        ("reg", stat.S_IFREG | 0o600, 0),
    ):
        o[f"2 mknod {name}"] = outcome(partial(os.mknod, d / name, mode, dev))
        st = os.lstat(d / name)
        o[f"2 {name}"] = (attrs(d / name), os.major(st.st_rdev), os.minor(st.st_rdev))
    fd = os.open(d / "null", os.O_RDWR)
    try:
        o["3 the device works"] = (os.write(fd, b"gone"), os.read(fd, 10))
    finally:
        os.close(fd)
    o["4 mknod existing"] = outcome(lambda: os.mknod(d / "fifo", stat.S_IFIFO | 0o600))
    write(d / "target", b"target")
    os.symlink("target", d / "l1")
    os.symlink("nowhere/at/all", d / "l2")
    os.symlink("l1", d / "l3")
    os.symlink("x" * 1000, d / "l4")
    for n in ("l1", "l2", "l3", "l4"):
        o[f"5 {n}"] = (attrs(d / n)[0], os.lstat(d / n).st_size, os.readlink(d / n))
    o["6 read through links"] = [(d / "l3").read_bytes(), outcome(lambda: (d / "l2").read_bytes())]
    o["6 O_NOFOLLOW"] = outcome(lambda: os.open(d / "l1", os.O_RDONLY | os.O_NOFOLLOW))
    o["6 readlink of a file"] = outcome(lambda: os.readlink(d / "target"))
    o["6 symlink onto existing"] = outcome(lambda: os.symlink("x", d / "l1"))
    os.symlink("loop2", d / "loop1")
    os.symlink("loop1", d / "loop2")
    o["6 symlink loop"] = outcome(lambda: (d / "loop1").read_bytes())


def truncation(d: Path, o: Obs) -> None:
    f = d / "f"
    data = bytes(range(256)) * 40
    write(f, data)
    os.truncate(f, 100)
    o["1 down"] = (os.lstat(f).st_size, f.read_bytes() == data[:100])
    os.truncate(f, 300_000)
    content = f.read_bytes()
    o["2 up"] = (os.lstat(f).st_size, content[:100] == data[:100], content[100:].count(0))
    o["2 up stays sparse"] = os.lstat(f).st_blocks
    fd = os.open(f, os.O_RDWR)
    try:
        os.ftruncate(fd, 50)
        o["3 ftruncate"] = (os.fstat(fd).st_size, os.lstat(f).st_size, os.pread(fd, 100, 0))
        os.ftruncate(fd, 4097)
        o["3 ftruncate up"] = (os.lstat(f).st_size, os.pread(fd, 10, 4090))
    finally:
        os.close(fd)
    o["4 truncate to 0"] = (os.truncate(f, 0), os.lstat(f).st_size, os.lstat(f).st_blocks)
    o["5 negative"] = outcome(lambda: os.truncate(f, -1))
    o["5 a directory"] = outcome(lambda: os.truncate(d, 0))
    o["5 missing"] = outcome(lambda: os.truncate(d / "missing", 0))
    write(f, b"abc")
    fd = os.open(f, os.O_RDONLY)
    try:
        o["6 ftruncate read-only fd"] = outcome(lambda: os.ftruncate(fd, 0))
    finally:
        os.close(fd)


def sparse(d: Path, o: Obs) -> None:
    f = d / "f"
    mib = 1 << 20
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"d" * 4096, mib)
        os.fsync(fd)
        o["1 size, blocks"] = (os.fstat(fd).st_size, os.lstat(f).st_blocks)
        o["2 SEEK_DATA 0"] = outcome(lambda: os.lseek(fd, 0, os.SEEK_DATA))
        o["2 SEEK_HOLE 0"] = outcome(lambda: os.lseek(fd, 0, os.SEEK_HOLE))
        o["2 SEEK_HOLE in data"] = outcome(lambda: os.lseek(fd, mib + 10, os.SEEK_HOLE))
        o["2 SEEK_DATA past the end"] = outcome(lambda: os.lseek(fd, 2 * mib, os.SEEK_DATA))
        o["3 hole reads zeros"] = os.pread(fd, 4096, 4096) == bytes(4096)
        fallocate(fd, 0, 2 * mib, 8192)
        o["4 fallocate"] = (os.fstat(fd).st_size, os.lstat(f).st_blocks)
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 3 * mib, 8192)
        o["4 fallocate keep size"] = (os.fstat(fd).st_size, os.lstat(f).st_blocks)
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, mib, 4096)
        o["5 punch hole"] = (
            os.fstat(fd).st_size,
            os.lstat(f).st_blocks,
            os.pread(fd, 4096, mib) == bytes(4096),
        )
        o["5 SEEK_DATA after the punch"] = outcome(lambda: os.lseek(fd, 0, os.SEEK_DATA))
        o["6 punch without keep size"] = outcome(lambda: fallocate(fd, FALLOC_FL_PUNCH_HOLE, 0, 1))
    finally:
        os.close(fd)


def xattrs(d: Path, o: Obs) -> None:
    f = d / "f"
    write(f, b"")
    os.setxattr(f, "user.one", b"1")
    os.setxattr(f, "user.two", b"\0binary\xff" * 100)
    os.setxattr(f, "user.empty", b"")
    o["1 list"] = sorted(os.listxattr(f))
    o["1 values"] = [os.getxattr(f, n) for n in sorted(os.listxattr(f))]
    o["2 create existing"] = outcome(lambda: os.setxattr(f, "user.one", b"x", os.XATTR_CREATE))
    o["2 replace missing"] = outcome(lambda: os.setxattr(f, "user.no", b"x", os.XATTR_REPLACE))
    o["2 replace"] = (
        os.setxattr(f, "user.one", b"11", os.XATTR_REPLACE),
        os.getxattr(f, "user.one"),
    )
    o["3 remove"] = (os.removexattr(f, "user.two"), sorted(os.listxattr(f)))
    o["3 remove missing"] = outcome(lambda: os.removexattr(f, "user.two"))
    o["3 get missing"] = outcome(lambda: os.getxattr(f, "user.two"))
    o["4 big value"] = (os.setxattr(f, "user.big", b"b" * 3000), len(os.getxattr(f, "user.big")))
    o["4 too big"] = outcome(lambda: os.setxattr(f, "user.huge", b"h" * 70000))
    o["4 bad namespace"] = outcome(lambda: os.setxattr(f, "nonsense.x", b"1"))
    (d / "dir").mkdir()
    os.setxattr(d / "dir", "user.d", b"dir")
    o["5 on a directory"] = os.getxattr(d / "dir", "user.d")
    os.symlink("f", d / "l")
    o["5 user.* on a symlink"] = outcome(
        lambda: os.setxattr(d / "l", "user.x", b"1", follow_symlinks=False)
    )
    o["5 through a symlink"] = (os.setxattr(d / "l", "user.via", b"1"), sorted(os.listxattr(f)))
    o["6 trusted.*"] = (os.setxattr(f, "trusted.t", b"t"), os.getxattr(f, "trusted.t"))


def open_flags(d: Path, o: Obs) -> None:
    f = d / "f"
    o["1 O_EXCL new"] = outcome(lambda: os.close(os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)))
    o["1 O_EXCL existing"] = outcome(lambda: os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    os.symlink("dangling", d / "l")
    o["1 O_EXCL on a dangling symlink"] = outcome(
        lambda: os.open(d / "l", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    )
    o["1 O_CREAT through a dangling symlink"] = (
        outcome(lambda: os.close(os.open(d / "l", os.O_CREAT | os.O_WRONLY, 0o600))),
        (d / "dangling").exists(),
    )
    write(f, b"0123456789")
    o["2 O_TRUNC"] = (write(f, b"ab"), f.read_bytes())
    ro = d / "truncated read-only"  # left as it is, for the replicas' comparison
    write(ro, b"0123456789")
    fd = os.open(ro, os.O_RDONLY | os.O_TRUNC)
    os.close(fd)
    o["2 O_TRUNC read-only"] = (os.lstat(ro).st_size, ro.read_bytes())
    write(f, b"0123456789")
    o["3 O_APPEND"] = (write(f, b"+end", os.O_APPEND), f.read_bytes())
    a1 = os.open(f, os.O_WRONLY | os.O_APPEND)
    a2 = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(a1, b"[1]")
        os.write(a2, b"[2]")
        os.write(a1, b"[3]")
        os.pwrite(a2, b"[pwrite]", 0)  # Linux appends: pwrite ignores the offset with O_APPEND
        o["3 two appenders"] = f.read_bytes()
        o["3 offset after append"] = os.lseek(a1, 0, os.SEEK_CUR)
    finally:
        os.close(a1)
        os.close(a2)
    o["4 O_DIRECTORY on a file"] = outcome(lambda: os.open(f, os.O_RDONLY | os.O_DIRECTORY))
    o["4 write a directory"] = outcome(lambda: os.open(d, os.O_WRONLY))
    o["4 missing"] = outcome(lambda: os.open(d / "missing", os.O_RDONLY))
    o["4 O_CREAT in a missing dir"] = outcome(
        lambda: os.open(d / "no" / "f", os.O_CREAT | os.O_WRONLY)
    )
    o["4 unlink a directory"] = outcome(lambda: os.unlink(d))
    (d / "dir").mkdir()
    write(d / "dir" / "x", b"")
    o["5 rmdir non-empty"] = outcome(lambda: os.rmdir(d / "dir"))
    o["5 mkdir existing"] = outcome(lambda: os.mkdir(d / "dir"))
    o["5 rmdir a file"] = outcome(lambda: os.rmdir(f))
    o["5 name too long"] = outcome(lambda: os.open(d / ("n" * 256), os.O_CREAT | os.O_WRONLY))
    o["6 O_TMPFILE"] = outcome(lambda: os.close(os.open(d, os.O_TMPFILE | os.O_RDWR, 0o600)))
    # unlinked while open: the data stays readable and writable through the descriptor
    fd = os.open(d / "gone", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"still here")
        os.unlink(d / "gone")
        o["7 unlinked while open"] = (os.pread(fd, 100, 0), os.fstat(fd).st_nlink)
    finally:
        os.close(fd)


def o_direct(d: Path, o: Obs) -> None:
    f = d / "f"
    block = mmap.mmap(-1, 4096)  # page aligned
    block.write(b"D" * 4096)
    fd = os.open(f, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        o["1 write"] = outcome(lambda: os.pwritev(fd, [block], 0))
        o["1 read"] = outcome(lambda: os.preadv(fd, [block], 0))
    finally:
        os.close(fd)
    o["1 content"] = f.read_bytes() == b"D" * 4096
    # what MariaDB's InnoDB does with innodb_flush_method=O_DIRECT, done by dd
    dd = subprocess.run(
        ["dd", "if=/dev/zero", f"of={d / 'dd'}", "bs=64K", "count=16", "oflag=direct,dsync"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    o["2 dd oflag=direct"] = (dd.returncode, os.lstat(d / "dd").st_size)
    dd = subprocess.run(
        ["dd", f"if={d / 'dd'}", "of=/dev/null", "bs=64K", "iflag=direct"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    o["2 dd iflag=direct"] = (dd.returncode, dd.stderr.split(b"\n")[1].split(b",")[0])


GROUPS: dict[str, Callable[[Path, Obs], None]] = {
    "hard_links": hard_links,
    "renames": renames,
    "modes": modes,
    "owners": owners,
    "times": times,
    "special_files": special_files,
    "truncation": truncation,
    "sparse": sparse,
    "xattrs": xattrs,
    "open_flags": open_flags,
    "o_direct": o_direct,
}


def run_group(name: str, root: Path) -> Obs:
    """One group in a fresh directory `root/name`; an unexpected error is an observation too."""
    d = root / name
    d.mkdir()
    o: Obs = {}
    try:
        GROUPS[name](d, o)
    except OSError as e:
        o["stopped by"] = f"{errno.errorcode.get(e.errno or 0)} ({e})".replace(str(root), "ROOT")
    return o


# --- as a non-root user ---------------------------------------------------------------------------


def prepare_nobody(root: Path) -> Path:
    """As root: what the non-root user is then tried on (in `root/nobody`)."""
    d = root / "nobody"
    d.mkdir()
    os.chmod(d, 0o755)
    write(d / "secret", b"secret")
    os.chmod(d / "secret", 0o600)
    write(d / "readable", b"readable")
    os.chmod(d / "readable", 0o644)
    write(d / "open", b"open")
    os.chmod(d / "open", 0o666)
    write(d / "suid", b"suid")
    os.chmod(d / "suid", 0o6777)
    for name, mode in (("closed", 0o755), ("shared", 0o777), ("sticky", 0o1777), ("sgid", 0o2777)):
        (d / name).mkdir()
        os.chmod(d / name, mode)
    os.chown(d / "sgid", 0, GROUP)
    write(d / "sticky" / "roots", b"roots")
    os.chmod(d / "sticky" / "roots", 0o666)
    return d


def nobody(d: Path) -> Obs:
    """As uid/gid 65534 (the caller has already dropped root)."""
    o: Obs = {}
    o["read 0600"] = outcome(lambda: (d / "secret").read_bytes())
    o["read 0644"] = outcome(lambda: (d / "readable").read_bytes())
    o["write 0644"] = outcome(lambda: os.open(d / "readable", os.O_WRONLY))
    o["truncate 0644"] = outcome(lambda: os.truncate(d / "readable", 0))
    o["execute 0644"] = os.access(d / "readable", os.X_OK)
    o["create in 0755"] = outcome(lambda: write(d / "closed" / "x", b""))
    o["mkdir in 0755"] = outcome(lambda: os.mkdir(d / "closed" / "x"))
    o["unlink in 0755"] = outcome(lambda: os.unlink(d / "readable"))
    o["create in 0777"] = outcome(lambda: write(d / "shared" / "mine", b"mine"))
    o["created: owner and mode"] = attrs(d / "shared" / "mine")
    o["mkdir in 0777"] = (
        outcome(lambda: os.mkdir(d / "shared" / "dir")),
        attrs(d / "shared" / "dir"),
    )
    o["symlink in 0777"] = (
        outcome(lambda: os.symlink("mine", d / "shared" / "link")),
        attrs(d / "shared" / "link"),
    )
    o["fifo in 0777"] = (
        outcome(lambda: os.mkfifo(d / "shared" / "fifo", 0o644)),
        attrs(d / "shared" / "fifo"),
    )
    o["create in setgid dir: group"] = (
        outcome(lambda: write(d / "sgid" / "f", b"")),
        attrs(d / "sgid" / "f"),
    )
    o["mkdir in setgid dir: group and bit"] = (
        outcome(lambda: os.mkdir(d / "sgid" / "sub")),
        attrs(d / "sgid" / "sub"),
    )
    o["chmod root's file"] = outcome(lambda: os.chmod(d / "open", 0o777))
    o["chown own file to root"] = outcome(lambda: os.chown(d / "shared" / "mine", 0, 0))
    o["chgrp own file to a foreign group"] = outcome(
        lambda: os.chown(d / "shared" / "mine", -1, GROUP)
    )
    o["chmod own file"] = (os.chmod(d / "shared" / "mine", 0o4700), attrs(d / "shared" / "mine"))
    o["setgid on own file, not in the group"] = (
        os.chown(d / "shared" / "mine", -1, NOBODY),
        os.chmod(d / "shared" / "mine", 0o2755),
        attrs(d / "shared" / "mine"),
    )
    o["utime now on a writable file"] = outcome(lambda: os.utime(d / "open"))
    o["utime explicit on a writable file"] = outcome(lambda: os.utime(d / "open", ns=(1, 2)))
    o["utime own file"] = (
        os.utime(d / "shared" / "mine", ns=(3, 4)),
        os.lstat(d / "shared" / "mine").st_mtime_ns,
    )
    o["write 0666"] = (write(d / "open", b"written", os.O_APPEND), (d / "open").read_bytes())
    o["write clears setuid/setgid"] = (write(d / "suid", b"!", os.O_APPEND), attrs(d / "suid"))
    o["setxattr user.* on 0644"] = outcome(lambda: os.setxattr(d / "readable", "user.x", b"1"))
    o["setxattr user.* on 0666"] = outcome(lambda: os.setxattr(d / "open", "user.x", b"1"))
    o["setxattr trusted.*"] = outcome(lambda: os.setxattr(d / "open", "trusted.x", b"1"))
    o["O_NOATIME on root's file"] = outcome(
        lambda: os.open(d / "readable", os.O_RDONLY | os.O_NOATIME)
    )
    o["unlink root's file in sticky dir"] = outcome(lambda: os.unlink(d / "sticky" / "roots"))
    o["rename root's file in sticky dir"] = outcome(
        lambda: os.rename(d / "sticky" / "roots", d / "sticky" / "x")
    )
    o["write root's 0666 file in sticky dir"] = outcome(
        lambda: write(d / "sticky" / "roots", b"w", os.O_APPEND)
    )
    o["hard link to root's 0600 file"] = outcome(lambda: os.link(d / "secret", d / "shared" / "s"))
    o["hard link to root's 0666 file"] = outcome(lambda: os.link(d / "open", d / "shared" / "o"))
    o["mknod a device"] = outcome(
        lambda: os.mknod(d / "shared" / "dev", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    )
    o["rename own file into 0755"] = outcome(
        lambda: os.rename(d / "shared" / "mine", d / "closed" / "mine")
    )
    o["listing 0777"] = sorted(os.listdir(d / "shared"))
    return o


def run_nobody(root: Path) -> Obs:
    """The non-root group on `root`: prepared as root here, run as 65534 in a child process."""
    d = prepare_nobody(root)
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        [sys.executable, "-m", "tests.contract.posix_checks", "nobody", str(d)],
        cwd=repo,
        capture_output=True,
        timeout=60,
        check=False,
    )
    if r.returncode != 0:
        return {"failed": r.stderr.decode(errors="replace")[-2000:]}
    out: Obs = json.loads(r.stdout)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] != "nobody":
        print("usage: python -m tests.contract.posix_checks nobody DIR", file=sys.stderr)
        return 2
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    os.umask(0o022)
    obs = nobody(Path(argv[2]))
    print(json.dumps({k: _jsonable(v) for k, v in obs.items()}))
    return 0


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return "bytes:" + v.hex()
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    return v


if __name__ == "__main__":
    sys.exit(main(sys.argv))
