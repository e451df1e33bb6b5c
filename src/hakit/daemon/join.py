"""The join listener: admits a new node with a one-time token (`hakit cluster join`).

It exists only while a token made on this node by `hakit cluster add-node` is outstanding: the
first token opens it on `api.join_port` of each of the node's cluster addresses, and it closes
when no token can be used any more (used, expired, revoked). A connection gets a TLS 1.3
handshake with this node's certificate, then this node's greeting with the cluster CA — the
joiner checks both against the CA fingerprint of its token before it sends the token —, then
one request line; a valid token is answered with `cluster.yaml` and the secret, and burnt.

Before a token is checked, everything is bounded: at most 4 connections of one address and 32
in all at once (more are closed at accept), 5 s for the TLS handshake and 10 s for the whole
exchange, a request of 512 bytes; wrong tokens throttle their address and, past a total,
revoke every outstanding token (`core.jointoken`). See docs/security.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from hakit.adapters.tcp import Admission, accept_bounded, listen
from hakit.config.load import ClusterFile, load_cluster_text, read_text
from hakit.core import jointoken as jt
from hakit.daemon.logs import LOGGER, Event
from hakit.errors import ConfigError, HakitError
from hakit.paths import Paths
from hakit.tls import ca_fingerprint, identity, join_server_context
from hakit.wire import join as wire

log = logging.getLogger(LOGGER + ".join")

HANDSHAKE_TIMEOUT = 5.0
EXCHANGE_TIMEOUT = 10.0
PENDING_PER_ADDRESS = 4
PENDING_TOTAL = 32


class JoinError(HakitError):
    exit_code = 1


class JoinService:
    """The tokens of this node (hashed, in memory only: a daemon restart voids them) and the
    listener they open."""

    def __init__(
        self,
        paths: Paths,
        cluster: Callable[[], ClusterFile],
        local: str,
        record: Callable[[Event], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.paths = paths
        self.cluster = cluster
        self.local = local
        self.record = record
        self.clock = clock
        self.book = jt.Book()
        self._socks: list[socket.socket] = []
        self._opened = asyncio.Event()
        self._changed = asyncio.Event()
        self._admission = Admission(PENDING_PER_ADDRESS, PENDING_TOTAL)

    def _event(self, kind: str, message: str) -> None:
        self.record(Event(self.clock(), self.local, kind, message))

    @property
    def listening(self) -> list[str]:
        out = []
        for s in self._socks:
            host, port = s.getsockname()[:2]
            out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return out

    def joining(self) -> list[str]:
        """Nodes with a token outstanding here: admitted, not joined yet."""
        return sorted({e.node for e in self.book.outstanding(self.clock())})

    def issue(self, node: str, ttl: float) -> dict[str, Any]:
        """A new token for `node` (which must be in the cluster), the listener opened."""
        cf = self.cluster()
        cfg = cf.config
        try:  # the file the joiner will receive (it may have changes taken at the next restart)
            on_disk = load_cluster_text(read_text(self.paths.cluster_config), cf.path).config
        except ConfigError as e:
            raise JoinError(f"no token made: {e}") from None
        if node not in on_disk.nodes:
            raise JoinError(
                f"node {node} is not in the cluster: `hakit cluster add-node "
                f"{node}:NETWORK=ADDRESS` adds it and makes its token"
            )
        if node == self.local:
            raise JoinError(f"{node} is this node: a token admits another one")
        ca_hash = ca_fingerprint(identity(cf.secret, cfg.cluster, self.local).ca_pem)
        token = jt.make_token(secrets.token_bytes(jt.RANDOM_BYTES), ca_hash)
        now = self.clock()
        try:
            book = jt.issue(self.book, token, node, now, ttl)
        except ValueError as e:
            raise JoinError(str(e)) from None
        if not self._socks:
            self._open(cf)
        self.book = book
        self._changed.set()
        expires = now + ttl
        self._event(
            "join-token",
            f"join token {token.id} made for {node}, valid until "
            f"{time.strftime('%H:%M:%S', time.localtime(expires))}; join listener on "
            f"{', '.join(self.listening)}",
        )
        return {
            "token": str(token),
            "id": token.id,
            "node": node,
            "expires": expires,
            "ttl": ttl,
            "ca_hash": ca_hash,
            "listening": self.listening,
        }

    def _open(self, cf: ClusterFile) -> None:
        cfg = cf.config
        port = cfg.api.join_port
        errors = []
        for addr in (str(a) for a in cfg.nodes[self.local].addresses.values()):
            try:
                self._socks.append(listen(addr, port, backlog=PENDING_TOTAL))
            except OSError as e:
                errors.append(f"{addr}:{port}: {e.strerror or e}")
        if errors:
            self._event("join-error", "join listener cannot listen on " + "; ".join(errors))
        if not self._socks:
            raise JoinError(
                "no token made: the join listener cannot listen on any address of "
                f"{self.local} ({'; '.join(errors)})"
            )
        self._ctx = join_server_context(identity(cf.secret, cfg.cluster, self.local))
        self._opened.set()

    async def run(self) -> None:
        """Serve while tokens are outstanding; between them, hold no socket."""
        while True:
            await self._opened.wait()
            try:
                while True:
                    async with asyncio.TaskGroup() as tg:
                        accepting = [tg.create_task(self._accept(s, tg)) for s in self._socks]
                        await self._until_closed()
                        for t in accepting:
                            t.cancel()
                    # connections still in their exchange have ended; a token made meanwhile
                    # keeps the sockets (no await between this check and their closing)
                    if not self.book.is_open(self.clock()):
                        break
            finally:
                for s in self._socks:
                    s.close()
                self._socks = []
                self._opened.clear()
            self._event("join-closed", "join listener closed: no join token outstanding")

    async def _until_closed(self) -> None:
        while True:
            now = self.clock()
            if not self.book.is_open(now):
                return
            nxt = self.book.next_expiry(now)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                wait = max(0.05, (nxt or now + 60) - now)
                await asyncio.wait_for(self._changed.wait(), wait)

    async def _accept(self, sock: socket.socket, tg: asyncio.TaskGroup) -> None:
        def start(conn: socket.socket, addr: str) -> None:
            tg.create_task(self._guarded(conn, addr))

        await accept_bounded(sock, self._admission, start, log, "join listener")

    async def _guarded(self, conn: socket.socket, addr: str) -> None:
        try:
            async with asyncio.timeout(EXCHANGE_TIMEOUT):
                await self._exchange(conn, addr)
        except (OSError, ssl.SSLError, TimeoutError, ValueError, wire.JoinProtocolError) as e:
            log.info("join listener: connection from %s ended: %s", addr, e or type(e).__name__)
        finally:
            self._admission.give_back(addr)

    async def _exchange(self, conn: socket.socket, addr: str) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=wire.REQUEST_LIMIT)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=self._ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except BaseException:
            conn.close()  # never handed over (a transport that took it closes it itself)
            raise
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        try:
            cf = self.cluster()
            ca = identity(cf.secret, cf.config.cluster, self.local).ca_pem
            writer.write(wire.hello(cf.config.cluster, self.local, ca))
            await writer.drain()
            line = await reader.readline()  # ValueError past the limit
            credential = wire.decode_request(line.rstrip(b"\n"))
            writer.write(self._answer(credential, addr))
            await writer.drain()
        finally:
            self._changed.set()  # a token may be spent: the listener may close now
            writer.close()  # the transport closes the socket, once unregistered
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    def _answer(self, credential: str, addr: str) -> bytes:
        book, outcome = jt.redeem(self.book, credential, addr, self.clock())
        self.book = book
        if isinstance(outcome, jt.Denied):
            self._event("join-refused", f"join refused to {addr}: {outcome.reason}")
            return wire.refused(outcome.reason)
        path = self.paths.cluster_config
        try:
            text = read_text(path)
            cf = load_cluster_text(text, path)
        except ConfigError as e:
            self._event("join-refused", f"join of {outcome.node} from {addr} failed: {e}")
            return wire.refused(f"{self.local} cannot read its configuration: {e}")
        if outcome.node not in cf.config.nodes:
            why = f"{outcome.node} is not in {path} any more (removed since its token was made)"
            self._event("join-refused", f"join refused to {addr}: {why}")
            return wire.refused(why)
        self._event(
            "node-joined",
            f"{outcome.node} joined from {addr} with token {outcome.token}: it received "
            f"{path.name} and the secret",
        )
        return wire.admitted(outcome.node, text, cf.secret)
