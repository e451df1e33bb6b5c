"""Writes held after the replication to a ready secondary broke (issue 12, A).

The primary's replicator on a real directory and a real channel whose secondary never answers:
with an arbiter (`hold_on_loss`), a write that the secondary did not acknowledge, and every
write after the break, returns only once the daemon released them — or fails with EIO when it
refuses them (the node steps down). Without an arbiter, nothing waits.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hakit.core.filters import PathFilter
from hakit.replication.channel import Sender
from hakit.replication.primary import Replicated, Replicator
from hakit.replication.tracker import Tracker
from hakit.waiting import wait_until
from hakit.wire.replication import Kind, Op


@contextmanager
def primary(tmp_path: Path, hold: bool) -> Iterator[tuple[Replicator, list[dict[str, object]]]]:
    root = tmp_path / "data"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    events: list[dict[str, object]] = []
    tracker = Tracker(tmp_path / "tracking.journal")
    tracker.reset("g1")  # tracking since the secondary's generation
    rep = Replicator([Replicated(0, str(root), fd, PathFilter())], tracker, events.append)
    rep.hold_on_loss = hold
    ours, silent = socket.socketpair()  # the secondary reads nothing and answers nothing
    sender = Sender(ours, ack_timeout=0.3)
    threading.Thread(target=sender._read, daemon=True).start()
    rep.attach(sender)
    with rep.order:
        rep.ready()
    try:
        yield rep, events
    finally:
        rep.answer_held(False)
        sender.close("test over")
        silent.close()
        rep.tracker.close()
        os.close(fd)


class Writer:
    """One application write in its own thread (it may block): its outcome once it returns."""

    def __init__(self, rep: Replicator, root_fd: Callable[[], int], n: int) -> None:
        self.outcome: str | None = None
        op = Op(Kind.WRITE, 0, (n,), (b"0/f", b"x"))

        def run() -> None:
            try:
                rep.modify(op, lambda: os.pwrite(root_fd(), b"x", n))
                self.outcome = "ok"
            except OSError as e:
                self.outcome = errno.errorcode.get(e.errno or 0, str(e.errno))

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def still_waiting(self) -> bool:
        self.thread.join(0.3)  # bounded: it must not have returned by then
        return self.thread.is_alive()

    def done(self) -> str | None:
        self.thread.join(5)
        return self.outcome


@pytest.fixture
def data_file(tmp_path: Path) -> Iterator[Callable[[], int]]:
    holder: dict[str, int] = {}

    def fd() -> int:
        if "fd" not in holder:
            holder["fd"] = os.open(tmp_path / "data" / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        return holder["fd"]

    yield fd
    if "fd" in holder:
        os.close(holder["fd"])


def broke(events: list[dict[str, object]]) -> bool:
    return any(e.get("event") == "alone" for e in events)


@pytest.mark.parametrize("release", [True, False])
def test_unacknowledged_writes_wait_for_the_daemons_word(
    tmp_path: Path, data_file: Callable[[], int], release: bool
) -> None:
    with primary(tmp_path, hold=True) as (rep, events):
        first = Writer(rep, data_file, 0)  # in flight when the secondary goes silent
        wait_until(lambda: broke(events), 5.0, "the channel to break")
        later = Writer(rep, data_file, 1)  # after the break: alone, held too
        assert first.still_waiting(), first.outcome
        assert later.still_waiting()
        rep.answer_held(release)
        expected = "ok" if release else "EIO"
        assert first.done() == expected
        assert later.done() == expected
        assert rep.tracker.regions(b"0/f")  # whatever the word, the change is tracked


def test_after_a_release_writes_alone_go_through(
    tmp_path: Path, data_file: Callable[[], int]
) -> None:
    with primary(tmp_path, hold=True) as (rep, events):
        first = Writer(rep, data_file, 0)
        wait_until(lambda: broke(events), 5.0, "the channel to break")
        rep.answer_held(True)
        assert first.done() == "ok"
        assert Writer(rep, data_file, 1).done() == "ok"  # nothing held any more


def test_without_an_arbiter_nothing_waits(tmp_path: Path, data_file: Callable[[], int]) -> None:
    with primary(tmp_path, hold=False) as (rep, events):
        assert Writer(rep, data_file, 0).done() == "ok"  # returns at the break, tracked
        assert broke(events)
