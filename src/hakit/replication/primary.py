"""The primary's side of replication: every modification applied locally *and* sent, in one order.

`Replicator.modify` is called by the FUSE layer for every modifying operation. Under one lock
(`order`) it applies the operation to the real directory and hands the frame to the channel, so
the secondary applies operations in the order they took effect here; the caller then waits for
the acknowledgement outside the lock (pipelining). States:

- `alone`: no secondary. The operation is first marked in the tracker (durably), then applied.
- `resyncing`: a secondary is being brought up to date (see `resync.py`); operations are sent
  as they happen, and whatever the secondary fails to apply is marked to be sent again.
- `ready`: the secondary is identical; an operation returns once it has acknowledged it.

When the channel breaks (silence longer than the acknowledgement timeout, which is below the
heartbeat timeout), every operation in flight is marked and the replicator is alone: the
application's call returns — its change is local and tracked, never reported as replicated
when it was not (the daemon is told at once and the module shows ALONE).

With an arbiter (`hold_on_loss`), a break of a *ready* secondary does not return at once: the
operations in flight, and every one after them, are applied and tracked but their callers wait
(`Held`) until the daemon answers — released once the arbiter confirmed that this node may go on
alone, refused (EIO) if it steps down instead (or after `HOLD_LIMIT`). So no write is
acknowledged that the node taking over might not have.
"""

from __future__ import annotations

import errno as E
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from hakit.core.filters import PathFilter
from hakit.latency import Latency
from hakit.replication.apply import RENAME_EXCHANGE
from hakit.replication.channel import FATAL_ERRNOS, ChannelError, Sender
from hakit.replication.scan import walk_from
from hakit.replication.tracker import ActivityLog, Tracker
from hakit.wire.replication import Kind, Op

T = TypeVar("T")
Notify = Callable[[dict[str, object]], None]


_MOVES_MARKS = frozenset({Kind.RENAME, Kind.UNLINK, Kind.RMDIR, Kind.REMOVE_TREE})
"""Name changes that move or drop the tracker's marks (see `Replicator._follow`)."""


class State(StrEnum):
    ALONE = "alone"
    RESYNCING = "resyncing"
    READY = "ready"


@dataclass(frozen=True)
class Replicated:
    """One replicated directory: its index on the wire, its path, the handle opened before
    anything was mounted over it, and which of its paths are replicated."""

    index: int
    path: str
    fd: int
    filter: PathFilter

    def wire(self, rel: bytes) -> bytes:
        top = str(self.index).encode()
        return top + b"/" + rel if rel else top


class Fenced(OSError):
    pass


HOLD_LIMIT = 60.0
"""Longest a write is held waiting for the daemon's word (it answers within the arbiter's
lease; this bounds a daemon that never does): then it is refused."""


class Held:
    """The writes held since one break: waiting, then released (True) or refused (False)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.verdict: bool | None = None

    def answer(self, release: bool) -> None:
        with self._cond:
            if self.verdict is None:
                self.verdict = release
                self._cond.notify_all()

    def wait(self, limit: float = HOLD_LIMIT) -> None:
        """Return once released; raise EIO if refused or past `limit`."""
        deadline = time.monotonic() + limit
        with self._cond:
            while self.verdict is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.verdict = False
                    break
                self._cond.wait(min(left, 0.5))
        if not self.verdict:
            raise Fenced(
                E.EIO, "not acknowledged: the replication broke and this node stepped down"
            )


FSYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds (s) of the buckets of the fsync latency histogram (docs/metrics.md)."""


