"""The replication process pair on one machine: a secondary listening on loopback and a primary
whose directory becomes a FUSE mount replicating to the secondary's directory.

No daemon and no lab: both processes are driven through `hakit.testing.replication`. Every
test compares the two real trees itself (type, permissions, owner, size, content, symlink
target, extended attributes, link counts and hard-link groups). Modification times of regular
files and directories are *not* compared: the secondary applies a write with its own clock
(the kernel dates the write when it is applied there), so after any write they differ by the
replication delay; only an explicit `utime` carries exact times, and that is checked apart.

Needs root and /dev/fuse. The fixture stops (or kills) every process it started, by PID, and
lazily unmounts whatever is left mounted under the test's directory, even after a failure.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import signal
import socket
import stat
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from hakit.testing.replication import ReplicatorProcess
from tests.contract.posix_checks import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse"
)

T = TypeVar("T")
KiB = 1024
MiB = 1024 * KiB
BLOCK = 64 * KiB  # the resynchronisation's checksum block
PORTS = range(17500, 17600)
ACK = 0.8  # acknowledgement timeout where a test measures it
CALM_ACK = 3.0  # where it must never fire (a loaded 2-core machine)
SEED = 20240611


# --- mounts and processes -------------------------------------------------------------------


def _unescape(field_: str) -> str:
    return field_.encode().decode("unicode_escape").encode("latin-1").decode()


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first."""
    prefix = str(root)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


_given: set[int] = set()


def _our_ports() -> range:
    """This process's share of PORTS: with pytest-xdist each worker has its own (gw0 every
    second port from 17500, gw1 from 17501 with two workers), so two workers never both find
    a port free and then both bind it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker) if worker.isdigit() else 0
    return PORTS[index % count :: count]


def free_port() -> int:
    """A free TCP port on loopback in 17500-17599 (this worker's share of it), not handed
    out before in this session."""
    ours = _our_ports()
    for port in random.Random(os.getpid()).sample(ours, len(ours)):
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise AssertionError("no free port in 17500-17599")


@dataclass
class Rig:
    tmp: Path
    procs: list[ReplicatorProcess] = field(default_factory=list)
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def dir(self, name: str) -> Path:
        d = self.tmp / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def secondary(
        self,
        path: Path,
        port: int,
        state: str = "s-state",
        mode: str = "sync",
        ack_timeout: float = CALM_ACK,
        preserve: str = "",
        **filters: Any,
    ) -> ReplicatorProcess:
        p = ReplicatorProcess(
            "secondary",
            [{"path": str(path), **filters}],
            str(self.tmp / state),
            mode=mode,
            listen=("127.0.0.1", port),
            ack_timeout=ack_timeout,
            preserve=preserve,
        )
        self.procs.append(p)
        p.wait_for("listening", timeout=20)
        return p

    def primary(
        self,
        path: Path,
        state: str = "p-state",
        mode: str = "sync",
        ack_timeout: float = CALM_ACK,
        bandwidth: int = 0,
        wait: str = "mounted",
        **filters: Any,
    ) -> ReplicatorProcess:
        p = ReplicatorProcess(
            "primary",
            [{"path": str(path), **filters}],
            str(self.tmp / state),
            mode=mode,
            ack_timeout=ack_timeout,
            bandwidth=bandwidth,
        )
        self.procs.append(p)
        p.wait_for(wait, timeout=20)
        return p

    def spawn(self, args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        h = subprocess.Popen(args, cwd=cwd)
        self.helpers.append(h)
        return h

    def teardown(self) -> None:
        primaries = [p for p in self.procs if p.role == "primary"]
        for p in primaries + [p for p in self.procs if p.role != "primary"]:
            if p.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.proc.pid, signal.SIGCONT)  # a test may have stopped it
                p.stop(timeout=10)  # killed if it does not stop
            p.close()
        for h in self.helpers:
            if h.poll() is None:
                h.kill()
            h.wait(10)
        for _ in range(10):  # stacked mounts come off one layer per pass
            left = mounts_under(self.tmp)
            if not left:
                break
            for point in left:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        assert not mounts_under(self.tmp), f"still mounted: {mounts_under(self.tmp)}"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.teardown()


def pair(
    rig: Rig, mode: str = "sync", ack_timeout: float = CALM_ACK, **filters: Any
) -> tuple[ReplicatorProcess, ReplicatorProcess, Path, Path, int]:
    """A synchronised pair over two empty directories: (primary, secondary, p, s, port)."""
    p, s, port = rig.dir("p"), rig.dir("s"), free_port()
    sec = rig.secondary(s, port, mode=mode, ack_timeout=ack_timeout, **filters)
    pri = rig.primary(p, mode=mode, ack_timeout=ack_timeout, **filters)
    at = pri.mark()
    pri.connect(port)
    wait_synced(pri, at)
    return pri, sec, p, s, port


def wait_synced(pri: ReplicatorProcess, after: int, timeout: float = 60.0) -> dict[str, Any]:
    """The primary's `synced` event after index `after`; fails at once on `resync-failed`."""
    deadline = time.monotonic() + timeout
    while True:
        for ev in pri.events[after:]:
            if ev["event"] == "synced":
                return ev
            assert ev["event"] != "resync-failed", f"resynchronisation failed: {ev['reason']}"
        assert time.monotonic() < deadline, f"not synced within {timeout} s: {pri.events[-5:]}"
        assert pri.proc.poll() is None, f"the primary exited: {pri.stderr[-10:]}"
        time.sleep(0.02)


def bounded(fn: Callable[[], T], limit: float) -> tuple[float, T | OSError]:
    """Run `fn` in a thread: (seconds it took, its result or OSError); fails if it is still
    blocked after `limit` (the fixture's kills then release it)."""
    box: list[tuple[float, T | OSError]] = []

    def run() -> None:
        t0 = time.monotonic()
        try:
            r: T | OSError = fn()
        except OSError as e:
            r = e
        box.append((time.monotonic() - t0, r))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    assert box, f"operation still blocked after {limit} s"
    return box[0]


def errno_of(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as e:
        return e.errno or 0
    return 0


def write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[: 1 * MiB]) :]
    finally:
        os.close(fd)


def pwrite_file(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


# --- comparing trees ------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    kind: str
    perm: int
    uid: int
    gid: int
    size: int  # regular files and symlinks only (a directory's size depends on its history)
    nlink: int
    target: str
    xattrs: tuple[tuple[str, bytes], ...]
    digest: bytes


def _digest(path: Path) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 * MiB):
            h.update(chunk)
    return h.digest()


