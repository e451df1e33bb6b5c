"""The replication port against an attacker, on real loopback sockets (issue 12, findings 3, 4).

Mutual TLS with the cluster's certificates: a replica without the cluster's key (or with
another node's name) never receives an operation and cannot acknowledge one; a primary without
the key is refused before it can send one. Before authentication a connection costs the
secondary little and for a short time: idle and garbage connections do not keep the real
primary out, connections from other addresses are closed at once, the oldest unauthenticated
connection makes room for a new one.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hakit.replication.apply import Applier
from hakit.replication.channel import ChannelError, Mode, Receiver, Sender
from hakit.replication.listener import Limits, Listener, keepalive
from hakit.replication.stream import TlsStream
from hakit.tls import NodeIdentity, client_context, identity, server_context
from hakit.wire.replication import Decoder, Kind, Op, ack, encode

SECRET = b"s" * 32
OTHER = b"o" * 32  # another cluster's secret: what an attacker without the key can have
NODE1 = identity(SECRET, "demo", "node1")  # the primary
NODE2 = identity(SECRET, "demo", "node2")  # the secondary
WRITE = Op(Kind.WRITE, 0, (0,), (b"0/f", b"secret data"))


def until(cond: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def connect(
    port: int, ident: NodeIdentity = NODE1, ack_timeout: float = 2.0, trusting: bool = False
) -> Sender:
    """As node1 with `ident`'s certificate (`trusting`: as an attacker that accepts any
    server, so that the secondary's own check is what refuses it)."""
    ctx = client_context(ident)
    if trusting:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return Sender.connect("127.0.0.1", port, "web", ctx, ident.server_name("node2"), ack_timeout)


@contextmanager
def server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A listener on loopback that runs `handle` on its first connection; its port."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(10)

    def run() -> None:
        with contextlib.suppress(OSError):
            conn, _ = sock.accept()
            with conn:
                conn.settimeout(10)
                handle(conn)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()
        t.join(15)


class Secondary:
    """node2's real replication port and replica; what reached it."""

    def __init__(self, tmp_path: Path, limits: Limits) -> None:
        root = tmp_path / "replica"
        root.mkdir()
        self.root = root
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self.receiver = Receiver("web", Applier([self.fd]), Mode.SYNC)
        self.sessions: list[str] = []
        self.refused: list[tuple[str, str]] = []
        self.stop = threading.Event()
        self.listener = Listener(
            ("127.0.0.1", 0),
            server_context(NODE2),
            "demo",
            "node1",
            ["127.0.0.1"],
            self._session,
            lambda peer, why, n: self.refused.append((peer, why)),
            limits,
        )
        self.thread = threading.Thread(target=self.listener.serve, args=(self.stop,))
        self.thread.start()

    def _session(self, conn: TlsStream, peer: str, module: str) -> None:
        self.sessions.append(peer)
        if self.receiver.welcome(conn, module):
            self.receiver.serve(conn, self.stop)

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(15)
        self.receiver.applier.forget()
        os.close(self.fd)


@pytest.fixture
def secondary(tmp_path: Path) -> Iterator[Secondary]:
    s = Secondary(tmp_path, Limits(report_every=0.0))
    try:
        yield s
    finally:
        s.close()


# --- finding 4: the primary authenticates the secondary -----------------------------------------


def test_a_replica_speaking_the_old_handshake_gets_no_write_and_cannot_acknowledge() -> None:
    """What faked `sync` durability before: a listener without the key answered the old
    challenge/`Y` handshake, received the WRITE and acknowledged it."""
    received: list[Op] = []

    def impostor(conn: socket.socket) -> None:
        conn.sendall(b"c" * 32)  # a challenge, then "Y" whatever the proof
        with contextlib.suppress(OSError):
            conn.recv(1 << 16)
            conn.sendall(b"Y\x00")
            decoder = Decoder()
            while data := conn.recv(1 << 16):
                for op in decoder.feed(data):
                    received.append(op)
                    conn.sendall(encode(ack(op.seq)))

    with server(impostor) as port, pytest.raises(ChannelError, match="no TLS session"):
        connect(port).send(WRITE)
    assert received == []


@pytest.mark.parametrize(
    "cert",
    [identity(OTHER, "demo", "node2"), identity(SECRET, "demo", "node3")],
    ids=["another-cluster-key", "another-node-of-the-cluster"],
)
def test_a_replica_without_the_peers_certificate_never_sees_plaintext(cert: NodeIdentity) -> None:
    seen = bytearray()

    def impostor(conn: socket.socket) -> None:
        stream = TlsStream(conn, server_context(cert), server_side=True)
        with contextlib.suppress(OSError):
            stream.handshake(time.monotonic() + 5)
            while data := stream.recv(1 << 16):
                seen.extend(data)

    with server(impostor) as port, pytest.raises(ChannelError, match="is not node2"):
        connect(port).send(WRITE)
    assert b"secret data" not in seen
    assert not seen  # not even the hello


# --- finding 4: the secondary authenticates the primary -----------------------------------------


