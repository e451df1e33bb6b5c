"""`hakit daemon`: the node daemon and its API, in one process, under one task group.

The API listens on a root-only unix socket (plain HTTP) and on `api.port` of the node's cluster
addresses (HTTPS, mutual TLS, signed requests; see docs/security.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from hakit.adapters.tcp import Admission, accept_bounded, listen
from hakit.adapters.tokenstore import TokenStore
from hakit.api.admin import Admin
from hakit.api.app import create_app
from hakit.api.guard import Access, Guard
from hakit.api.tokensync import TokenSync
from hakit.config.load import load_cluster
from hakit.daemon.logs import LOGGER, daemon_logging
from hakit.daemon.runtime import (
    SHUTDOWN_TIMEOUT,
    NodeDaemon,
    resolve_local_node,
    single_instance,
)
from hakit.paths import Paths
from hakit.probe.manager import ProbeManager
from hakit.tls import NodeIdentity, ca_fingerprint, identity, peer_node, server_context
from hakit.wire.apiauth import Verifier, api_key

log = logging.getLogger(LOGGER)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _unix_socket(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a leftover of a killed daemon (we hold the instance lock)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)  # root only until the API has authentication
    sock.listen(64)
    sock.setblocking(False)
    return sock


def _tcp_sockets(addresses: list[str], port: int) -> list[socket.socket]:
    """One listening socket per cluster address (FREEBIND: the address may come up later)."""
    socks = []
    for addr in addresses:
        try:
            socks.append(listen(addr, port))
        except OSError as e:
            log.error("API not listening on %s:%s: %s", addr, port, e.strerror)
    return socks


class _LocalPeers(H11Protocol):
    """uvicorn's HTTP protocol on the unix socket, telling the API who is at the other end
    (`SO_PEERCRED`: uid and pid) for the audit trail."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        cred: dict[str, int] = {}
        with contextlib.suppress(OSError, AttributeError):
            pid, uid, _gid = struct.unpack(
                "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            )
            cred = {"uid": uid, "pid": pid}
        self.app_state = {**self.app_state, "hakit_local": cred}


def _node_peers(cluster: str, nodes: Callable[[], Iterable[str]]) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol that closes every TLS connection whose client certificate does
    not name one of the cluster's `nodes()` (asked at each connection: a configuration applied
    live adds and removes nodes). A client without a certificate is a tool: the API then
    requires an API token of it (`api.guard`)."""

    class NodePeers(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            tls = transport.get_extra_info("ssl_object")
            cert = tls.getpeercert() if tls else None
            node = peer_node(cert, cluster, nodes())
            if cert and node is None:
                log.warning("API: closed a TLS connection from %s: not a node", self.client)
                transport.close()
            self.app_state = {**self.app_state, "hakit_peer": node}

    return NodePeers


def _server(
    app: Any, tls: ssl.SSLContext | None = None, http: Any = "h11", kind: type[_Server] = _Server
) -> _Server:
    config = uvicorn.Config(
        app,
        log_config=None,
        lifespan="off",
        access_log=False,
        loop="asyncio",
        http=http,
        ssl_context_factory=None if tls is None else lambda _config, _default: tls,
    )
    return kind(config)


HANDSHAKE_TIMEOUT = 5.0  # seconds from the accept to the end of the TLS handshake
PENDING_PER_ADDRESS = 16  # connections of one address still in their handshake
PENDING_TOTAL = 128  # all connections still in their handshake


class _TlsServer(_Server):
    """The TCP API on the daemon's sockets with bounds before authentication: our own accept
    loop hands each connection to uvicorn's protocol through a TLS handshake of at most
    HANDSHAKE_TIMEOUT seconds (asyncio's default is 60 s and uvicorn does not expose it), and
    refuses connections beyond PENDING_PER_ADDRESS / PENDING_TOTAL still in their handshake."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        assert sockets, "the TCP API serves the sockets the daemon bound"
        await self.lifespan.startup()
        self.servers = []
        self._admission = Admission(PENDING_PER_ADDRESS, PENDING_TOTAL)
        self._handshakes: set[asyncio.Task[None]] = set()
        self._accepting = [asyncio.create_task(self._accept(sock)) for sock in sockets]
        self.started = True

    def _protocol(self) -> asyncio.Protocol:
        config = self.config
        return config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=self.server_state, app_state=self.lifespan.state
        )

    async def _accept(self, sock: socket.socket) -> None:
        await accept_bounded(sock, self._admission, self._start_handshake, log, "API")

    def _start_handshake(self, conn: socket.socket, addr: str) -> None:
        task = asyncio.get_running_loop().create_task(self._handshake(conn, addr))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket, addr: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                self._protocol,
                conn,
                ssl=self.config.ssl,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            conn.close()
        finally:
            self._admission.give_back(addr)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for t in [*getattr(self, "_accepting", []), *getattr(self, "_handshakes", ())]:
            t.cancel()
        await super().shutdown(sockets)


