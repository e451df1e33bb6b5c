"""The replication channel: one TCP stream per module from the primary to the secondary.

Threads, not asyncio: on the primary the callers are libfuse's worker threads, each blocked in
a file operation of the application until its acknowledgement arrives.

- Connection: mutual TLS 1.3 with the cluster's certificates (`hakit.tls`): the primary
  checks that the secondary's certificate names the module's other node, the secondary's
  listener that the primary's does (`listener.py`, with its pre-authentication limits). Inside
  TLS, the primary's hello is the module name (`u8 length | name`); the secondary answers `Y`
  plus one flags byte (`UNCLEAN`: this replica was a primary that stopped without draining,
  so it may hold writes that were never replicated), or `N` for a module it does not serve.
- Operations flow in sequence order, pipelined: the primary does not wait for one operation's
  acknowledgement before sending the next; each caller waits for its own (`submit` then `wait`).
- Acknowledgement modes: `sync` — the secondary acknowledges an operation once applied, and an
  FSYNC once its data is durable, so an fsync on the primary means the data is on the
  secondary's disk; `semi` — the secondary acknowledges on receipt, then applies. An operation
  that fails on the secondary after a `semi` acknowledgement is reported by a second ACK with
  its errno: the primary then knows that path differs.
- Any silence longer than `ack_timeout` while operations wait fails every pending operation
  and breaks the channel: the primary continues alone (an application write never blocks
  longer than that). Queries and durability requests (FSYNC, SYNCFS: handled beside the stream
  in `sync` mode) may take longer; their callers bound their own waits.
"""

from __future__ import annotations

import contextlib
import errno as E
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from hakit.replication.apply import Applier
from hakit.replication.stream import TlsStream
from hakit.wire.replication import (
    DURABILITY,
    QUERIES,
    REPLIES,
    Decoder,
    FrameError,
    Kind,
    Op,
    ack,
    encode,
)

UNCLEAN = 1
FATAL_ERRNOS = frozenset({E.ENOSPC, E.EDQUOT, E.EIO, E.EROFS})
"""Errors of the secondary's disk: the secondary cannot go on and leaves."""


class Mode(StrEnum):
    SYNC = "sync"
    SEMI = "semi"


class ChannelError(Exception):
    """The channel is unusable (refused, broken, timed out); the reason says which."""


class Stream(Protocol):
    """What the channel needs of a connection (a `TlsStream`; a plain socket in tests)."""

    def recv(self, n: int, /) -> bytes: ...
    def sendall(self, data: bytes, /) -> None: ...
    def settimeout(self, timeout: float | None, /) -> None: ...
    def shutdown(self, how: int, /) -> None: ...
    def close(self) -> None: ...


def hello(module: str) -> bytes:
    name = module.encode()
    if not 0 < len(name) < 256:
        raise ValueError(f"module name {module!r} cannot be sent")
    return bytes((len(name),)) + name


def read_hello(sock: Stream, deadline: float) -> str:
    """The module name the primary asks for, before `deadline` (monotonic)."""
    n = _recv_exactly(sock, 1, deadline)[0]
    name = _recv_exactly(sock, n, deadline)
    try:
        return name.decode()
    except UnicodeDecodeError:
        raise ChannelError(f"module name {name!r} is not UTF-8") from None