class Replicator:
    def __init__(self, dirs: list[Replicated], tracker: Tracker, notify: Notify) -> None:
        self.dirs = dirs
        self.tracker = tracker
        self.notify = notify
        self.order = threading.Lock()
        self.state = State.ALONE
        self.sender: Sender | None = None
        self.fenced = ""  # non-empty: refuse every modification (the daemon is gone)
        # set by the resynchronisation (under `order`) while its pass compares everything
        self.full_pass = False
        # the file whose data the resynchronisation is copying, under its current name (kept
        # up to date across renames by `_follow`; None when removed)
        self.copying: bytes | None = None
        self.on_diverged: Callable[[], None] = lambda: None
        # regions with operations possibly in flight (see `ActivityLog`); None: not kept
        self.activity: ActivityLog | None = None
        self._in_flight = 0  # operations sent whose answer is not handled yet
        self._settled = threading.Condition()
        self.hold_on_loss = False  # hold writes after a break of a ready secondary (see above)
        self._planned = False  # the next loss is our own orderly stop (`detach(planned=True)`)
        self.held: Held | None = None  # the writes held since the last break, if undecided
        self._next_held: Held | None = None  # what the writes in flight wait on if it breaks
        self.fsync_latency = Latency(FSYNC_BUCKETS)  # of the application's fsyncs, here and there

    # --- the application's operations ----------------------------------------------------------

    def modify(
        self,
        op: Op | Callable[[], Op],
        local: Callable[[], T],
        resolve: Callable[[T], Op] | None = None,
        replicated: bool = True,
    ) -> T:
        """Apply `local()` and replicate `op` (or `resolve(result)`, for operations whose frame
        depends on what the local call did). `op` may be a function giving the frame from the
        state of the files just before `local()` runs (under the order lock). Raises what
        `local` raises (nothing is sent)."""
        if self.fenced:
            raise Fenced(E.EIO, self.fenced)
        if not replicated:
            return local()
        with self.order:
            if not isinstance(op, Op):
                op = op()
            sender = self.sender
            if sender is None or self.state is State.ALONE:
                self.tracker.mark(op)  # durable before the change it describes
                held = self.held
                result = local()
                sender = None
            else:
                held = self._gate()
                if self.activity is not None:
                    self.activity.mark(op)  # durable before the change: a crash now is covered
                result = local()
                frame = resolve(result) if resolve is not None else op
                if self.state is State.RESYNCING and frame.kind in _MOVES_MARKS:
                    self._follow(frame)
                try:
                    seq = sender.submit(frame)
                    self._unsettled(+1)
                except ChannelError:
                    self.tracker.mark(frame)
                    sender = None
        if sender is None:  # alone: returns once the daemon released what a break holds
            if held is not None:
                held.wait()
            return result
        try:
            reply = sender.wait(seq)
        except ChannelError:
            self.tracker.mark(frame)  # also marked by `_lost`; marking twice costs nothing
            broke = True
        else:
            broke = False
            if reply.ints[0]:
                self.diverged(frame, int(reply.ints[0]))
        finally:
            self._unsettled(-1)
        if broke and held is not None:
            held.wait()  # not acknowledged by the secondary: the daemon's word decides
        return result

    def _follow(self, op: Op) -> None:
        """While resynchronising, a rename or removal (applied here, sent as it happens; under
        `order`): the tracker's marks, what the secondary still misses, follow the names or
        go. During a full pass the secondary's copies are not known to be right until the pass
        reaches them, and it will not reach them under their new names: the files renamed
        (directly or with their directory) are marked to be compared by the next pass."""
        self.tracker.follow(op)
        self.copying = _renamed(self.copying, op)
        if op.kind is not Kind.RENAME or not self.full_pass:
            return
        moved = [op.blobs[1], op.path] if op.ints[0] & RENAME_EXCHANGE else [op.blobs[1]]
        roots = [d.fd for d in self.dirs]
        filters = {d.index: d.filter for d in self.dirs}
        for top in moved:
            entries = walk_from(roots, top, lambda i, rel: filters[i].replicated(rel))
            self.tracker.mark_whole_many([e.path for e in entries if stat.S_ISREG(e.mode)])

    def fsync(self, op: Op, local: Callable[[], None]) -> None:
        """The secondary makes the file durable while we do (in `sync` mode it answers after
        its own fsync); returns when both are done. Its duration goes to `fsync_latency`."""
        started = time.monotonic()
        try:
            self._fsync(op, local)
        finally:
            self.fsync_latency.add(time.monotonic() - started)

    def _fsync(self, op: Op, local: Callable[[], None]) -> None:
        if self.fenced:
            raise Fenced(E.EIO, self.fenced)
        with self.order:
            sender = self.sender if self.state is not State.ALONE else None
            held = self.held if sender is None else self._gate()
            seq = 0
            if sender is not None:
                try:
                    seq = sender.submit(op)
                    self._unsettled(+1)
                except ChannelError:
                    sender = None
        if sender is None:
            local()
            if held is not None:
                held.wait()  # alone: returns once the daemon released what a break holds
            return
        broke = False
        try:
            started = time.monotonic()
            local()
            # The secondary may take as long as we did, twice over, plus the usual margin: a
            # healthy disk flushing much data is not a lost secondary.
            took = time.monotonic() - started
            limit = sender.ack_timeout + 2 * took
            reply = sender.answered(seq, limit)
            if reply is None:
                if not sender.broken:
                    sender.close(
                        f"the secondary's fsync took more than {limit:.2f} s (ours {took:.2f} s)"
                    )
                broke = True  # alone now: durable here, what may not be there is tracked
            elif reply.ints[0]:
                self.diverged(op, int(reply.ints[0]))
        finally:
            self._unsettled(-1)
        if broke and held is not None:
            held.wait()  # not confirmed by the secondary: the daemon's word decides

    def _gate(self) -> Held | None:
        """Under `order`: what a caller waits on if the channel breaks under it — the writes of
        a ready secondary are held after a break (`hold_on_loss`). The same object becomes
        `held` at the break (see `_lost`)."""
        if not self.hold_on_loss or self.state is not State.READY:
            return None
        if self._next_held is None:
            self._next_held = Held()
        return self._next_held

    def answer_held(self, release: bool) -> None:
        """The daemon's word on the writes held since the last break."""
        with self.order:
            held, self.held = self.held, None
            pending, self._next_held = self._next_held, None
        for h in (held, pending):
            if h is not None and (h is held or not release):
                h.answer(release)

    def _unsettled(self, n: int) -> None:
        with self._settled:
            self._in_flight += n
            if not self._in_flight:
                self._settled.notify_all()

    def settle(self, timeout: float) -> None:
        """Wait until the answer to every operation sent so far has been handled (a failure
        marked). Called under `order`, so that none is sent meanwhile; each wait is bounded
        by the acknowledgement timeout, so this is too."""
        deadline = time.monotonic() + timeout
        with self._settled:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0 or self.sender is None or self.sender.broken:
                    return  # a broken channel: those operations are marked by `_lost`
                self._settled.wait(min(left, 0.05))

    # --- channel events -------------------------------------------------------------------------

    def attach(self, sender: Sender) -> None:
        """A secondary is connected: from now on operations are sent (resynchronising)."""
        sender.on_broken = self._lost
        sender.on_late_error = self.diverged
        with self.order:
            self.sender = sender
            self.state = State.RESYNCING

    def ready(self) -> None:
        """Called under `order` by the resynchronisation once the secondary is identical."""
        self.state = State.READY

    def detach(self, why: str, planned: bool = False) -> None:
        """Close the channel; `planned`: our own orderly stop, the application's operations
        finished — a ready secondary then has everything (the loss event says `complete`)."""
        sender = self.sender
        if sender is not None:
            self._planned = planned
            sender.close(why)  # -> _lost

    def _lost(self, why: str, pending: list[Op]) -> None:
        for op in pending:
            self.tracker.mark(op)
        if self.activity is not None:
            # applied there but maybe not yet durable: a secondary that loses power now may lose
            # them, so the next resynchronisation compares them
            self.tracker.absorb(self.activity)
        with self.order:
            was = self.state
            self.sender = None
            self.state = State.ALONE
            complete = self._planned and was is State.READY and not pending
            self._planned = False
            if was is State.READY and self.hold_on_loss and not complete:
                self.held = self._next_held or Held()
                self._next_held = None
        if was is not State.ALONE:
            self.notify({"event": "alone", "reason": why, "was": was.value, "complete": complete})

    def diverged(self, op: Op, err: int) -> None:
        """The secondary failed to apply `op`: that path differs; send it again later. An
        operation the channel no longer remembers (`LATE_BYTES`) names no path: the tracking
        then compares everything at the next resynchronisation."""
        if op.kind is Kind.ACK:
            self.tracker.reset("")  # a base no secondary has: a full comparison
        self.tracker.mark(op)
        if op.kind in (Kind.WRITE, Kind.TRUNCATE, Kind.FALLOCATE, Kind.FSYNC):
            self.tracker.mark_whole(op.path)
        name = E.errorcode.get(err, str(err))
        if err in FATAL_ERRNOS:
            return  # the secondary leaves by itself; the channel breaks
        if self.state is State.READY:
            self.notify(
                {
                    "event": "diverged",
                    "path": op.path.decode(errors="replace"),
                    "op": op.kind.name,
                    "errno": name,
                }
            )
            self.on_diverged()

    def new_epoch(self, limit: float) -> None:
        """Ask the secondary to make everything durable (SYNCFS, beside its stream); once it
        has, forget the activity regions of the epoch before."""
        with self.order:
            sender = self.sender
            if self.activity is None or sender is None or self.state is State.ALONE:
                return
            try:
                seq = sender.submit(Op(Kind.SYNCFS, 0))
            except ChannelError:
                return
        reply = sender.answered(seq, limit)
        if reply is None or reply.ints[0]:
            return  # slow or failed: keep the regions (a failure makes the secondary leave)
        with self.order:
            if self.sender is sender and self.activity is not None:
                self.activity.rotate(seq, sender.seq)

    def fence(self, why: str) -> None:
        """Refuse every further modification (EIO): nobody supervises replication any more."""
        self.fenced = why


def _under(path: bytes, top: bytes) -> bool:
    return path == top or path.startswith(top + b"/")


def _renamed(path: bytes | None, op: Op) -> bytes | None:
    """The name of `path` after a rename or removal `op` (None: it is gone)."""
    if path is None:
        return None
    if op.kind is not Kind.RENAME:
        return None if _under(path, op.path) else path
    old, new = op.path, op.blobs[1]
    if _under(path, old):
        return new + path[len(old) :]
    if _under(path, new):
        return old + path[len(new) :] if op.ints[0] & RENAME_EXCHANGE else None
    return path
