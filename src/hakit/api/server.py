"""`hakit daemon`: the node daemon and its API, in one process, under one task group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from hakit.adapters.udp import IP_FREEBIND
from hakit.api.app import Authenticated, create_app
from hakit.config.load import load_cluster
from hakit.daemon.logs import LOGGER, daemon_logging
from hakit.daemon.runtime import (
    SHUTDOWN_TIMEOUT,
    NodeDaemon,
    resolve_local_node,
    single_instance,
)
from hakit.paths import Paths
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
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        try:
            sock.bind((addr, port))
        except OSError as e:
            sock.close()
            log.error("API not listening on %s:%s: %s", addr, port, e.strerror)
            continue
        sock.listen(64)
        sock.setblocking(False)
        socks.append(sock)
    return socks


def _server(app: Any) -> _Server:
    config = uvicorn.Config(app, log_config=None, lifespan="off", access_log=False, loop="asyncio")
    return _Server(config)


async def _serve(daemon: NodeDaemon, paths: Paths) -> None:
    sock = _unix_socket(paths.socket)
    cfg = daemon.cluster.config
    server = _server(create_app(daemon))
    verifier = Verifier(api_key(daemon.cluster.secret, cfg.cluster))
    addresses = [str(a) for a in cfg.nodes[daemon.local].addresses.values()]
    remote = _server(Authenticated(create_app(daemon), verifier, time.time))
    tcp = _tcp_sockets(addresses, cfg.api.port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def wait_stop(daemon_task: asyncio.Task[None]) -> None:
        await stop.wait()
        log.info("stopping")
        daemon.stop()
        try:
            await asyncio.wait_for(asyncio.shield(daemon_task), SHUTDOWN_TIMEOUT + 10)
        finally:
            server.should_exit = True  # the API answers until the modules are stopped
            remote.should_exit = True

    try:
        async with asyncio.TaskGroup() as tg:
            main = tg.create_task(daemon.run())
            api = tg.create_task(server.serve(sockets=[sock]))
            if tcp:
                tg.create_task(remote.serve(sockets=tcp))
            waiter = tg.create_task(wait_stop(main))
            await asyncio.wait([main, api, waiter], return_when=asyncio.FIRST_COMPLETED)
            if not stop.is_set():
                log.error("a daemon component ended unexpectedly; stopping")
                stop.set()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
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