def tree(root: Path, skip: Callable[[str], bool] = lambda rel: False) -> dict[str, Any]:
    """{relative path: Node} plus the hard-link groups (under the key None)."""
    nodes: dict[str, Node] = {}
    inodes: dict[int, list[str]] = defaultdict(list)

    def visit(d: Path, rel: str) -> None:
        for name in sorted(os.listdir(d)):
            r = f"{rel}/{name}" if rel else name
            if skip(r):
                continue
            path = d / name
            st = os.lstat(path)
            kind = {
                stat.S_IFREG: "file",
                stat.S_IFDIR: "dir",
                stat.S_IFLNK: "symlink",
                stat.S_IFIFO: "fifo",
            }.get(stat.S_IFMT(st.st_mode), "other")
            names = sorted(os.listxattr(path, follow_symlinks=False))
            xattrs = tuple((n, os.getxattr(path, n, follow_symlinks=False)) for n in names)
            nodes[r] = Node(
                kind=kind,
                perm=stat.S_IMODE(st.st_mode),
                uid=st.st_uid,
                gid=st.st_gid,
                size=st.st_size if kind in ("file", "symlink") else 0,
                nlink=st.st_nlink,
                target=os.readlink(path) if kind == "symlink" else "",
                xattrs=xattrs,
                digest=_digest(path) if kind == "file" else b"",
            )
            if kind == "file" and st.st_nlink > 1:
                inodes[st.st_ino].append(r)
            if kind == "dir":
                visit(path, r)

    visit(root, "")
    out: dict[Any, Any] = dict(nodes)
    out[None] = sorted(sorted(g) for g in inodes.values())
    return out


def differences(a: dict[Any, Any], b: dict[Any, Any]) -> list[str]:
    out = []
    if a.get(None) != b.get(None):
        out.append(f"hard-link groups: {a.get(None)} vs {b.get(None)}")
    for path in sorted(k for k in set(a) | set(b) if k is not None):
        x, y = a.get(path), b.get(path)
        if x == y:
            continue
        if x is None or y is None:
            out.append(f"{path}: {'only on the secondary' if x is None else 'missing'}")
            continue
        fields = [
            f"{f} {getattr(x, f)!r:.60} vs {getattr(y, f)!r:.60}"
            for f in Node.__dataclass_fields__
            if getattr(x, f) != getattr(y, f)
        ]
        out.append(f"{path}: {', '.join(fields)}")
    return out


def underneath(pri: ReplicatorProcess, mount: Path) -> Path:
    """The primary's real directory below its mount, through the handle it opened before
    mounting. Compared rather than the mount's view: libfuse's path-based API gives each name
    of a hard-linked file its own kernel inode, so what was written through one name shows
    through another only once the kernel's cached attributes expire (1 s)."""
    mount_dev = os.stat(mount).st_dev
    for fd in sorted(Path(f"/proc/{pri.proc.pid}/fd").iterdir()):
        with contextlib.suppress(OSError):
            st = os.stat(fd)
            if (
                os.readlink(fd) == str(mount)
                and stat.S_ISDIR(st.st_mode)
                and st.st_dev != mount_dev
            ):
                return fd
    raise AssertionError(f"no handle on the directory under {mount} in process {pri.proc.pid}")


def assert_identical(
    pri: ReplicatorProcess, p: Path, s: Path, skip: Callable[[str], bool] = lambda r: False
) -> int:
    """The primary's tree equals the secondary's; returns the number of entries compared."""
    a, b = tree(underneath(pri, p), skip), tree(s)
    diff = differences(a, b)
    assert not diff, f"{len(diff)} differences, first ones:\n" + "\n".join(diff[:25])
    return len(a) - 1


def assert_converges(pri: ReplicatorProcess, p: Path, s: Path, limit: float = 15.0) -> None:
    """For `semi` (acknowledged on receipt): the secondary catches up within `limit`."""
    deadline = time.monotonic() + limit
    real = underneath(pri, p)
    while True:
        diff = differences(tree(real), tree(s))
        if not diff:
            return
        assert time.monotonic() < deadline, "not converged:\n" + "\n".join(diff[:25])
        time.sleep(0.1)


# --- the random workload ------------------------------------------------------------------------


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