@pytest.mark.parametrize(
    ("ident", "why"),
    [
        (identity(OTHER, "demo", "node1"), "TLS refused"),
        (NODE2, "does not name node1"),  # a valid certificate, but not the module's primary
    ],
    ids=["another-cluster-key", "not-the-peer"],
)
def test_a_primary_without_its_certificate_is_refused_before_any_operation(
    secondary: Secondary, ident: NodeIdentity, why: str
) -> None:
    with pytest.raises(ChannelError):
        connect(secondary.listener.port, ident, trusting=True).send(WRITE)
    until(lambda: bool(secondary.refused))
    assert why in secondary.refused[0][1]
    assert secondary.sessions == []
    assert secondary.receiver.applied == 0
    assert not (secondary.root / "f").exists()


def test_the_real_primary_replicates_over_tls(secondary: Secondary) -> None:
    s = connect(secondary.listener.port)
    assert s.send(Op(Kind.CREATE, 0, (0o644, -1, -1), (b"0/f",))) == 0
    assert s.send(WRITE) == 0
    s.close()
    assert (secondary.root / "f").read_bytes() == b"secret data"
    assert isinstance(s.sock, TlsStream)


# --- finding 3: what unauthenticated connections cost -------------------------------------------


def _open(n: int, source: str = "127.0.0.1", port: int = 0) -> list[socket.socket]:
    out = []
    for _ in range(n):
        c = socket.socket()
        c.bind((source, 0))
        c.connect(("127.0.0.1", port))
        out.append(c)
    return out


def test_idle_and_garbage_connections_do_not_keep_the_primary_out(secondary: Secondary) -> None:
    port = secondary.listener.port
    idle = _open(20, port=port)
    stop = threading.Event()

    def garbage(c: socket.socket) -> None:  # bounded: at most 10 s and 40 MB
        with contextlib.suppress(OSError):
            for _ in range(10_000):
                if stop.is_set():
                    return
                c.sendall(os.urandom(4096))
                time.sleep(0.001)

    senders = _open(5, port=port)
    threads = [threading.Thread(target=garbage, args=(c,)) for c in senders]
    for t in threads:
        t.start()
    try:
        t0 = time.monotonic()
        s = connect(port)
        assert s.send(Op(Kind.CREATE, 0, (0o644, -1, -1), (b"0/f",))) == 0
        assert time.monotonic() - t0 < 10.0  # generous: the old listener needed 31 s for 9
        s.close()
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        for c in idle + senders:
            c.close()
    assert secondary.sessions == ["127.0.0.1"]


def test_an_unauthenticated_connection_is_closed_after_the_deadline(tmp_path: Path) -> None:
    s = Secondary(tmp_path, Limits(deadline=0.5, report_every=0.0))
    try:
        (idle,) = _open(1, port=s.listener.port)
        idle.settimeout(10)
        t0 = time.monotonic()
        assert idle.recv(1) == b""  # closed by the secondary
        assert time.monotonic() - t0 < 5.0
        until(lambda: bool(s.refused))
        assert "not authenticated within 0.5 s" in s.refused[0][1]
        idle.close()
    finally:
        s.close()


def test_beyond_the_cap_the_oldest_unauthenticated_connection_goes(tmp_path: Path) -> None:
    s = Secondary(tmp_path, Limits(deadline=30.0, pending=4, report_every=0.0))
    try:
        conns = _open(4, port=s.listener.port)
        until(lambda: len(s.listener._pending) == 4)
        conns += _open(2, port=s.listener.port)
        for c in conns:
            c.settimeout(10)
        assert conns[0].recv(1) == b""
        assert conns[1].recv(1) == b""
        for c in conns[2:]:
            c.settimeout(0.3)
            with pytest.raises(TimeoutError):
                c.recv(1)  # still waiting: within its deadline, not the oldest
        until(lambda: len(s.listener._pending) == 4)
        for c in conns:
            c.close()
    finally:
        s.close()


def test_connections_from_other_addresses_are_closed_at_once(secondary: Secondary) -> None:
    (stranger,) = _open(1, source="127.0.0.2", port=secondary.listener.port)
    stranger.settimeout(10)
    with contextlib.suppress(ConnectionResetError):
        assert stranger.recv(1) == b""
    stranger.close()
    until(lambda: bool(secondary.refused))
    assert secondary.refused[0] == ("127.0.0.2", "127.0.0.2 is not an address of node1")
    assert secondary.sessions == []


def test_refusals_are_reported_at_most_once_per_period(tmp_path: Path) -> None:
    s = Secondary(tmp_path, Limits(report_every=60.0))
    try:
        for c in _open(5, source="127.0.0.2", port=s.listener.port):
            c.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                c.recv(1)
            c.close()
        until(lambda: bool(s.refused))
        assert len(s.refused) == 1
    finally:
        s.close()


def test_an_accepted_connection_ends_when_its_peer_vanishes_without_closing_it() -> None:
    """A primary that loses power never closes its connection: keepalive probes (idle) and a
    TCP user timeout (unacknowledged acks) end it within `dead_after`, so the session does not
    wait for ever. Checked on a real accepted socket (dropping packets needs a namespace)."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        client = socket.create_connection(lsock.getsockname())
        conn, _ = lsock.accept()
        with client, conn:
            keepalive(conn, 8.0)
            assert conn.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            idle = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
            count = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
            interval = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
            assert idle + count * interval <= 8
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 8000
