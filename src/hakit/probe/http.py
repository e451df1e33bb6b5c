"""One module's health-probe listener: bounded HTTP/1.1, one request per connection.

Before a byte is parsed a connection must fit the limits: at most `connections` open at once
and `per_address` from one address, and at most `rate` answers per second (a token bucket with
a burst of `rate`); any other connection is closed at once. A request must arrive whole — its
head at most `header_bytes` — and its answer be written within `request_time` seconds of the
accept (a slow client, "slowloris", is cut off then). Only `GET` and `HEAD` of the one path are
answered (405, 404 otherwise; 400 or 431 for a malformed or oversized request); every answer
closes the connection. Nothing a client sends can raise out of a connection's task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11

log = logging.getLogger("hakit.probe")


@dataclass(frozen=True)
class Limits:
    connections: int = 64
    per_address: int = 8
    header_bytes: int = 4096
    request_time: float = 2.0
    rate: float = 50.0


Verdict = tuple[int, dict[str, Any]]


@dataclass
class Counters:
    answered: int = 0
    refused: int = 0  # closed at once: beyond the connection or rate limits
    bad: int = 0  # malformed, oversized, wrong method or path
    timed_out: int = 0


@dataclass
class _Bucket:
    rate: float
    tokens: float = 0.0
    at: float = 0.0

    def take(self, now: float) -> bool:
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
           431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}  # fmt: skip


@dataclass
class ProbeListener:
    """Answers `GET path` with `verdict()` (status code, JSON body) on the sockets given to
    `start`."""

    path: str
    verdict: Callable[[], Verdict]
    limits: Limits = field(default_factory=Limits)
    clock: Callable[[], float] = time.monotonic
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        self._servers: list[asyncio.Server] = []
        self._open = 0
        self._per: dict[str, int] = {}
        self._bucket = _Bucket(self.limits.rate, self.limits.rate, self.clock())
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, sockets: list[Any]) -> None:
        for sock in sockets:
            self._servers.append(await asyncio.start_server(self._connection, sock=sock))

    async def close(self) -> None:
        for s in self._servers:
            s.close()
        for t in list(self._tasks):
            t.cancel()
        for s in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.wait_closed(), 1.0)
        self._servers.clear()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        addr = str(peer[0]) if peer else "?"
        lim = self.limits
        if (
            self._open >= lim.connections
            or self._per.get(addr, 0) >= lim.per_address
            or not self._bucket.take(self.clock())
        ):
            self.counters.refused += 1
            writer.transport.abort()
            return
        self._open += 1
        self._per[addr] = self._per.get(addr, 0) + 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            async with asyncio.timeout(lim.request_time):
                await self._exchange(reader, writer)
        except TimeoutError:
            self.counters.timed_out += 1
        except (OSError, ConnectionError, h11.ProtocolError):
            pass  # the client went away or broke the protocol mid-answer
        except Exception:  # never out of this task: the daemon must not notice a client
            log.exception("health probe: unexpected error on a connection from %s", addr)
        finally:
            if task is not None:
                self._tasks.discard(task)
            self._open -= 1
            left = self._per.get(addr, 1) - 1
            if left:
                self._per[addr] = left
            else:
                self._per.pop(addr, None)
            writer.transport.abort()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.header_bytes)
        request: h11.Request | None = None
        seen = 0
        try:
            while request is None:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    if seen > self.limits.header_bytes:  # h11 checks only what is incomplete
                        raise h11.RemoteProtocolError("request head too large", 431)
                    data = await reader.read(self.limits.header_bytes + 1 - seen)
                    seen += len(data)
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    request = event
                else:
                    return  # closed before a request
        except h11.RemoteProtocolError as e:
            self.counters.bad += 1
            code = e.error_status_hint if e.error_status_hint in REASONS else 400
            await self._send(conn, writer, code, {"error": REASONS[code].decode()}, head=False)
            return
        method = request.method
        target = request.target.split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            self.counters.bad += 1
            body = {"error": "only GET and HEAD"}
            await self._send(conn, writer, 405, body, head=False, allow=True)
        elif target != self.path.encode():
            self.counters.bad += 1
            await self._send(conn, writer, 404, {"error": "not found"}, head=method == b"HEAD")
        else:
            code, body = self.verdict()
            self.counters.answered += 1
            await self._send(conn, writer, code, body, head=method == b"HEAD")

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        code: int,
        body: dict[str, Any],
        *,
        head: bool,
        allow: bool = False,
    ) -> None:
        data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
        headers = [
            (b"Content-Type", b"application/json"),
            (b"Content-Length", str(len(data)).encode()),
            (b"Cache-Control", b"no-store"),
            (b"Connection", b"close"),
        ]
        if allow:
            headers.append((b"Allow", b"GET, HEAD"))
        out = conn.send(h11.Response(status_code=code, headers=headers, reason=REASONS[code]))
        if not head:
            out = (out or b"") + (conn.send(h11.Data(data=data)) or b"")
        out = (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
        writer.write(out)
        await writer.drain()