class Workload:
    """Random file operations on a directory (the primary's mount), seeded, with a model of
    the tree so that each operation knows the outcome to expect; an unexpected error fails."""

    WEIGHTS: ClassVar[dict[str, int]] = {
        "create": 10,
        "write": 22,
        "overwrite": 3,
        "append": 3,
        "truncate": 6,
        "fallocate": 2,
        "fsync": 2,
        "rename": 6,
        "replace": 4,
        "replace_dir": 2,
        "exchange": 3,
        "noreplace": 3,
        "unlink": 6,
        "mkdir": 6,
        "rmdir": 3,
        "link": 4,
        "symlink": 4,
        "fifo": 1,
        "chmod": 4,
        "chown": 2,
        "setxattr": 4,
        "removexattr": 2,
        "utime": 3,
        "bulk": 1,
    }

    def __init__(
        self,
        root: Path,
        seed: int,
        big_files: int = 3,
        bulk: int = 2,
        weights: dict[str, int] | None = None,
    ) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.kind: dict[str, str] = {}  # relative path -> f(ile), d(ir), l(ink), p(ipe)
        self.done: Counter[str] = Counter()
        self.big_left = big_files
        self.bulk_left = bulk
        chosen = self.WEIGHTS | (weights or {})
        self.names = list(chosen)
        self.weights = list(chosen.values())
        for dirpath, dirnames, filenames in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            for n in dirnames + filenames:
                r = n if rel == "." else f"{rel}/{n}"
                m = os.lstat(root / r).st_mode
                self.kind[r] = (
                    "d" if stat.S_ISDIR(m) else "l" if stat.S_ISLNK(m) else "p"
                    if stat.S_ISFIFO(m) else "f"
                )  # fmt: skip

    # --- running ----------------------------------------------------------------------------

    def run(self, n: int, stop: threading.Event | None = None) -> int:
        for i in range(n):
            if stop is not None and stop.is_set():
                return i
            self.step()
        return n

    def step(self) -> None:
        name = self.rng.choices(self.names, self.weights)[0]
        if getattr(self, "op_" + name)() is not False:
            self.done[name] += 1

    # --- model helpers ----------------------------------------------------------------------

    def p(self, rel: str) -> Path:
        return self.root / rel

    def of(self, kinds: str) -> list[str]:
        return sorted(r for r, k in self.kind.items() if k in kinds)

    def pick(self, kinds: str) -> str | None:
        found = self.of(kinds)
        return self.rng.choice(found) if found else None

    def new_path(self, prefix: str, outside: str | None = None) -> str:
        dirs = [""] + [d for d in self.of("d") if outside is None or not _under(d, outside)]
        for _ in range(50):
            parent = self.rng.choice(dirs)
            name = f"{prefix}{self.rng.randrange(10000)}"
            rel = f"{parent}/{name}" if parent else name
            if rel not in self.kind:
                return rel
        raise AssertionError("no free name")

    def empty(self, d: str) -> bool:
        return not any(r.startswith(d + "/") for r in self.kind)

    def related(self, a: str, b: str) -> bool:
        return _under(a, b) or _under(b, a)

    def subtree(self, top: str) -> dict[str, str]:
        return {r: k for r, k in self.kind.items() if _under(r, top)}

    def move(self, old: str, new: str) -> None:
        moved = self.subtree(old)
        for r in moved:
            del self.kind[r]
        self.kind.update({new + r[len(old) :]: k for r, k in moved.items()})

    def drop(self, top: str) -> None:
        for r in self.subtree(top):
            del self.kind[r]

    def expect(self, err: int, fn: Callable[[], object]) -> None:
        got = errno_of(fn)
        assert got == err, f"expected {errno.errorcode[err]}, got {errno.errorcode.get(got, got)}"

    def data(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    # --- operations -------------------------------------------------------------------------

    def op_create(self) -> bool | None:
        rel = self.new_path("f")
        size = self.rng.randrange(0, 32 * KiB)
        if self.big_left and self.rng.random() < 0.15:
            self.big_left -= 1
            size = self.rng.randrange(1, 4) * MiB + self.rng.randrange(4 * KiB)
        mode = self.rng.choice([0o644, 0o600, 0o666, 0o755, 0o640])
        umask = self.rng.choice([0o022, 0o002, 0o077, 0])
        old = os.umask(umask)
        try:
            fd = os.open(self.p(rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        finally:
            os.umask(old)
        try:
            got = stat.S_IMODE(os.fstat(fd).st_mode)
            assert got == mode & ~umask, f"create {rel} {mode:o} umask {umask:o}: mode {got:o}"
            view = memoryview(self.data(size))
            while view:
                view = view[os.write(fd, view[: 1 * MiB]) :]
        finally:
            os.close(fd)
        self.kind[rel] = "f"
        return None

    def op_write(self) -> bool | None:
        rel = self.pick("f")
        if rel is None:
            return False
        size = os.stat(self.p(rel)).st_size
        if self.rng.random() < 0.04:  # far past the end: a sparse file
            offset = self.rng.randrange(2 * MiB, 8 * MiB)
        else:
            offset = self.rng.randrange(0, size + 8 * KiB)
        pwrite_file(self.p(rel), offset, self.data(self.rng.randrange(1, 64 * KiB)))
        return None

    def op_overwrite(self) -> bool | None:
        rel = self.pick("f")
        if rel is None:
            return False
        fd = os.open(self.p(rel), os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, self.data(self.rng.randrange(0, 8 * KiB)))
        finally:
            os.close(fd)
        return None

    def op_append(self) -> bool | None:
        rel = self.pick("f")
        if rel is None:
            return False
        fd = os.open(self.p(rel), os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, self.data(self.rng.randrange(1, 4 * KiB)))
        finally:
            os.close(fd)
        return None

    def op_truncate(self) -> bool | None:
        rel = self.pick("f")
        if rel is None:
            return False
        size = os.stat(self.p(rel)).st_size
        length = self.rng.choice([0, size // 2, size + self.rng.randrange(1, 1 * MiB)])
        os.truncate(self.p(rel), length)
        assert os.stat(self.p(rel)).st_size == length
        return None

    def op_fallocate(self) -> bool | None:
        rel = self.pick("f")
        if rel is None:
            return False
        size = os.stat(self.p(rel)).st_size
        fd = os.open(self.p(rel), os.O_WRONLY)
        try:
            os.posix_fallocate(fd, self.rng.randrange(0, size + BLOCK), self.rng.randrange(1, MiB))
        finally:
            os.close(fd)
        return None

    def op_fsync(self) -> bool | None:
        rel = self.pick("fd")
        if rel is None:
            return False
        fd = os.open(self.p(rel), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return None

    def op_rename(self) -> bool | None:
        old = self.pick("fdlp")
        if old is None:
            return False
        new = self.new_path("r", outside=old)
        os.rename(self.p(old), self.p(new))
        self.move(old, new)
        return None

    def op_replace(self) -> bool | None:
        files = self.of("f")
        if len(files) < 2:
            return False
        old, new = self.rng.sample(files, 2)
        same = os.lstat(self.p(old)).st_ino == os.lstat(self.p(new)).st_ino
        os.rename(self.p(old), self.p(new))
        if not same:  # between two names of one file, rename does nothing
            self.drop(new)
            self.move(old, new)
        return None

    def op_replace_dir(self) -> bool | None:
        dirs = self.of("d")
        pairs = [(a, b) for a in dirs for b in dirs if not self.related(a, b) and self.empty(b)]
        if not pairs:
            return False
        old, new = self.rng.choice(pairs)
        os.rename(self.p(old), self.p(new))
        self.drop(new)
        self.move(old, new)
        return None

    def op_exchange(self) -> bool | None:
        names = self.of("fdlp")
        if len(names) < 2:
            return False
        a, b = self.rng.sample(names, 2)
        if self.related(a, b):
            return False
        renameat2(self.p(a), self.p(b), RENAME_EXCHANGE)
        sa, sb = self.subtree(a), self.subtree(b)
        for r in [*sa, *sb]:
            del self.kind[r]
        self.kind.update({b + r[len(a) :]: k for r, k in sa.items()})
        self.kind.update({a + r[len(b) :]: k for r, k in sb.items()})
        return None

    def op_noreplace(self) -> bool | None:
        names = self.of("fdlp")
        if len(names) < 2:
            return False
        a, b = self.rng.sample(names, 2)
        if self.rng.random() < 0.5 and not self.related(a, b):
            self.expect(errno.EEXIST, lambda: renameat2(self.p(a), self.p(b), RENAME_NOREPLACE))
            return None
        new = self.new_path("n", outside=a)
        renameat2(self.p(a), self.p(new), RENAME_NOREPLACE)
        self.move(a, new)
        return None

    def op_unlink(self) -> bool | None:
        rel = self.pick("flp")
        if rel is None:
            return False
        os.unlink(self.p(rel))
        del self.kind[rel]
        return None

    def op_mkdir(self) -> bool | None:
        rel = self.new_path("d")
        mode = self.rng.choice([0o755, 0o700, 0o750, 0o775, 0o777])
        umask = self.rng.choice([0o022, 0o002, 0])
        old = os.umask(umask)
        try:
            os.mkdir(self.p(rel), mode)
        finally:
            os.umask(old)
        got = stat.S_IMODE(os.lstat(self.p(rel)).st_mode)
        # as on any Linux file system, a directory inherits its parent's set-group-ID bit
        inherited = os.lstat(os.path.dirname(self.p(rel))).st_mode & stat.S_ISGID
        want = (mode & ~umask) | inherited
        assert got == want, f"mkdir {rel} {mode:o} umask {umask:o}: mode {got:o}"
        self.kind[rel] = "d"
        return None

    def op_rmdir(self) -> bool | None:
        dirs = self.of("d")
        if not dirs:
            return False
        rel = self.rng.choice(dirs)
        if not self.empty(rel):
            self.expect(errno.ENOTEMPTY, lambda: os.rmdir(self.p(rel)))
            return None
        os.rmdir(self.p(rel))
        del self.kind[rel]
        return None

    def op_link(self) -> bool | None:
        rel = self.pick("f")
        if rel is None:
            return False
        new = self.new_path("h")
        os.link(self.p(rel), self.p(new))
        self.kind[new] = "f"
        return None

    def op_symlink(self) -> bool | None:
        rel = self.new_path("s")
        names = self.of("fdlp")
        targets = ["nowhere", "/etc/passwd", "é" * 9]
        target = self.rng.choice(targets + (["../" + self.rng.choice(names)] if names else []))
        os.symlink(target, self.p(rel))
        self.kind[rel] = "l"
        return None

    def op_fifo(self) -> bool | None:
        rel = self.new_path("p")
        os.mkfifo(self.p(rel), 0o640)
        self.kind[rel] = "p"
        return None

    def op_chmod(self) -> bool | None:
        rel = self.pick("fdp")
        if rel is None:
            return False
        if self.kind[rel] == "d":
            mode = 0o700 | self.rng.randrange(0o100) | self.rng.choice([0, 0o1000, 0o2000])
        else:
            mode = self.rng.choice([0o600, 0o644, 0o755, 0o4755, 0o2750, 0o000, 0o444, 0o1777])
        os.chmod(self.p(rel), mode)
        assert stat.S_IMODE(os.lstat(self.p(rel)).st_mode) == mode
        return None

    def op_chown(self) -> bool | None:
        rel = self.pick("fdlp")
        if rel is None:
            return False
        uid, gid = self.rng.choice([0, 1000, 4242]), self.rng.choice([0, 100, 4242])
        os.chown(self.p(rel), uid, gid, follow_symlinks=False)
        return None

    def op_setxattr(self) -> bool | None:
        rel = self.pick("fd")
        if rel is None:
            return False
        value = self.data(self.rng.randrange(0, 300))
        os.setxattr(self.p(rel), f"user.k{self.rng.randrange(4)}", value)
        return None

    def op_removexattr(self) -> bool | None:
        rel = self.pick("fd")
        if rel is None:
            return False
        names = sorted(n for n in os.listxattr(self.p(rel)) if n.startswith("user."))
        if not names:
            self.expect(errno.ENODATA, lambda: os.removexattr(self.p(rel), "user.none"))
            return None
        os.removexattr(self.p(rel), self.rng.choice(names))
        return None

    def op_utime(self) -> bool | None:
        rel = self.pick("fdlp")
        if rel is None:
            return False
        ns = (self.rng.randrange(10**18), self.rng.randrange(10**18))
        os.utime(self.p(rel), ns=ns, follow_symlinks=False)
        return None

    def op_bulk(self) -> bool | None:
        if not self.bulk_left:
            return False
        self.bulk_left -= 1
        d = self.new_path("bulk")
        os.mkdir(self.p(d))
        self.kind[d] = "d"
        for i in range(40):
            write_file(self.p(f"{d}/small{i}"), self.data(self.rng.randrange(0, 2 * KiB)))
            self.kind[f"{d}/small{i}"] = "f"
        return None


def stamp_times(root: Path, rng: random.Random) -> dict[str, int]:
    """Set an exact modification time on every regular file (replicated as such): {path:
    time} (the names of a hard-linked file share one)."""
    names: dict[int, list[str]] = defaultdict(list)
    for dirpath, _, filenames in os.walk(root):
        for n in filenames:
            st = os.lstat(Path(dirpath) / n)
            if stat.S_ISREG(st.st_mode):
                names[st.st_ino].append(str((Path(dirpath) / n).relative_to(root)))
    out: dict[str, int] = {}
    for ino in sorted(names):
        mtime = rng.randrange(10**9, 2 * 10**18)
        os.utime(root / names[ino][0], ns=(mtime, mtime), follow_symlinks=False)
        out |= dict.fromkeys(names[ino], mtime)
    return out


# --- 1. random operations, both modes ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "semi"])
def test_random_operations_leave_identical_trees(rig: Rig, mode: str) -> None:
    pri, sec, p, s, _ = pair(rig, mode=mode)
    w = Workload(p, SEED)
    w.run(500)
    assert set(w.done) == set(Workload.WEIGHTS), f"never ran: {set(Workload.WEIGHTS) - set(w.done)}"
    if mode == "sync":
        n = assert_identical(pri, p, s)  # acknowledged once applied: no waiting at all
    else:
        assert_converges(pri, p, s)
        n = assert_identical(pri, p, s)
    assert n > 100
    # explicit times travel exactly (the only times we can compare)
    times = stamp_times(p, random.Random(SEED))
    if mode == "semi":
        assert_converges(pri, p, s)
    got = {r: os.lstat(s / r).st_mtime_ns for r in times}
    assert got == times
    assert not [e for e in pri.events if e["event"] in ("alone", "diverged")], pri.events[-5:]
    # a clean stop unmounts everything by itself
    pri.stop()
    sec.stop()
    assert pri.proc.returncode == 0
    assert sec.proc.returncode == 0
    assert not mounts_under(rig.tmp)


# --- 2. the workload keeps running while a resynchronisation copies -------------------------


def test_resync_while_the_application_writes(rig: Rig) -> None:
    p, s, port = rig.dir("p"), rig.dir("s"), free_port()
    pri = rig.primary(p, bandwidth=24 * MiB)
    w = Workload(p, SEED + 1, big_files=6)
    w.run(350)  # alone: everything tracked
    for i in range(4):
        write_file(p / f"base{i}", random.Random(i).randbytes(3 * MiB))
    sec = rig.secondary(s, port)
    stop = threading.Event()
    errors: list[BaseException] = []
    ops: list[int] = []

    def generate() -> None:
        try:
            # fewer moves of whole directories than above (an application seldom moves
            # directories; each move racing a pass can leave its marks for one more pass)
            g = Workload(p, SEED + 2, weights={"replace_dir": 1, "exchange": 1, "noreplace": 1})
            deadline = time.monotonic() + 30
            while (
                not stop.is_set()
                and time.monotonic() < deadline
                and g.run(1)
                and sum(g.done.values()) < 3000
            ):
                ops.append(sum(g.done.values()))
                time.sleep(0.005)  # a busy application, not a namespace-churning benchmark
        except BaseException as e:
            errors.append(e)

    at = pri.mark()
    pri.connect(port)
    pri.wait_for("connected", after=at)
    t = threading.Thread(target=generate, daemon=True)
    t.start()
    try:
        synced = wait_synced(pri, at)
        during = len(ops)
        # and a little more once ready
        deadline = time.monotonic() + 5
        while len(ops) < during + 30 and t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        t.join(20)
    assert not t.is_alive()
    assert not errors, repr(errors[0])
    assert during >= 20, f"only {during} operations ran during the resynchronisation"
    assert synced["full_compare"] is True
    assert assert_identical(pri, p, s) > 100
    # `synced` means identical: nothing the application did afterwards failed there
    bad = ("alone", "resync-failed", "diverged")
    assert not [e for e in pri.events[at:] if e["event"] in bad], pri.events[-5:]
    assert sec.wait_for("synced")


# --- 3. incremental resynchronisation -------------------------------------------------------


def test_incremental_resync_sends_only_the_changes(rig: Rig) -> None:
    p, s, port = rig.dir("p"), rig.dir("s"), free_port()
    rng = random.Random(SEED + 3)
    total = 0
    for i in range(4):
        write_file(p / f"big{i}", rng.randbytes(8 * MiB))
        total += 8 * MiB
    (p / "old").mkdir()
    for i in range(5):
        write_file(p / "old" / f"f{i}", rng.randbytes(10 * KiB))
    sec = rig.secondary(s, port)
    pri = rig.primary(p)
    at = pri.mark()
    pri.connect(port, peer_gen="", my_gen="g1")
    first = wait_synced(pri, at)
    assert first["full_compare"] is True
    assert first["bytes_sent"] >= total
    assert_identical(pri, p, s)

    # the secondary goes away; the primary, alone, changes a few blocks and names
    at = pri.mark()
    sec.stop()
    pri.wait_for("alone", after=at)
    changed = 0
    for i in range(3):
        for k in range(3):  # three distinct 64 KiB blocks in each of three files
            pwrite_file(p / f"big{i}", (k * 37 + i * 5 + 1) * BLOCK + 100, rng.randbytes(4 * KiB))
            changed += BLOCK
    (p / "new").mkdir()
    os.symlink("../big0", p / "new" / "link")
    new_bytes = 0
    for i in range(4):
        write_file(p / "new" / f"n{i}", rng.randbytes(20 * KiB))
        new_bytes += 20 * KiB
    os.chmod(p / "big3", 0o600)
    os.unlink(p / "old" / "f0")
    os.rename(p / "old" / "f1", p / "new" / "moved")  # rename: resent whole (10 KiB)
    new_bytes += 10 * KiB
    for name in ("f2", "f3", "f4"):
        os.unlink(p / "old" / name)
    os.rmdir(p / "old")

    sec = rig.secondary(s, port)  # same directory, same state directory
    at = pri.mark()
    pri.connect(port, peer_gen="g1", my_gen="g2")
    assert pri.wait_for("connected", after=at)["trust"] is True
    second = wait_synced(pri, at)
    assert second["full_compare"] is False
    assert changed + new_bytes <= second["bytes_sent"] <= changed + new_bytes + 2 * BLOCK
    assert second["bytes_sent"] < total / 20
    assert_identical(pri, p, s)

    # a fresh, empty secondary with no generation gets everything
    s2, port2 = rig.dir("s2"), free_port()
    at = pri.mark()
    pri.command(cmd="disconnect", reason="test")
    pri.wait_for("alone", after=at)
    rig.secondary(s2, port2, state="s2-state")
    at = pri.mark()
    pri.connect(port2, peer_gen="", my_gen="g3")
    assert pri.wait_for("connected", after=at)["trust"] is False
    third = wait_synced(pri, at)
    assert third["full_compare"] is True
    assert third["bytes_sent"] >= total
    assert_identical(pri, p, s2)


def test_a_diverged_secondary_keeps_what_the_resync_changes(rig: Rig) -> None:
    """Split brain: both sides changed the data; the side that rejoins keeps its versions."""
    p, s, port = rig.dir("p"), rig.dir("s"), free_port()
    rng = random.Random(SEED + 9)
    same = rng.randbytes(200 * KiB)
    for d in (p, s):
        write_file(d / "same", same)
        (d / "sub").mkdir()
    write_file(p / "both-changed", b"primary's version\n")
    write_file(s / "both-changed", b"secondary's version\n")
    write_file(s / "sub" / "only-here", b"written on the secondary during the split\n")
    os.symlink("same", s / "sub" / "link-here")
    (s / "tree").mkdir()
    write_file(s / "tree" / "deep", b"a whole directory only on the secondary\n")
    write_file(p / "only-primary", b"new on the primary\n")
    keep = rig.tmp / "kept" / "20261204-gen3-abc"
    rig.secondary(s, port, preserve=str(keep))
    sec = rig.procs[-1]
    pri = rig.primary(p)
    at = pri.mark()
    pri.connect(port, peer_gen="", my_gen="g9")
    wait_synced(pri, at)
    assert_identical(pri, p, s)
    done = sec.wait_for("preserved", timeout=20)
    assert done["folder"] == str(keep)
    base = keep / str(s).lstrip("/")
    assert (base / "both-changed").read_bytes() == b"secondary's version\n"
    assert (
        base / "sub" / "only-here"
    ).read_bytes() == b"written on the secondary during the split\n"
    assert os.readlink(base / "sub" / "link-here") == "same"
    assert (base / "tree" / "deep").read_bytes() == b"a whole directory only on the secondary\n"
    assert not (base / "same").exists()  # identical on both sides: nothing to keep
    assert not (base / "only-primary").exists()
    report = (keep / "REPORT.txt").read_text()
    assert "Why: test: diverged copy" in report
    assert f"{str(s).lstrip('/')}/both-changed" in report
    assert done["kept"] == len([ln for ln in report.splitlines() if ln.startswith("  ")])


# --- 4. an interrupted resynchronisation resumes --------------------------------------------


def test_interrupted_resync_resumes_where_it_stopped(rig: Rig) -> None:
    p, s, port = rig.dir("p"), rig.dir("s"), free_port()
    rng = random.Random(SEED + 4)
    total = 0
    for i in range(8):
        write_file(p / f"f{i}", rng.randbytes(4 * MiB))
        total += 4 * MiB
    sec = rig.secondary(s, port)
    pri = rig.primary(p, bandwidth=16 * MiB)
    at = pri.mark()
    pri.connect(port)
    # wait for a progress report past 40 % of the data, then kill the secondary
    deadline = time.monotonic() + 30
    sent_before = 0
    while sent_before < 0.4 * total:
        assert time.monotonic() < deadline, pri.events[-5:]
        ev = pri.wait_for("progress", after=at, timeout=10)
        at = pri.events.index(ev) + 1
        sent_before = int(ev["bytes_sent"])
    assert sent_before < 0.9 * total, "the resynchronisation was not interrupted in the middle"
    sec.kill()  # SIGKILL
    pri.wait_for("resync-failed", after=at)
    assert not [e for e in pri.events if e["event"] == "synced"]

    sec = rig.secondary(s, port)  # same directory and state directory, on its stale mount
    at = pri.mark()
    pri.connect(port)
    synced = wait_synced(pri, at)
    assert_identical(pri, p, s)
    resent = int(synced["bytes_sent"])
    assert sent_before + resent <= 1.2 * total, (sent_before, resent, total)
    assert resent <= 0.7 * total


def test_progress_is_reported_while_one_large_file_is_copied(rig: Rig) -> None:
    """A resync of one large file shows its bytes, rate and ETA as it goes (on the primary
    and, relayed, on the secondary), not only between files."""
    p, s, port = rig.dir("p"), rig.dir("s"), free_port()
    size = 24 * MiB
    write_file(p / "big", random.Random(SEED + 12).randbytes(size))
    sec = rig.secondary(s, port)
    pri = rig.primary(p, bandwidth=8 * MiB)  # about 3 s of copying
    at, sat = pri.mark(), sec.mark()
    pri.connect(port)
    synced = wait_synced(pri, at)
    seen = [e for e in pri.events[at:] if e["event"] == "progress" and e["phase"] == "copying"]
    partial = [e for e in seen if 0 < e["bytes_done"] < size]
    assert len(partial) >= 3, seen
    assert all(e["files_total"] == 1 and e["bytes_total"] == size for e in partial)
    done = [e["bytes_done"] for e in partial]
    assert done == sorted(done)
    assert len(set(done)) == len(done)
    assert all(e["rate"] > 0 and e["eta"] > 0 for e in partial)
    relayed = [
        e for e in sec.events[sat:] if e["event"] == "progress" and 0 < e["bytes_done"] < size
    ]
    assert relayed, sec.events[sat:]
    assert synced["bytes_sent"] >= size


# --- 5. the primary crashes -----------------------------------------------------------------


def test_primary_crash_keeps_the_tracking_journal(rig: Rig) -> None:
    p, s, port = rig.dir("p"), rig.dir("s"), free_port()
    rng = random.Random(SEED + 5)
    for i in range(3):
        write_file(p / f"f{i}", rng.randbytes(2 * MiB))
    sec = rig.secondary(s, port)
    pri = rig.primary(p)
    at = pri.mark()
    pri.connect(port, peer_gen="", my_gen="g1")
    wait_synced(pri, at)
    at = pri.mark()
    sec.stop()
    pri.wait_for("alone", after=at)
    pwrite_file(p / "f1", 5 * BLOCK, b"x" * 100)
    pwrite_file(p / "f2", 20 * BLOCK + 10, b"y" * 100)
    write_file(p / "g", b"new file" * 100)
    os.unlink(p / "f0")
    os.mkdir(p / "d")
    pri.kill()
    assert errno_of(lambda: os.stat(p / "f1")) == errno.ENOTCONN
    subprocess.run(["umount", "-l", str(p)], check=True)

    pri = rig.primary(p)  # same directory, same state directory
    sec = rig.secondary(s, port)
    at = pri.mark()
    pri.connect(port, peer_gen="g1", my_gen="g2")
    assert pri.wait_for("connected", after=at)["trust"] is True
    synced = wait_synced(pri, at)
    assert synced["bytes_sent"] == 2 * BLOCK + 800, synced
    assert_identical(pri, p, s)


def test_a_crashed_primary_returning_as_secondary_hands_over_its_activity_log(rig: Rig) -> None:
    """The primary dies with a ready secondary; bytes it wrote locally may never have reached
    the secondary (planted here below its dead mount). The secondary takes over and changes a
    file; the old primary comes back as secondary: its activity log (regions with operations
    in flight, kept on disk) tells the new primary what to compare — not every file — and the
    planted bytes are overwritten."""
    a, b, port_b, port_a = rig.dir("a"), rig.dir("b"), free_port(), free_port()
    rng = random.Random(SEED + 11)
    for i in range(12):
        write_file(a / f"f{i}", rng.randbytes(MiB))
    sec = rig.secondary(b, port_b, state="b-state")
    pri = rig.primary(a, state="a-state")
    at = pri.mark()
    pri.connect(port_b, peer_gen="", my_gen="g1")
    wait_synced(pri, at)
    pwrite_file(a / "f3", 100, b"acknowledged")  # replicated, in the current epoch
    pri.kill()  # power cut of the primary (its daemon, FUSE process and all)
    subprocess.run(["umount", "-l", str(a)], check=True)
    pwrite_file(a / "f3", 200, b"NEVER REPLICATED")  # landed on its disk, not on b's
    # b takes over: a primary over its directory, tracking since g1
    sec.stop()
    new_pri = ReplicatorProcess("primary", [{"path": str(b)}], str(rig.tmp / "b-state"), base="g1")
    rig.procs.append(new_pri)
    new_pri.wait_for("mounted", timeout=20)
    pwrite_file(b / "f7", 5 * BLOCK, b"changed on b")
    # a returns as secondary of b
    rig.secondary(a, port_a, state="a-state")
    at = new_pri.mark()
    new_pri.connect(port_a, peer_gen="g1", my_gen="g2")
    connected = new_pri.wait_for("connected", after=at)
    assert connected["trust"] is True, connected
    assert "it was writing when it stopped uncleanly" in connected["why"], connected
    synced = wait_synced(new_pri, at)
    assert synced["full_compare"] is False
    assert synced["files_total"] <= 3, synced  # f3 (activity) and f7 (tracked), not 12 files
    assert synced["bytes_sent"] <= 2 * BLOCK + 1024, synced
    assert_identical(new_pri, b, a)
    assert b"NEVER REPLICATED" not in (a / "f3").read_bytes()


# --- 6. the secondary fails ------------------------------------------------------------------


def test_secondary_disk_full_leaves_the_primary_alone(rig: Rig) -> None:
    p, s, port = rig.dir("p"), rig.dir("s"), free_port()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(s)], check=True)
    sec = rig.secondary(s, port, ack_timeout=ACK)
    pri = rig.primary(p, ack_timeout=ACK)
    at = pri.mark()
    pri.connect(port)
    wait_synced(pri, at)
    data = random.Random(SEED + 6).randbytes(4 * MiB)
    fd = os.open(p / "big", os.O_WRONLY | os.O_CREAT, 0o644)
    slowest = 0.0
    try:
        for off in range(0, len(data), BLOCK):

            def write(off: int = off) -> int:
                return os.pwrite(fd, data[off : off + BLOCK], off)

            took, r = bounded(write, 10)
            assert r == BLOCK, f"write at {off}: {r!r}"
            slowest = max(slowest, took)
    finally:
        os.close(fd)
    lost = sec.wait_for("lost", timeout=5)
    assert lost["fatal"] is True
    assert "ENOSPC" in lost["reason"]
    alone = pri.wait_for("alone", timeout=5, after=at)
    assert alone["at"] - lost["at"] < ACK + 0.5
    assert slowest < ACK + 1.0, f"a write blocked {slowest:.2f} s"
    assert (p / "big").read_bytes() == data  # the application went on, alone


def test_hung_secondary_releases_writes_within_the_ack_timeout(rig: Rig) -> None:
    pri, sec, p, s, port = pair(rig, ack_timeout=ACK)
    write_file(p / "f", b"before")
    os.kill(sec.proc.pid, signal.SIGSTOP)
    try:
        at = pri.mark()
        took, r = bounded(lambda: write_file(p / "f", b"during"), 10)
        assert r is None
        assert took < 3 * ACK, f"the write blocked {took:.2f} s"
        assert pri.wait_for("alone", timeout=5, after=at)["was"] == "ready"
        took, r = bounded(lambda: write_file(p / "g", b"alone"), 10)  # alone: no wait at all
        assert r is None
        assert took < ACK / 2, f"a write while alone took {took:.2f} s"
    finally:
        os.kill(sec.proc.pid, signal.SIGCONT)
    assert (p / "f").read_bytes() == b"during"
    # what the secondary missed (or got without acknowledging) is tracked: a resync repairs it
    sec.wait_for("lost", after=0)
    at = pri.mark()
    pri.connect(port, peer_gen="g1", my_gen="g2")
    assert pri.wait_for("connected", after=at)["trust"] is True
    assert wait_synced(pri, at)["bytes_sent"] == len(b"during") + len(b"alone")
    assert_identical(pri, p, s)


# --- 7. the primary's process dies, or its daemon does -----------------------------------------


def test_killed_primary_process_makes_the_mount_fail(rig: Rig) -> None:
    pri, _, p, s, _ = pair(rig, ack_timeout=ACK)
    write_file(p / "f", b"replicated")
    pri.kill()
    _, r = bounded(lambda: write_file(p / "g", b"unreplicated?"), 10)
    assert isinstance(r, OSError)
    assert r.errno == errno.ENOTCONN
    _, got = bounded(lambda: (p / "f").read_bytes(), 10)
    assert isinstance(got, OSError)
    assert got.errno == errno.ENOTCONN
    assert not (s / "g").exists()
    assert (s / "f").read_bytes() == b"replicated"


def test_daemon_gone_fences_writes_but_not_reads(rig: Rig) -> None:
    pri, _, p, s, _ = pair(rig, ack_timeout=ACK)
    write_file(p / "f", b"replicated")
    os.mkdir(p / "d")
    at = pri.mark()
    assert pri.proc.stdin is not None
    pri.proc.stdin.close()
    pri.wait_for("fenced", after=at)
    fd = os.open(p / "f", os.O_WRONLY)
    try:
        assert errno_of(lambda: os.pwrite(fd, b"X", 0)) == errno.EIO
    finally:
        os.close(fd)
    assert errno_of(lambda: write_file(p / "new", b"x")) == errno.EIO
    assert errno_of(lambda: os.mkdir(p / "d2")) == errno.EIO
    assert errno_of(lambda: os.rename(p / "f", p / "f2")) == errno.EIO
    assert errno_of(lambda: os.truncate(p / "f", 0)) == errno.EIO
    assert errno_of(lambda: os.rmdir(p / "d")) == errno.EIO
    assert (p / "f").read_bytes() == b"replicated"
    assert sorted(os.listdir(p)) == ["d", "f"]
    assert_identical(pri, p, s)


# --- 8. verify ---------------------------------------------------------------------------------


def test_verify_finds_a_planted_difference(rig: Rig) -> None:
    pri, _, p, s, _ = pair(rig)
    rng = random.Random(SEED + 8)
    (p / "data").mkdir()
    for i in range(5):
        write_file(p / "data" / f"f{i}", rng.randbytes(300 * KiB))
    at = pri.mark()
    pri.command(cmd="verify")
    ok = pri.wait_for("verify", after=at)
    assert ok["ok"] is True, ok
    assert ok["files"] == 5
    assert ok["bytes"] == 5 * 300 * KiB

    # the secondary's directory is read-only for everyone but the secondary
    assert errno_of(lambda: write_file(s / "intruder", b"x")) == errno.EROFS
    subprocess.run(["mount", "-o", "remount,rw,bind", str(s)], check=True)
    try:
        with open(s / "data" / "f3", "r+b") as f:
            f.seek(200 * KiB)
            byte = f.read(1)
            f.seek(200 * KiB)
            f.write(bytes([byte[0] ^ 0xFF]))
    finally:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(s)], check=True)
    at = pri.mark()
    pri.command(cmd="verify")
    bad = pri.wait_for("verify", after=at)
    assert bad["ok"] is False
    assert bad["differences_total"] == 1
    (diff,) = bad["differences"]
    assert diff["path"] == f"{p}/data/f3"
    assert diff["difference"].startswith("content differs in 64 KiB blocks 3"), diff


# --- 9. exclusions -------------------------------------------------------------------------------


def test_excluded_paths_are_not_replicated(rig: Rig) -> None:
    filters: dict[str, Any] = {"exclude": ["tmp"], "exclude_regex": ["\\.log$"]}
    p, s, port = rig.dir("p"), rig.dir("s"), free_port()
    (p / "tmp").mkdir()
    write_file(p / "tmp" / "before", b"excluded, present before the first sync")
    write_file(p / "before.log", b"excluded too")
    write_file(p / "kept", b"replicated")
    rig.secondary(s, port, **filters)
    pri = rig.primary(p, **filters)
    at = pri.mark()
    pri.connect(port)
    wait_synced(pri, at)

    def excluded(rel: str) -> bool:
        return (
            rel == "tmp"
            or rel.startswith("tmp/")
            or any(part.endswith(".log") for part in rel.split("/"))
        )

    (p / "d").mkdir()
    write_file(p / "d" / "app.log", b"log")
    write_file(p / "d" / "app.txt", b"text")
    (p / "logs.log").mkdir()
    write_file(p / "logs.log" / "inside", b"under an excluded directory")
    (p / "tmp" / "sub").mkdir()
    write_file(p / "tmp" / "sub" / "x", b"x")
    os.rename(p / "kept", p / "tmp" / "kept")  # leaves the replicated set
    write_file(p / "tmp" / "enter", b"enters the replicated set")
    at = pri.mark()
    os.rename(p / "tmp" / "enter", p / "d" / "entered")
    pri.wait_for("repaired", after=at)
    (p / "tmp" / "dir").mkdir()
    write_file(p / "tmp" / "dir" / "a", b"a directory enters")
    at = pri.mark()
    os.rename(p / "tmp" / "dir", p / "moved-in")
    pri.wait_for("repaired", after=at)
    assert_identical(pri, p, s, skip=excluded)
    assert sorted(os.listdir(s)) == ["d", "moved-in"]
    assert sorted(os.listdir(s / "d")) == ["app.txt", "entered"]
    assert (s / "moved-in" / "a").read_bytes() == b"a directory enters"
    assert not [e for e in pri.events if e["event"] in ("alone", "resync-failed")]


# --- 10. refusing to start ---------------------------------------------------------------------


def test_required_file_missing_refuses_to_start(rig: Rig) -> None:
    p = rig.dir("p")
    pri = rig.primary(p, wait="error", require=["PG_VERSION"])
    message = pri.wait_for("error")["message"]
    assert "required file PG_VERSION is missing" in message
    assert pri.proc.wait(10) == 2
    assert not mounts_under(rig.tmp)
    write_file(p / "PG_VERSION", b"15\n")
    pri = rig.primary(p, state="p2-state", require=["PG_VERSION"])
    assert mounts_under(rig.tmp) == [str(p)]


def test_process_inside_the_directory_refuses_the_mount(rig: Rig) -> None:
    p = rig.dir("p")
    (p / "sub").mkdir()
    holder = rig.spawn(["sleep", "60"], cwd=p / "sub")
    deadline = time.monotonic() + 5
    while os.readlink(f"/proc/{holder.pid}/cwd") != str(p / "sub"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pri = rig.primary(p, wait="error")
    message = pri.wait_for("error")["message"]
    assert f"{holder.pid} (sleep)" in message
    assert pri.proc.wait(10) == 2
    assert not mounts_under(rig.tmp)
    holder.kill()
    holder.wait(10)
    pri = rig.primary(p, state="p2-state")
    assert mounts_under(rig.tmp) == [str(p)]


# --- SQLite -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "semi"])
def test_sqlite_commits_are_on_the_secondary_when_acknowledged(rig: Rig, mode: str) -> None:
    """SQLite in WAL mode (shared-memory index mapped through the mount, fsync per commit):
    a copy of the secondary's files taken while the database is still open on the primary —
    what a takeover would find — holds every acknowledged transaction and passes
    `integrity_check`."""
    import sqlite3

    pri, _sec, p, s, _port = pair(rig, mode=mode)
    db = sqlite3.connect(p / "app.db", isolation_level=None)
    db.execute("pragma journal_mode=wal")
    db.execute("pragma synchronous=full")
    db.execute("create table t (id integer primary key, payload blob)")
    acked = 0
    for i in range(1, 401):
        db.execute("begin")
        db.execute("insert into t values (?, ?)", (i, os.urandom(200 + i % 3000)))
        if i % 50 == 0:
            db.execute("update t set payload = ? where id = ?", (b"x" * 10, i - 25))
        db.execute("commit")
        acked = i
    if mode == "semi":  # acknowledged on receipt: applied right after
        assert_converges(pri, p, s)
    crash_image = rig.dir("image")
    for name in ("app.db", "app.db-wal"):
        if (s / name).exists():
            (crash_image / name).write_bytes((s / name).read_bytes())
    copy = sqlite3.connect(crash_image / "app.db")
    try:
        assert copy.execute("pragma integrity_check").fetchone() == ("ok",)
        assert copy.execute("select count(*) from t").fetchone() == (acked,)
        assert copy.execute("select payload from t where id = 375").fetchone() == (b"x" * 10,)
    finally:
        copy.close()
        db.close()


# --- 10. stopping the secondary around a resynchronisation (issue 12, finding 9) ---------------


def _files(root: Path, n: int, size: int, rng: random.Random) -> None:
    for i in range(n):
        write_file(root / f"f{i:02d}", rng.randbytes(size))


def assert_stopped_cleanly(sec: ReplicatorProcess) -> None:
    """Exit status 0, no traceback: the replica's cached descriptors closed once."""
    at = sec.mark()
    sec.stop(timeout=30)
    assert sec.proc.returncode == 0, sec.stderr[-15:]
    assert not [line for line in sec.stderr if "Traceback" in line or "Errno" in line]
    assert sec.wait_for("stopped", after=at, timeout=1)


@pytest.mark.parametrize("kind", ["full", "tracked", "verify"])
def test_the_secondary_stops_cleanly_right_after_a_resync(rig: Rig, kind: str) -> None:
    """Stopping with descriptors cached from the last writes applied (bench/replication.py
    used to see EBADF here: the stop and the session both closed them)."""
    p, s, port = rig.dir("p"), rig.dir("s"), free_port()
    rng = random.Random(SEED + 10)
    _files(p, 40, 64 * KiB, rng)
    sec = rig.secondary(s, port)
    pri = rig.primary(p)
    at = pri.mark()
    pri.connect(port, peer_gen="", my_gen="g1")
    wait_synced(pri, at)
    if kind != "full":
        at = pri.mark()
        sec.stop()
        pri.wait_for("alone", after=at)
        for i in range(40):  # changes only: every file's descriptor cached on the replica
            pwrite_file(p / f"f{i:02d}", 4 * KiB, rng.randbytes(4 * KiB))
        sec = rig.secondary(s, port)
        at = pri.mark()
        pri.connect(port, peer_gen="g1", my_gen="g2")
        assert pri.wait_for("connected", after=at)["trust"] is True
        wait_synced(pri, at)
    for i in range(40):  # writes applied through cached descriptors, right before the stop
        pwrite_file(p / f"f{i:02d}", 0, rng.randbytes(512))
    if kind == "verify":
        at = pri.mark()
        pri.command(cmd="verify")
        assert pri.wait_for("verify", after=at)["ok"] is True
    assert_stopped_cleanly(sec)


def test_the_secondary_stops_cleanly_during_a_resync(rig: Rig) -> None:
    p, s, port = rig.dir("p"), rig.dir("s"), free_port()
    _files(p, 24, 1 * MiB, random.Random(SEED + 11))
    sec = rig.secondary(s, port)
    pri = rig.primary(p, bandwidth=4 * MiB)  # about 6 s of copying
    at = sec.mark()
    pri.connect(port)
    sec.wait_for("progress", after=at)
    assert_stopped_cleanly(sec)


def test_the_secondary_stops_cleanly_while_it_applies_writes(rig: Rig) -> None:
    """The stop and the session once both used the replica's descriptor cache."""
    pri, sec, p, _, _ = pair(rig)
    for i in range(100):
        write_file(p / f"f{i:03d}", b"")
    done = threading.Event()
    written = [0]

    def writer() -> None:  # more files than the cache holds: descriptors opened and closed
        with contextlib.suppress(OSError):  # the primary goes alone meanwhile: no error
            for n in range(20_000):
                if done.is_set():
                    return
                pwrite_file(p / f"f{n % 100:03d}", 0, b"x" * 512)
                written[0] = n + 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while written[0] < 300:  # replicated writes flowing through the cache
            assert time.monotonic() < deadline, f"only {written[0]} writes"
            assert t.is_alive()
            time.sleep(0.01)
        assert_stopped_cleanly(sec)
    finally:
        done.set()
        t.join(30)
    assert pri.proc.poll() is None


# --- 11. the replication port under attack (issue 12, findings 3, 4) ---------------------------


def test_the_primary_resyncs_while_idle_and_garbage_connections_hold_the_port(rig: Rig) -> None:
    """Nine idle connections once kept a primary alone for 31 s."""
    p, s, port = rig.dir("p"), rig.dir("s"), free_port()
    write_file(p / "f", b"replicated")
    sec = rig.secondary(s, port)
    pri = rig.primary(p)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    garbage = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    for g in garbage:
        with contextlib.suppress(OSError):
            g.sendall(os.urandom(8192))
    try:
        at = pri.mark()
        t0 = time.monotonic()
        pri.connect(port)
        wait_synced(pri, at, timeout=10)  # generous; no timing threshold beyond it
        assert time.monotonic() - t0 < 10
    finally:
        for c in held + garbage:
            c.close()
    assert (s / "f").read_bytes() == b"replicated"
    assert sec.wait_for("refused", timeout=10)["count"] >= 1  # the garbage, reported
    assert sec.proc.poll() is None


def test_a_primary_never_replicates_to_a_replica_of_another_cluster(rig: Rig) -> None:
    p, s, port = rig.dir("p"), rig.dir("s"), free_port()
    sec = ReplicatorProcess(
        "secondary",
        [{"path": str(s)}],
        str(rig.tmp / "s-state"),
        listen=("127.0.0.1", port),
        secret=b"\x01" * 32,
    )
    rig.procs.append(sec)
    sec.wait_for("listening", timeout=20)
    pri = rig.primary(p)
    at = pri.mark()
    pri.connect(port)
    failed = pri.wait_for("resync-failed", after=at)
    assert "is not node2" in failed["reason"]
    assert not any(ev["event"] == "connected" for ev in pri.events[at:])
    write_file(p / "f", b"stays here")
    assert not (s / "f").exists()
    assert not any(ev["event"] == "connected" for ev in sec.events)
