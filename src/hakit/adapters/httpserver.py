"""uvicorn behind our own bounded accept loop: the HTTPS servers of the node API and the console.

`BoundedTlsServer` serves the sockets its owner bound. Each accepted connection takes a slot of
an `Admission` (per source address and in all; beyond them it is closed at once), then goes
through a TLS handshake of at most `handshake_timeout` seconds (asyncio's default is 60 s and
uvicorn does not expose it) before uvicorn's HTTP protocol sees a byte. The node API gives the
slot back once the handshake is over (its clients then authenticate by certificate); the
console (`hold_slots`) keeps it for the whole connection, so the bounds count open
connections, and its protocol (`BoundedH11`) also bounds the time a request head may take.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from hakit.adapters.tcp import Admission, accept_bounded

__all__ = [
    "BoundedH11",
    "BoundedTlsServer",
    "QuietServer",
    "read_body",
    "refusal_status",
    "replay",
    "uvicorn_config",
]


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the program owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_config(
    app: Any, tls: ssl.SSLContext | None = None, http: Any = "h11", **options: Any
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_config=None,
        lifespan="off",
        access_log=False,
        loop="asyncio",
        http=http,
        ssl_context_factory=None if tls is None else lambda _config, _default: tls,
        **options,
    )


class BoundedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on every request head (`head_timeout` s from
    the connection's start or the end of the previous answer; uvicorn has none: a client
    trickling one byte a second would hold its connection for ever) and a hook run once when
    the connection is gone (`release`, which gives its admission slot back)."""

    head_timeout = 10.0
    release: Callable[[], None] | None = None
    _lost = False
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()  # the head is complete (or the connection is over)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        try:
            super().connection_lost(exc)
        finally:
            self._lost = True
            self.give_back()

    def give_back(self) -> None:
        if self._lost and self.release is not None:
            release, self.release = self.release, None
            release()


class BoundedTlsServer(QuietServer):
    """uvicorn on sockets bound by its owner, behind `accept_bounded` (see the module's doc)."""

    handshake_timeout = 5.0  # seconds from the accept to the end of the TLS handshake
    per_address = 16  # connections of one address (in their handshake, or open: hold_slots)
    total = 128  # all connections (idem)
    hold_slots = False  # keep a connection's slot until it closes (protocol: BoundedH11)
    what = "API"  # how the log names this server
    log = logging.getLogger("hakit")

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        assert sockets, "a bounded server serves the sockets its owner bound"
        await self.lifespan.startup()
        self.servers = []
        self._admission = Admission(self.per_address, self.total)
        self._handshakes: set[asyncio.Task[None]] = set()
        self._accepting = [asyncio.create_task(self._accept(sock)) for sock in sockets]
        self.started = True

    def _protocol(self) -> asyncio.Protocol:
        config = self.config
        return config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=self.server_state, app_state=self.lifespan.state
        )

    async def _accept(self, sock: socket.socket) -> None:
        await accept_bounded(sock, self._admission, self._start_handshake, self.log, self.what)

    def _start_handshake(self, conn: socket.socket, addr: str) -> None:
        task = asyncio.get_running_loop().create_task(self._handshake(conn, addr))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket, addr: str) -> None:
        loop = asyncio.get_running_loop()
        held = False
        try:
            _transport, protocol = await loop.connect_accepted_socket(
                self._protocol,
                conn,
                ssl=self.config.ssl,
                ssl_handshake_timeout=self.handshake_timeout if self.config.ssl else None,
            )
            if self.hold_slots and isinstance(protocol, BoundedH11):
                protocol.release = lambda: self._admission.give_back(addr)
                held = True
                protocol.give_back()  # if it is already gone
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            conn.close()
        finally:
            if not held:
                self._admission.give_back(addr)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for t in [*getattr(self, "_accepting", []), *getattr(self, "_handshakes", ())]:
            t.cancel()
        await super().shutdown(sockets)


async def read_body(receive: Any, headers: dict[str, str], limit: int) -> bytes | str | None:
    """An ASGI request's body, bounded: the bytes, or why it is refused (a `Content-Length`
    over `limit` is refused before a byte is read, a body that passes it as soon as it does),
    or None if the client went away. The caller answers the refusal (400/413)."""
    length = headers.get("content-length", "0")
    if not (length.isascii() and length.isdigit()):
        return "malformed content-length header"
    if int(length) > limit:
        return f"body of {length} bytes, limit {limit}"
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            return None
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            return f"body over the limit of {limit} bytes"
        chunks.append(chunk)
        if not msg.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes, receive: Any) -> Any:
    """An ASGI `receive` that gives the application `body` (already read), then waits for
    the client's disconnect."""
    sent = False

    async def again() -> Any:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


def refusal_status(why: str) -> int:
    return 400 if why.startswith("malformed") else 413
