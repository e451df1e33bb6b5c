"""The secondary's applier on a real directory: every kind of operation, and no way out."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.replication.apply import RENAME_EXCHANGE, RENAME_NOREPLACE, Applier
from hakit.wire.replication import Decoder, Kind, Op, encode


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[tuple[Applier, Path]]:
    root = tmp_path / "replica"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield Applier(fd), root
    finally:
        os.close(fd)


def run(a: Applier, *ops: Op) -> list[int]:
    # through the codec, as on the wire
    d = Decoder()
    return [a.apply(op) for op in d.feed(b"".join(encode(o) for o in ops))]


def test_files_directories_links_and_metadata(replica: tuple[Applier, Path]) -> None:
    a, root = replica
    results = run(
        a,
        Op(Kind.MKDIR, 1, (0o750,), (b"d",)),
        Op(Kind.CREATE, 2, (0o640,), (b"d/f",)),
        Op(Kind.WRITE, 3, (0,), (b"d/f", b"hello world")),
        Op(Kind.WRITE, 4, (1 << 20,), (b"d/f", b"!")),  # sparse
        Op(Kind.TRUNCATE, 5, (5,), (b"d/f",)),
        Op(Kind.LINK, 6, (), (b"d/f", b"d/hard")),
        Op(Kind.SYMLINK, 7, (), (b"d/sym", b"f")),
        Op(Kind.CHMOD, 8, (0o600,), (b"d/f",)),
        Op(Kind.SETXATTR, 10, (0,), (b"d/f", b"user.color", b"blue")),
        Op(Kind.MKNOD, 11, (stat.S_IFIFO | 0o600, 0), (b"d/fifo",)),
        Op(Kind.FALLOCATE, 12, (0, 0, 8192), (b"d/f",)),
        Op(Kind.UTIMENS, 9, (10**9, 2 * 10**9), (b"d/f",)),  # last: writes change mtime
        Op(Kind.FSYNC, 13, (0,), (b"d/f",)),
    )
    assert results == [0] * 13
    f = root / "d" / "f"
    assert f.read_bytes()[:5] == b"hello"
    assert f.stat().st_size == 8192
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert f.stat().st_mtime_ns == 2 * 10**9
    assert f.stat().st_nlink == 2
    assert os.readlink(root / "d" / "sym") == "f"
    assert os.getxattr(f, "user.color") == b"blue"
    assert stat.S_ISFIFO((root / "d" / "fifo").lstat().st_mode)
    assert stat.S_IMODE((root / "d").stat().st_mode) == 0o750


def test_renames_with_flags_and_removals(replica: tuple[Applier, Path]) -> None:
    a, root = replica
    (root / "a").write_text("A")
    (root / "b").write_text("B")
    assert a.apply(Op(Kind.RENAME, 1, (RENAME_NOREPLACE,), (b"a", b"b"))) == errno.EEXIST
    assert a.apply(Op(Kind.RENAME, 2, (RENAME_EXCHANGE,), (b"a", b"b"))) == 0
    assert (root / "a").read_text() == "B"
    assert a.apply(Op(Kind.RENAME, 3, (0,), (b"a", b"c"))) == 0
    assert a.apply(Op(Kind.UNLINK, 4, (), (b"c",))) == 0
    assert a.apply(Op(Kind.UNLINK, 5, (), (b"c",))) == errno.ENOENT
    (root / "e").mkdir()
    assert a.apply(Op(Kind.RMDIR, 6, (), (b"e",))) == 0
    assert a.apply(Op(Kind.REMOVEXATTR, 7, (), (b"b", b"user.none"))) == errno.ENODATA
    assert sorted(p.name for p in root.iterdir()) == ["b"]


def test_operations_never_leave_the_replica(replica: tuple[Applier, Path], tmp_path: Path) -> None:
    a, root = replica
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("safe")
    os.symlink(outside, root / "escape")
    (root / "ok").write_text("x")
    os.symlink(outside / "victim", root / "link-to-victim")
    assert a.apply(Op(Kind.WRITE, 1, (0,), (b"escape/victim", b"PWNED"))) in (
        errno.ELOOP,
        errno.ENOTDIR,
    )
    assert a.apply(Op(Kind.WRITE, 2, (0,), (b"link-to-victim", b"PWNED"))) == errno.ELOOP
    assert a.apply(Op(Kind.CREATE, 3, (0o644,), (b"../evil",))) == errno.EINVAL
    assert a.apply(Op(Kind.UNLINK, 4, (), (b"/etc/passwd",))) == errno.EINVAL
    assert a.apply(Op(Kind.UTIMENS, 5, (0, 0), (b"escape",))) == 0  # the link itself
    assert (outside / "victim").read_text() == "safe"
    assert not (tmp_path / "evil").exists()
