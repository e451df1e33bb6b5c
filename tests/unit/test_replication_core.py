"""Replication frames and dirty-region tracking (pure)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hakit.core.regions import ALL, BLOCK, DirtyMap, Record
from hakit.wire.replication import Decoder, FrameError, Kind, Op, ack, encode

# --- frames ---------------------------------------------------------------------------------

OPS = [
    Op(Kind.WRITE, 1, (4096,), (b"dir/f\xff", b"x" * 10000)),
    Op(Kind.TRUNCATE, 2, (0,), (b"f",)),
    Op(Kind.CREATE, 3, (0o100644, 1000, -1), (b"a",)),
    Op(Kind.MKNOD, 4, (0o10644, 0, -1, -1), (b"fifo",)),
    Op(Kind.SYMLINK, 5, (-1, 5), (b"l", b"../target")),
    Op(Kind.RENAME, 6, (2,), (b"a", b"b")),
    Op(Kind.CHOWN, 7, (-1, 1000), (b"a",)),
    Op(Kind.UTIMENS, 8, (-5, 10**18), (b"a",)),
    Op(Kind.SETXATTR, 9, (0,), (b"a", b"user.k", b"")),
    Op(Kind.FALLOCATE, 10, (1, 0, 1 << 40), (b"a",)),
    Op(Kind.FSYNC, 11, (1,), (b"a",)),
    Op(Kind.REMOVE_TREE, 12, (), (b"0/d",)),
    Op(Kind.LIST, 13),
    Op(Kind.SUMS, 14, (65536,), (b"0/f", b"\0" * 16)),
    Op(Kind.DONE, 15),
    Op(Kind.PROGRESS, 16, (), (b"{}",)),
    Op(Kind.ACTIVITY, 17),
    Op(Kind.ACTIVITY_LIST, 17, (0,), (b"",)),
    ack(11, 28),
    Op(Kind.LISTING, 13, (0,), (b"",)),
    Op(Kind.CHECKSUMS, 14, (0,), (b"x" * 16,)),
]


def test_entries_pairs_and_ranges_round_trip() -> None:
    from hakit.wire.replication import (
        Entry,
        decode_entries,
        encode_entries,
        pack_pairs,
        pack_ranges,
        unpack_pairs,
        unpack_ranges,
    )

    entries = [
        Entry(b"0", 0o40755, 0, 0, 0, 123, 2, 3),
        Entry(b"0/l\xff", 0o120777, 1000, 1000, 0, -5, 9, 1, target=b"../x", xattrs=b""),
        Entry(b"0/f", 0o100600, 1, 2, 1 << 40, 10**18, 7, 2, xattrs=b"d" * 16),
    ]
    assert decode_entries(encode_entries(entries)) == entries
    pairs = [(b"user.a", b""), (b"", b"v" * 300)]
    assert unpack_pairs(pack_pairs(pairs)) == pairs
    ranges = [(0, 65536), (1 << 40, 1)]
    assert unpack_ranges(pack_ranges(ranges)) == ranges
    with pytest.raises(FrameError):
        decode_entries(encode_entries(entries)[:-3])
    with pytest.raises(FrameError):
        unpack_ranges(b"x" * 15)


def test_every_kind_round_trips_even_split_into_bytes() -> None:
    stream = b"".join(encode(op) for op in OPS)
    d = Decoder()
    got = [op for i in range(len(stream)) for op in d.feed(stream[i : i + 1])]
    assert got == OPS
    assert d.pending == 0


def test_bad_frames_are_errors_not_crashes() -> None:
    with pytest.raises(FrameError, match="out of range"):
        Decoder().feed(b"\x00\x00\x00\x01x")
    with pytest.raises(FrameError, match="unknown frame kind"):
        Decoder().feed(b"\x00\x00\x00\x09\x63" + bytes(8))
    # an UNLINK whose path claims 100 bytes but carries 3
    lying = b"\x00\x00\x00\x10" + b"\x08" + bytes(8) + b"\x00\x00\x00\x64" + b"abc"
    with pytest.raises(FrameError, match="overruns"):
        Decoder().feed(lying)
    with pytest.raises(ValueError, match="takes 2 byte strings"):
        encode(Op(Kind.WRITE, 1, (0,), (b"only-path",)))


@given(st.binary(max_size=200))
def test_garbage_raises_frame_error_or_waits(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        Decoder().feed(data)


# --- dirty regions --------------------------------------------------------------------------


def test_writes_mark_blocks_once_and_journal_only_new_ones() -> None:
    m = DirtyMap()
    assert m.mark_write(b"f", 10, 100) == [("d", b"f", 0, 0)]
    assert m.mark_write(b"f", 20, 5) == []  # already dirty: no journal write
    assert m.mark_write(b"f", BLOCK - 1, BLOCK + 2) == [("d", b"f", 1, 2)]
    assert m.regions(b"f") == [(0, 3 * BLOCK)]
    m.clear(b"f", 0, BLOCK)
    assert m.regions(b"f") == [(BLOCK, 2 * BLOCK)]


def test_created_file_is_whole_and_its_directory_changed() -> None:
    m = DirtyMap()
    m.mark_created(b"d/new")
    assert m.regions(b"d/new") is None
    assert b"d" in m.dirs
    assert m.mark_write(b"d/new", 0, 10) == []


def test_rename_moves_tracking_and_marks_both_directories() -> None:
    m = DirtyMap()
    m.mark_write(b"a/x/f", 0, 10)
    m.mark_renamed(b"a/x", b"b/y")
    assert m.regions(b"a/x/f") == []
    assert m.regions(b"b/y/f") == [(0, BLOCK)]
    assert {b"a", b"b"} <= m.dirs


def test_exchange_swaps_tracking() -> None:
    m = DirtyMap()
    m.mark_write(b"p", 0, 1)
    m.mark_write(b"q", 5 * BLOCK, 1)
    m.mark_renamed(b"p", b"q", exchange=True)
    assert m.data[b"q"] == {ALL}
    assert m.data[b"p"] == {ALL}


def test_unlink_forgets_the_file_but_not_its_directory() -> None:
    m = DirtyMap()
    m.mark_write(b"d/f", 0, 1)
    m.mark_removed(b"d/f")
    assert b"d/f" not in m.data
    assert b"d" in m.dirs


def test_truncate_marks_the_partial_last_block_and_the_size() -> None:
    m = DirtyMap()
    m.mark_truncate(b"f", 3 * BLOCK + 1)
    assert m.regions(b"f") == [(3 * BLOCK, BLOCK)]
    assert b"f" in m.meta


NAMES = st.sampled_from([b"a", b"b", b"d/a", b"d/b", b"d", b"e/f"])
ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), NAMES, st.integers(0, 5 * BLOCK), st.integers(1, 3 * BLOCK)),
        st.tuples(st.just("create"), NAMES, st.just(0), st.just(0)),
        st.tuples(st.just("remove"), NAMES, st.just(0), st.just(0)),
        st.tuples(st.just("rename"), NAMES, NAMES, st.booleans()),
        st.tuples(st.just("truncate"), NAMES, st.integers(0, 6 * BLOCK), st.just(0)),
        st.tuples(st.just("meta"), NAMES, st.just(0), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=300)
@given(ACTIONS)
def test_journal_replay_rebuilds_the_same_map_and_snapshot_is_equivalent(
    actions: list[tuple[str, bytes, Any, Any]],
) -> None:
    m = DirtyMap()
    journal: list[Record] = []
    for kind, path, a, b in actions:
        if kind == "write":
            journal += m.mark_write(path, a, b)
        elif kind == "create":
            journal += m.mark_created(path)
        elif kind == "remove":
            journal += m.mark_removed(path)
        elif kind == "rename":
            if a != path and not a.startswith(path + b"/") and not path.startswith(a + b"/"):
                journal += m.mark_renamed(path, a, exchange=bool(b))
        elif kind == "truncate":
            journal += m.mark_truncate(path, a)
        else:
            journal += m.mark_meta(path)
    replayed = DirtyMap.replay(journal)
    assert (replayed.data, replayed.meta, replayed.dirs) == (m.data, m.meta, m.dirs)
    again = DirtyMap.replay(m.snapshot())
    assert (again.data, again.meta, again.dirs) == (m.data, m.meta, m.dirs)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 20 * BLOCK), st.integers(1, 4 * BLOCK)), max_size=30))
def test_every_written_byte_is_inside_a_dirty_region(writes: list[tuple[int, int]]) -> None:
    m = DirtyMap()
    for off, n in writes:
        m.mark_write(b"f", off, n)
    regions = m.regions(b"f") or []
    for off, n in writes:
        assert any(r0 <= off and off + n <= r0 + rn for r0, rn in regions)