def _recv_exactly(sock: Stream, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("handshake not done in time")
        sock.settimeout(left)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed during the handshake")
        buf += chunk
    return bytes(buf)


# --- secondary ---------------------------------------------------------------------------------


Answer = Callable[[Op], Op]
"""Answers a query (LIST, SUMS) with its reply frame."""


@dataclass
class Receiver:
    """Serves one module's replica on one connection: authenticates, applies, acknowledges."""

    module: str
    applier: Applier
    mode: Mode = Mode.SYNC
    answer: Answer = lambda op: ack(op.seq, E.EINVAL)
    on_error: Callable[[Op, int], None] = lambda op, err: None
    on_done: Callable[[], None] = lambda: None
    on_progress: Callable[[bytes], None] = lambda blob: None
    unclean: bool = False
    applied: int = 0
    received_bytes: int = 0  # of the stream (metrics)
    last_seq: int = 0
    fatal: str = ""  # why the replica gave up (disk full, I/O error)

    def welcome(self, sock: Stream, module: str) -> bool:
        """Answer an authenticated primary's hello: `Y` and the flags, or `N` (another
        module's primary, e.g. two modules configured with one port)."""
        if module != self.module:
            sock.sendall(b"N")
            return False
        sock.sendall(b"Y" + bytes((UNCLEAN if self.unclean else 0,)))
        return True

    def serve(self, sock: Stream, stop: threading.Event) -> None:
        """Apply the stream until it ends, `stop` is set or the replica fails (`fatal`).

        Queries are answered by another thread, beside the stream: a long listing must not
        hold up the acknowledgements of the application's writes (resynchronisation copes with
        an answer computed while later operations are applied)."""
        decoder = Decoder()
        sock.settimeout(0.2)
        self._sock_lock = threading.Lock()
        self._queries: list[Op] = []
        self._query_ready = threading.Condition()
        worker = threading.Thread(
            target=self._answer_queries, args=(sock, stop), name="replica-queries", daemon=True
        )
        worker.start()
        self._durable: list[Op] = []
        self._durable_ready = threading.Condition()
        flusher = threading.Thread(
            target=self._make_durable, args=(sock,), name="replica-fsync", daemon=True
        )
        flusher.start()
        try:
            while not stop.is_set() and not self.fatal:
                try:
                    data = sock.recv(1 << 20)
                except TimeoutError:
                    continue
                if not data:
                    return
                self.received_bytes += len(data)
                out: list[bytes] = []
                for op in decoder.feed(data):
                    out += self._one(op)
                    if self.fatal:
                        break
                if out:
                    with self._sock_lock:
                        sock.sendall(b"".join(out))
        finally:
            with self._query_ready:
                self._queries.append(Op(Kind.DONE, 0))  # tells the worker to end
                self._query_ready.notify()
            with self._durable_ready:
                self._durable.append(Op(Kind.DONE, 0))
                self._durable_ready.notify()
            worker.join(timeout=5)
            flusher.join(timeout=30)

    def _make_durable(self, sock: Stream) -> None:
        """FSYNC and SYNCFS, in order, beside the stream: whatever was applied before one was
        handed over is durable when it is acknowledged."""
        while True:
            with self._durable_ready:
                while not self._durable:
                    self._durable_ready.wait()
                op = self._durable.pop(0)
            if op.kind is Kind.DONE:
                return
            err = self.applier.make_durable(op)
            self.applied += 1
            if err:
                self.on_error(op, err)
                if err in FATAL_ERRNOS:
                    self.fatal = f"{op.kind.name} {op.path!r}: {E.errorcode.get(err, err)}"
            try:
                with self._sock_lock:
                    sock.sendall(encode(ack(op.seq, err)))
            except OSError:
                return

    def _answer_queries(self, sock: Stream, stop: threading.Event) -> None:
        while True:
            with self._query_ready:
                while not self._queries:
                    self._query_ready.wait()
                op = self._queries.pop(0)
            if op.kind is Kind.DONE or stop.is_set():
                return
            reply = encode(self.answer(op))
            try:
                with self._sock_lock:
                    sock.sendall(reply)
            except OSError:
                return

    def _one(self, op: Op) -> list[bytes]:
        if op.seq != self.last_seq + 1:
            raise FrameError(f"sequence {op.seq} after {self.last_seq}")
        self.last_seq = op.seq
        if op.kind in QUERIES:
            with self._query_ready:
                self._queries.append(op)
                self._query_ready.notify()
            return []
        if op.kind is Kind.DONE:
            self.on_done()
            return [encode(ack(op.seq))]
        if op.kind is Kind.PROGRESS:
            self.on_progress(op.blobs[0])
            return [encode(ack(op.seq))]
        if op.kind in DURABILITY and (self.mode is Mode.SYNC or op.kind is Kind.SYNCFS):
            with self._durable_ready:
                self._durable.append(op)
                self._durable_ready.notify()
            return []
        out = [encode(ack(op.seq))] if self.mode is Mode.SEMI else []
        err = self.applier.apply(op)
        self.applied += 1
        if err:
            self.on_error(op, err)
            if err in FATAL_ERRNOS:
                self.fatal = f"{op.kind.name} {op.path!r}: {E.errorcode.get(err, err)}"
            if self.mode is Mode.SEMI:
                out.append(encode(ack(op.seq, err)))  # a second ACK: applied with an error
        if self.mode is Mode.SYNC:
            out.append(encode(ack(op.seq, err)))
        return out


# --- primary -----------------------------------------------------------------------------------


LATE_OPS = 4096
LATE_BYTES = 64 << 20
"""At most this many operations acknowledged on receipt (`semi`), and this many bytes of their
payloads, are kept to name the path of a late error; an error for one forgotten is reported
without it (the resynchronisation after the next reconnection compares everything)."""


@dataclass
class Sender:
    """The primary's end, shared by many threads.

    `submit(op)` assigns the sequence number and sends (callers serialise it with the order
    in which they applied the operation locally); `wait(seq)` returns the secondary's errno, or
    the reply frame for a query. Late errors (a second ACK in `semi` mode) go to `on_late_error`.
    """

    sock: Stream
    ack_timeout: float = 1.0
    unclean_peer: bool = False
    on_late_error: Callable[[Op, int], None] = lambda op, err: None
    on_broken: Callable[[str, list[Op]], None] = lambda why, pending: None
    semi: bool = False  # the replica acknowledges on receipt: remember what a late error names
    seq: int = 0
    broken: str = ""
    sent_ops: int = 0  # operations sent (metrics)
    sent_bytes: int = 0  # bytes of their frames
    _inflight: dict[int, Op] = field(default_factory=dict)
    _replies: dict[int, Op] = field(default_factory=dict)
    _done: set[int] = field(default_factory=set)
    _late: dict[int, Op] = field(default_factory=dict)  # acknowledged in semi mode, not applied
    _late_bytes: int = 0  # their payloads
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _send_lock: threading.Lock = field(default_factory=threading.Lock)
    _last_heard: float = field(default_factory=time.monotonic)

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        module: str,
        ctx: ssl.SSLContext,
        server_name: str,
        ack_timeout: float = 1.0,
    ) -> Sender:
        """Reach the replica over mutual TLS (`ctx`: `hakit.tls.client_context`); its
        certificate must name `server_name` (the module's other node)."""
        deadline = time.monotonic() + max(ack_timeout, 3.0)
        try:
            sock = socket.create_connection((host, port), timeout=max(ack_timeout, 1.0))
        except OSError as e:
            raise ChannelError(f"cannot reach the replica at {host}:{port}: {e!r}") from None
        stream = TlsStream(sock, ctx, server_side=False, server_hostname=server_name)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stream.handshake(deadline)
            stream.sendall(hello(module))
            answer = _recv_exactly(stream, 1, deadline)
            flags = _recv_exactly(stream, 1, deadline)[0] if answer == b"Y" else 0
        except ssl.SSLCertVerificationError as e:
            stream.close()
            raise ChannelError(
                f"the replica at {host}:{port} is not {server_name}: {e.verify_message}"
            ) from None
        except ssl.SSLError as e:
            stream.close()
            why = str(e.reason or e)
            raise ChannelError(
                f"the replica at {host}:{port} refused our certificate ({why}): another "
                "cluster secret?"
                if "ALERT" in why
                else f"no TLS session with the replica at {host}:{port} ({why}): not a hakit "
                "replication port, or an older hakit?"
            ) from None
        except OSError as e:  # includes TimeoutError and ConnectionError
            stream.close()
            raise ChannelError(f"cannot reach the replica at {host}:{port}: {e!r}") from None
        if answer != b"Y":
            stream.close()
            raise ChannelError(f"the replica at {host}:{port} does not serve module {module!r}")
        stream.settimeout(ack_timeout)  # bounds a send blocked by a full socket buffer
        s = cls(stream, ack_timeout, unclean_peer=bool(flags & UNCLEAN))
        threading.Thread(target=s._read, name="replication-acks", daemon=True).start()
        return s

    def _read(self) -> None:
        decoder = Decoder()
        why = "the replica closed the connection"
        try:
            while not self.broken:
                try:
                    data = self.sock.recv(1 << 16)
                except TimeoutError:
                    if self._silent():
                        why = f"no acknowledgement within {self.ack_timeout:g} s"
                        break
                    continue
                if not data:
                    break
                ops = decoder.feed(data)
                with self._cond:
                    self._last_heard = time.monotonic()
                    for op in ops:
                        self._reply(op)
                    self._cond.notify_all()
        except (OSError, FrameError) as e:
            why = f"replication stream broken: {e!r}"
        self._fail(why)

    def _silent(self) -> bool:
        """Operations wait and the replica said nothing for `ack_timeout` (queries may take
        longer: the replica answers them beside the stream)."""
        with self._cond:
            waiting = any(
                op.kind not in QUERIES and op.kind not in DURABILITY
                for op in self._inflight.values()
            )
            return waiting and time.monotonic() - self._last_heard > self.ack_timeout

    def _reply(self, op: Op) -> None:
        if op.kind not in REPLIES:
            raise FrameError(f"unexpected {op.kind.name} from the replica")
        sent = self._inflight.pop(op.seq, None)
        if sent is None:
            if op.kind is Kind.ACK and op.ints[0]:
                self.on_late_error(self._late.get(op.seq, Op(Kind.ACK, op.seq)), op.ints[0])
            return
        if self.semi and op.kind is Kind.ACK and op.ints[0] == 0 and sent.kind not in QUERIES:
            self._late[op.seq] = sent  # a second ACK may report a failure
            self._late_bytes += sent.size
            while len(self._late) > LATE_OPS or self._late_bytes > LATE_BYTES:
                self._late_bytes -= self._late.pop(next(iter(self._late))).size
        self._replies[op.seq] = op
        self._done.add(op.seq)

    def _fail(self, why: str, inline: bool = True) -> None:
        """Break the channel. A caller that may hold the replicator's order lock (which
        `on_broken` takes) passes `inline=False`: the channel is broken at once, and what
        follows runs in another thread."""
        with self._cond:
            if self.broken:
                return
            self.broken = why
            pending = list(self._inflight.values())
            self._inflight.clear()
            self._cond.notify_all()
        if inline:
            self._broken(why, pending)
        else:
            threading.Thread(target=self._broken, args=(why, pending), daemon=True).start()

    def _broken(self, why: str, pending: list[Op]) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.on_broken(why, pending)

    def submit(self, op: Op) -> int:
        """Send `op` (its sequence number is assigned here); the number to `wait` for."""
        with self._send_lock:
            if self.broken:
                raise ChannelError(self.broken)
            self.seq += 1
            seq = self.seq
            frame = Op(op.kind, seq, op.ints, op.blobs)
            with self._cond:
                if not self._inflight:
                    self._last_heard = time.monotonic()
                self._inflight[seq] = frame
            data = encode(frame)
            try:
                self.sock.sendall(data)
            except OSError as e:  # a full buffer for ack_timeout, or a reset
                reason = (
                    f"the replica did not read for {self.ack_timeout:g} s"
                    if isinstance(e, TimeoutError)
                    else f"replication stream broken: {e!r}"
                )
                self._fail(reason, inline=False)
                raise ChannelError(reason) from None
            self.sent_ops += 1
            self.sent_bytes += len(data)
        return seq

    def backlog(self) -> tuple[int, float]:
        """The operations waiting for the replica's answer, and for how long the replica has
        been silent while they wait (0 when none wait): the replication's lag."""
        with self._cond:
            n = len(self._inflight)
            return n, (max(0.0, time.monotonic() - self._last_heard) if n else 0.0)

    def wait(self, seq: int) -> Op:
        """The reply to `seq` (an ACK with its errno, or a query's answer) within the
        acknowledgement timeout; otherwise the channel is broken (`ChannelError`)."""
        return self._expect(
            seq, self.ack_timeout, f"no acknowledgement within {self.ack_timeout:g} s"
        )

    def _expect(self, seq: int, timeout: float, why: str) -> Op:
        reply = self.answered(seq, timeout)
        if reply is not None:
            return reply
        if not self.broken:
            self._fail(why, inline=False)
        raise ChannelError(self.broken or why)

    def answered(self, seq: int, timeout: float) -> Op | None:
        """The reply to `seq` if it comes within `timeout`, else None. Never breaks the
        channel itself (breaking calls back into the replicator, which takes its order lock):
        for callers that hold that lock. The reader breaks a silent channel anyway."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while seq not in self._done:
                left = deadline - time.monotonic()
                if self.broken or left <= 0:
                    return None
                self._cond.wait(left)
            self._done.discard(seq)
            return self._replies.pop(seq)

    def send(self, op: Op) -> int:
        """Submit and wait: the secondary's errno for `op`."""
        reply = self.wait(self.submit(op))
        return int(reply.ints[0])

    def query(self, op: Op, timeout: float = 60.0) -> Op:
        """A query whose answer may take long to compute (a listing, checksums)."""
        seq = self.submit(op)
        return self._expect(seq, timeout, f"no answer to {op.kind.name} within {timeout:g} s")

    def close(self, why: str = "closed by the primary") -> None:
        self._fail(why)
