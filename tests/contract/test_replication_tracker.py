"""The tracker and the activity log on disk: durable marks, crash replay, epochs."""

from __future__ import annotations

from pathlib import Path

from hakit.replication.tracker import ACTIVITY_BLOCK, TRACK_BLOCK, ActivityLog, Tracker
from hakit.wire.replication import Kind, Op, unpack_ranges


def write(path: bytes, offset: int, n: int = 10) -> Op:
    return Op(Kind.WRITE, 0, (offset,), (path, b"x" * n))


def test_marks_survive_a_crash_and_follow_renames(tmp_path: Path) -> None:
    t = Tracker(tmp_path / "tracking.journal")
    t.start("g1")
    t.mark(write(b"0/a", 5 * TRACK_BLOCK))
    t.mark(Op(Kind.CREATE, 0, (0o644, -1, -1), (b"0/new",)))
    t.mark(Op(Kind.RENAME, 0, (0,), (b"0/a", b"0/b")))
    # no close: the process dies here; a new one reads the journal
    again = Tracker(tmp_path / "tracking.journal")
    assert again.base == "g1"
    assert b"0/b" in again.paths()
    assert b"0/a" not in again.paths()
    assert again.regions(b"0/new") is None  # a new file: whole
    again.start("g9")  # a journal already tracks: its base is kept
    assert again.base == "g1"
    again.reset("g2")
    assert again.empty()
    assert Tracker(tmp_path / "tracking.journal").base == "g2"


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    t = Tracker(tmp_path / "tracking.journal")
    t.start("g1")
    t.mark(write(b"0/a", 0))
    t.close()
    with open(tmp_path / "tracking.journal", "ab") as f:
        f.write(b"d\t30")  # the crash came in the middle of an append
    assert Tracker(tmp_path / "tracking.journal").regions(b"0/a") == [(0, TRACK_BLOCK)]


def test_activity_epochs_forget_what_the_secondary_made_durable(tmp_path: Path) -> None:
    log = ActivityLog(tmp_path / "activity.journal")
    log.start("")
    log.mark(write(b"0/a", 0))  # seq 1
    assert log.rotate(0, 1)  # epoch 1 starts after seq 1; epoch 0 had nothing
    log.mark(write(b"0/b", 3 * ACTIVITY_BLOCK))  # seq 2
    assert not log.rotate(0, 2)  # seq 1 not durable on the secondary yet: keep everything
    assert {p for p, _ in log.exported()} == {b"0/a", b"0/b"}
    assert log.rotate(1, 2)  # a's epoch is durable there: forgotten; b stays
    exported = dict(log.exported())
    assert set(exported) == {b"0/b"}
    assert unpack_ranges(exported[b"0/b"]) == [(3 * ACTIVITY_BLOCK, ACTIVITY_BLOCK)]
    # what a crash leaves: the journal replays to at least the regions not known durable
    replayed = ActivityLog(tmp_path / "activity.journal")
    assert replayed.active
    assert b"0/b" in dict(replayed.exported())
    # a primary losing its secondary absorbs them into what the secondary must be sent
    t = Tracker(tmp_path / "tracking.journal")
    t.start("g1")
    t.absorb(replayed)
    assert t.regions(b"0/b") == [(3 * ACTIVITY_BLOCK, ACTIVITY_BLOCK)]
    replayed.drop()
    assert not (tmp_path / "activity.journal").exists()
