"""The replication channel: one TCP stream per module from the primary to the secondary.

- Handshake: the secondary sends a random challenge; the primary answers with the module name
  and HMAC(key, challenge | module); the secondary checks it before reading any operation. The
  key is derived from the cluster secret, distinct from the heartbeat and API keys.
- Operations flow in sequence order, pipelined: the primary does not wait for one operation's
  acknowledgement before sending the next; each caller waits for its own.
- Acknowledgement modes: `sync` — the secondary acknowledges an operation once applied, and an
  FSYNC once its data is durable, so an fsync on the primary means the data is on the
  secondary's disk; `semi` — the secondary acknowledges on receipt, before applying.
- A secondary that fails to apply an operation acknowledged in `semi` mode (or any operation in
  `sync` mode) reports the errno; the primary must then treat the secondary as diverged.
- Any silence longer than `ack_timeout` fails every pending operation: the primary continues
  alone (an application write never blocks longer than that).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from hakit.replication.apply import Applier
from hakit.wire.replication import Decoder, FrameError, Kind, Op, ack, encode

CHALLENGE = 32
MAC = 32


class Mode(StrEnum):
    SYNC = "sync"
    SEMI = "semi"


class ChannelError(Exception):
    """The channel is unusable (refused, broken, timed out); the reason says which."""


def channel_key(secret: bytes, cluster: str) -> bytes:
    return hmac.new(secret, b"hakit replication v1|" + cluster.encode(), hashlib.sha256).digest()


def _proof(key: bytes, challenge: bytes, module: str) -> bytes:
    return hmac.new(key, challenge + b"|" + module.encode(), hashlib.sha256).digest()


# --- secondary ---------------------------------------------------------------------------------


@dataclass
class Receiver:
    """Serves one module's replica: authenticates the primary, applies, acknowledges."""

    module: str
    key: bytes
    root_fd: int
    mode: Mode = Mode.SYNC
    on_error: Callable[[Op, int], None] = lambda op, err: None
    applied: int = 0
    last_seq: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            challenge = secrets.token_bytes(CHALLENGE)
            writer.write(challenge)
            await writer.drain()
            hello = await asyncio.wait_for(reader.readexactly(1), 10)
            name = await asyncio.wait_for(reader.readexactly(hello[0]), 10)
            proof = await asyncio.wait_for(reader.readexactly(MAC), 10)
            if name.decode(errors="replace") != self.module or not hmac.compare_digest(
                proof, _proof(self.key, challenge, self.module)
            ):
                writer.write(b"N")
                return
            writer.write(b"Y")
            await writer.drain()
            await self._stream(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, FrameError):
            return
        finally:
            writer.close()

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        applier = Applier(self.root_fd)
        decoder = Decoder()
        while True:
            data = await reader.read(1 << 20)
            if not data:
                return
            for op in decoder.feed(data):
                if op.seq != self.last_seq + 1:
                    raise FrameError(f"sequence {op.seq} after {self.last_seq}")
                self.last_seq = op.seq
                if self.mode is Mode.SEMI:
                    writer.write(encode(ack(op.seq)))
                err = await asyncio.to_thread(applier.apply, op)
                self.applied += 1
                if err:
                    self.on_error(op, err)
                if self.mode is Mode.SYNC:
                    writer.write(encode(ack(op.seq, err)))
            await writer.drain()


# --- primary -----------------------------------------------------------------------------------


@dataclass
class Sender:
    """The primary's end: `await send(op)` returns the secondary's errno for that operation."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    ack_timeout: float = 1.0
    seq: int = 0
    pending: dict[int, asyncio.Future[int]] = field(default_factory=dict)
    broken: str = ""

    @classmethod
    async def connect(
        cls, host: str, port: int, module: str, key: bytes, ack_timeout: float = 1.0
    ) -> Sender:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), ack_timeout
            )
            challenge = await asyncio.wait_for(reader.readexactly(CHALLENGE), ack_timeout)
            name = module.encode()
            writer.write(bytes((len(name),)) + name + _proof(key, challenge, module))
            await writer.drain()
            answer = await asyncio.wait_for(reader.readexactly(1), ack_timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
            raise ChannelError(f"cannot reach the replica at {host}:{port}: {e!r}") from None
        if answer != b"Y":
            writer.close()
            raise ChannelError(
                f"the replica at {host}:{port} refused module {module!r} (wrong secret?)"
            )
        return cls(reader, writer, ack_timeout)

    async def run(self) -> None:
        """Read acknowledgements until the stream ends; then fail whatever is pending."""
        decoder = Decoder()
        try:
            while True:
                data = await self.reader.read(1 << 16)
                if not data:
                    self._fail("the replica closed the connection")
                    return
                for op in decoder.feed(data):
                    if op.kind is not Kind.ACK:
                        raise FrameError(f"unexpected {op.kind.name} from the replica")
                    fut = self.pending.pop(op.seq, None)
                    if fut is not None and not fut.done():
                        fut.set_result(op.ints[0])
        except (ConnectionError, FrameError) as e:
            self._fail(f"replication stream broken: {e!r}")

    def _fail(self, why: str) -> None:
        self.broken = why
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ChannelError(why))
                fut.exception()  # its waiter, if any, gets it; nobody else must be warned
        self.pending.clear()
        self.writer.close()

    async def send(self, op: Op) -> int:
        """Send `op` (its sequence number is assigned here) and wait for its acknowledgement."""
        if self.broken:
            raise ChannelError(self.broken)
        self.seq += 1
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending[self.seq] = fut
        self.writer.write(encode(Op(op.kind, self.seq, op.ints, op.blobs)))

        async def acknowledged() -> int:
            await self.writer.drain()  # back-pressure: a slow replica slows the writer
            return await asyncio.shield(fut)

        try:
            return await asyncio.wait_for(acknowledged(), self.ack_timeout)
        except TimeoutError:  # before OSError: TimeoutError is one
            self._fail(f"no acknowledgement within {self.ack_timeout:g} s")
            raise ChannelError(self.broken) from None
        except OSError as e:
            self._fail(f"replication stream broken: {e!r}")
            raise ChannelError(self.broken) from None

    def close(self) -> None:
        self._fail("closed by the primary")


def open_replica(path: str) -> int:
    """A handle on the replica's root directory, for `Receiver`."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