def tcp_server(app: Any, ident: NodeIdentity, nodes: Callable[[], Iterable[str]]) -> _Server:
    """The TCP API: TLS 1.3 with the node's certificate; clients are nodes (their certificate
    of the cluster CA) or tools (no certificate: an API token in each request)."""
    ctx = server_context(ident, tools=True)
    return _server(app, ctx, _node_peers(ident.cluster, nodes), _TlsServer)


async def _serve(daemon: NodeDaemon, paths: Paths) -> None:
    sock = _unix_socket(paths.socket)
    cfg = daemon.cluster.config
    hello = {"node": daemon.local, "boot": secrets.token_hex(16)}
    addresses = [str(a) for a in cfg.nodes[daemon.local].addresses.values()]
    ident = identity(daemon.cluster.secret, cfg.cluster, daemon.local, tuple(addresses))
    tokens = TokenStore(paths.tokens)
    tokens.load()
    if tokens.problem:
        log.error("API tokens: %s (no token is accepted until it is fixed)", tokens.problem)
    sync = TokenSync(tokens, daemon.local, lambda: daemon.cluster)
    ca = {
        "cluster": cfg.cluster,
        "ca": ident.ca_pem,
        "fingerprint": "sha256:" + ca_fingerprint(ident.ca_pem),
    }
    admin = Admin(tokens, ca, sync.changed)
    access = Access(tokens, metrics_open=cfg.api.metrics == "open")
    server = _server(
        Guard(create_app(daemon, hello, admin), None, time.time, access, daemon.local),
        http=_LocalPeers,
    )
    verifier = Verifier(api_key(daemon.cluster.secret, cfg.cluster), daemon.local, hello["boot"])
    remote = tcp_server(
        Guard(create_app(daemon, hello, admin), verifier, time.time, access, daemon.local),
        ident,
        lambda: daemon.cluster.config.nodes,
    )
    tcp = _tcp_sockets(addresses, cfg.api.port)
    probes = ProbeManager(daemon.status, daemon.record)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)  # `systemctl reload hakit`

    async def wait_stop(daemon_task: asyncio.Task[None]) -> None:
        await stop.wait()
        log.info("stopping")
        daemon.stop()
        try:
            await asyncio.wait_for(asyncio.shield(daemon_task), SHUTDOWN_TIMEOUT + 10)
        finally:
            server.should_exit = True  # the API answers until the modules are stopped
            remote.should_exit = True
            probes.close()
            syncing.cancel()

    try:
        async with asyncio.TaskGroup() as tg:
            main = tg.create_task(daemon.run())
            api = tg.create_task(server.serve(sockets=[sock]))
            if tcp:
                tg.create_task(remote.serve(sockets=tcp))
            tg.create_task(probes.run())
            syncing = tg.create_task(sync.run())
            waiter = tg.create_task(wait_stop(main))
            await asyncio.wait([main, api, waiter], return_when=asyncio.FIRST_COMPLETED)
            if not stop.is_set():
                log.error("a daemon component ended unexpectedly; stopping")
                stop.set()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(FileNotFoundError):
            paths.socket.unlink()


def run_daemon(paths: Paths, node: str | None, *, to_stderr: bool = True) -> None:
    """Load the configuration (nothing starts on a bad one), then run until SIGTERM/SIGINT."""
    cluster = load_cluster(paths.cluster_config)
    local, why = resolve_local_node(cluster.config, node, socket.gethostname())
    with single_instance(paths.var), daemon_logging(paths.log, local, to_stderr=to_stderr):
        daemon = NodeDaemon(paths, cluster, local, why)
        asyncio.run(_serve(daemon, paths))
