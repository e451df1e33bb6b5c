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


class FirstDirectory(Applier):
    """Operations written with paths relative to the replicated directory number 0."""

    def apply(self, op: Op) -> int:
        paths = 2 if op.kind in (Kind.RENAME, Kind.LINK) else 1
        blobs = tuple(b"0/" + b for b in op.blobs[:paths]) + op.blobs[paths:]
        return super().apply(Op(op.kind, op.seq, op.ints, blobs))


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[tuple[Applier, Path]]:
    root = tmp_path / "replica"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    a = FirstDirectory([fd])
    try:
        yield a, root
    finally:
        a.forget()
        os.close(fd)


def run(a: Applier, *ops: Op) -> list[int]:
    # through the codec, as on the wire
    d = Decoder()
    return [a.apply(op) for op in d.feed(b"".join(encode(o) for o in ops))]


def test_files_directories_links_and_metadata(replica: tuple[Applier, Path]) -> None:
    a, root = replica
    results = run(
        a,
        Op(Kind.MKDIR, 1, (0o750, -1, -1), (b"d",)),
        Op(Kind.CREATE, 2, (0o640, -1, -1), (b"d/f",)),
        Op(Kind.WRITE, 3, (0,), (b"d/f", b"hello world")),
        Op(Kind.WRITE, 4, (1 << 20,), (b"d/f", b"!")),  # sparse
        Op(Kind.TRUNCATE, 5, (5,), (b"d/f",)),
        Op(Kind.LINK, 6, (), (b"d/f", b"d/hard")),
        Op(Kind.SYMLINK, 7, (-1, -1), (b"d/sym", b"f")),
        Op(Kind.CHMOD, 8, (0o600,), (b"d/f",)),
        Op(Kind.SETXATTR, 10, (0,), (b"d/f", b"user.color", b"blue")),
        Op(Kind.MKNOD, 11, (stat.S_IFIFO | 0o600, 0, -1, -1), (b"d/fifo",)),
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
    assert a.apply(Op(Kind.CREATE, 3, (0o644, -1, -1), (b"../evil",))) == errno.EINVAL
    assert a.apply(Op(Kind.UNLINK, 4, (), (b"/etc/passwd",))) == errno.EINVAL
    assert a.apply(Op(Kind.UTIMENS, 5, (0, 0), (b"escape",))) == 0  # the link itself
    assert (outside / "victim").read_text() == "safe"
    assert not (tmp_path / "evil").exists()


def test_owner_travels_with_creations_and_trees_are_removed(
    replica: tuple[Applier, Path],
) -> None:
    a, root = replica
    assert a.apply(Op(Kind.MKDIR, 1, (0o755, 1234, 4321), (b"t",))) == 0
    assert a.apply(Op(Kind.CREATE, 2, (0o600, 1234, 4321), (b"t/f",))) == 0
    assert a.apply(Op(Kind.SYMLINK, 3, (1234, -1), (b"t/l", b"f"))) == 0
    assert (root / "t" / "f").stat().st_uid == 1234
    assert (root / "t" / "f").stat().st_gid == 4321
    assert (root / "t" / "l").lstat().st_uid == 1234
    assert a.apply(Op(Kind.REMOVE_TREE, 4, (), (b"t",))) == 0
    assert not (root / "t").exists()
    assert a.apply(Op(Kind.REMOVE_TREE, 5, (), (b"t",))) == 0  # already gone: fine


def test_set_xattrs_makes_the_exact_set(replica: tuple[Applier, Path]) -> None:
    from hakit.wire.replication import pack_pairs

    a, root = replica
    (root / "f").write_text("x")
    os.setxattr(root / "f", "user.old", b"1")
    pairs = [(b"user.a", b"A"), (b"user.b", b"")]
    assert a.apply(Op(Kind.SET_XATTRS, 1, (), (b"f", pack_pairs(pairs)))) == 0
    assert sorted(os.listxattr(root / "f")) == ["user.a", "user.b"]
    assert os.getxattr(root / "f", "user.a") == b"A"


@pytest.mark.parametrize("index", [b"1", b"zz", b"-1", b"-0", b"+0", b"00", b" 0", b"\xd9\xa0"])
def test_an_unknown_directory_index_is_refused(tmp_path: Path, index: bytes) -> None:
    """`-1/x` once resolved to the last replicated directory (issue 12, finding 6)."""
    dirs = [tmp_path / "a", tmp_path / "b"]
    fds = []
    for d in dirs:
        d.mkdir()
        (d / "x").write_text("kept")
        fds.append(os.open(d, os.O_RDONLY | os.O_DIRECTORY))
    try:
        a = Applier(fds[:1] if index == b"1" else fds)
        assert a.apply(Op(Kind.UNLINK, 1, (), (index + b"/x",))) == errno.EPROTO
        assert all((d / "x").read_text() == "kept" for d in dirs)
    finally:
        for fd in fds:
            os.close(fd)
