"""The secondary's replication port: who may open a session, and what the others cost it.

A connection is accepted only from one of the peer's configured addresses (the module's other
node, on any of its networks); anything else is closed at once. Then, within `Limits.deadline`
seconds from the accept, it must complete a mutual TLS 1.3 handshake with a certificate of the
cluster's CA naming the module's other node, and send its hello (the module's name); only
then is it handed to the session callback. Each unauthenticated connection has its own
thread, so a slow or silent one never delays the others; at most `Limits.pending` wait at
once, and a new one beyond that closes the oldest (which has had the longest time to prove
itself). Refusals are reported at most once per `Limits.report_every` seconds, with a count,
so a flood cannot flood the log either.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hakit.replication.channel import ChannelError, read_hello
from hakit.replication.stream import TlsStream
from hakit.tls import peer_node


@dataclass(frozen=True)
class Limits:
    deadline: float = 3.0  # accept -> TLS handshake -> hello, in seconds
    pending: int = 16  # unauthenticated connections at once
    backlog: int = 128  # the kernel's queue of connections not accepted yet
    report_every: float = 10.0  # at most one refusal report per this many seconds
    dead_after: float = 8.0  # an accepted primary silent (no TCP ack) this long is gone


Session = Callable[[TlsStream, str, str], None]
"""Serves an authenticated connection: (stream, peer address, module name in the hello)."""
Refused = Callable[[str, str, int], None]
"""(peer address, reason, number of connections refused since the last report)."""


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class Listener:
    def __init__(
        self,
        address: tuple[str, int],
        ctx: ssl.SSLContext,
        cluster: str,
        peer: str,
        peer_addresses: Iterable[str],
        on_session: Session,
        on_refused: Refused,
        limits: Limits = Limits(),
    ) -> None:
        self.ctx = ctx
        self.cluster = cluster
        self.peer = peer
        self.allowed = frozenset(_address(a) for a in peer_addresses)
        self.on_session = on_session
        self.on_refused = on_refused
        self.limits = limits
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind(address)
            self.sock.listen(limits.backlog)
        except OSError:
            self.sock.close()
            raise
        self.sock.settimeout(0.2)
        self._lock = threading.Lock()
        self._pending: dict[socket.socket, float] = {}  # unauthenticated -> accepted at
        self._threads: set[threading.Thread] = set()
        self._refusals = 0
        self._reported = -limits.report_every

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def serve(self, stop: threading.Event) -> None:
        """Accept until `stop` is set or the listener is closed; then wait for the
        connections it started (sessions end when `stop` is set)."""
        try:
            while not stop.is_set():
                try:
                    conn, peer = self.sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                self._admit(conn, str(peer[0]))
        finally:
            with self._lock:
                pending, threads = list(self._pending), list(self._threads)
            for conn in pending:
                _cut(conn)
            for t in threads:
                t.join(timeout=10)

    def close(self) -> None:
        self.sock.close()

    def _admit(self, conn: socket.socket, addr: str) -> None:
        try:
            allowed = _address(addr) in self.allowed
        except ValueError:
            allowed = False
        if not allowed:
            conn.close()
            self._refuse(addr, f"{addr} is not an address of {self.peer}")
            return
        keepalive(conn, self.limits.dead_after)
        with self._lock:
            if len(self._pending) >= self.limits.pending:
                # its thread sees the end of the stream and closes it (under the lock: one
                # that has just authenticated is no longer pending and is never cut)
                oldest = min(self._pending, key=self._pending.__getitem__)
                del self._pending[oldest]
                _cut(oldest)
            self._pending[conn] = time.monotonic()
            t = threading.Thread(
                target=self._authenticate, args=(conn, addr), name="replica-hello", daemon=True
            )
            self._threads.add(t)
        t.start()

    def _authenticate(self, conn: socket.socket, addr: str) -> None:
        try:
            session = self._hello(conn, addr)
            if session is not None:
                try:
                    self.on_session(*session)
                finally:
                    session[0].close()  # the listener owns every connection it accepted
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _hello(self, conn: socket.socket, addr: str) -> tuple[TlsStream, str, str] | None:
        deadline = time.monotonic() + self.limits.deadline
        stream = TlsStream(conn, self.ctx, server_side=True)
        try:
            try:
                stream.handshake(deadline)
                node = peer_node(stream.getpeercert(), self.cluster, [self.peer])
                if node != self.peer:
                    raise ChannelError(f"its certificate does not name {self.peer}")
                module = read_hello(stream, deadline)
            finally:
                with self._lock:
                    self._pending.pop(conn, None)
        except TimeoutError:
            reason = f"not authenticated within {self.limits.deadline:g} s"
        except ssl.SSLError as e:
            reason = f"TLS refused: {e.reason or e}"
        except (OSError, ChannelError) as e:
            reason = f"handshake failed: {e}"
        else:
            conn.settimeout(None)
            return stream, addr, module
        stream.close()
        self._refuse(addr, reason)
        return None

    def _refuse(self, addr: str, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._refusals += 1
            if now - self._reported < self.limits.report_every:
                return
            count, self._refusals, self._reported = self._refusals, 0, now
        self.on_refused(addr, reason, count)


def keepalive(conn: socket.socket, dead_after: float) -> None:
    """End a connection whose peer vanished (power cut, cable) without closing it: TCP
    keepalive probes when idle, and a user timeout when what we sent stays unacknowledged."""
    idle = max(1, int(dead_after / 2))
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, max(1, int(dead_after) - idle))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(dead_after * 1000))


def _cut(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
