"""`hakit console serve`: the console's HTTPS server, bounded before authentication.

The accept loop is the node API's (`adapters.httpserver`), holding each connection's slot
until it closes: at most PER_ADDRESS connections of one address and TOTAL in all (more are
closed at accept), HANDSHAKE_TIMEOUT s for the TLS handshake, HEAD_TIMEOUT s for each request
head, IDLE_TIMEOUT s between two requests of a connection, 16 KiB of request head; bodies are
bounded by `app.Limits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hakit.adapters.httpserver import BoundedH11, BoundedTlsServer, uvicorn_config
from hakit.adapters.tcp import listen
from hakit.console.app import Console, build_app
from hakit.console.certs import fingerprint, self_signed, server_context
from hakit.console.clusters import Hub, Registry
from hakit.console.sessions import ABSOLUTE, IDLE, Sessions
from hakit.console.store import ConsoleError, Store
from hakit.console.users import Users

log = logging.getLogger("hakit.console")

DEFAULT_LISTEN = "0.0.0.0:7380"
HANDSHAKE_TIMEOUT = 5.0
HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 5
PER_ADDRESS = 32
TOTAL = 256
HEAD_LIMIT = 16 * 1024


class ConsoleProtocol(BoundedH11):
    head_timeout = HEAD_TIMEOUT


class ConsoleServer(BoundedTlsServer):
    handshake_timeout = HANDSHAKE_TIMEOUT
    per_address = PER_ADDRESS
    total = TOTAL
    hold_slots = True
    what = "console"
    log = log


@dataclass(frozen=True)
class ServeOptions:
    listen: str = DEFAULT_LISTEN
    state: Path = Path("/var/lib/hakit/console")
    cert: Path | None = None
    key: Path | None = None
    insecure_http: bool = False
    idle: float = IDLE
    absolute: float = ABSOLUTE


def split_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ConsoleError(f"invalid --listen {text!r}: expected HOST:PORT, e.g. 0.0.0.0:7380")
    return host, int(port)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def prepare(opts: ServeOptions) -> tuple[ConsoleServer, socket.socket, Console, str]:
    """Everything `serve` needs, checked before anything listens: (server, socket, console,
    the URL to print)."""
    host, port = split_listen(opts.listen)
    if opts.insecure_http and not _loopback(host):
        raise ConsoleError(
            "--insecure-http only on a loopback address (e.g. --listen 127.0.0.1:7380): "
            "passwords and session cookies must not cross a network in clear"
        )
    if (opts.cert is None) != (opts.key is None):
        raise ConsoleError("--cert and --key go together")
    store = Store(opts.state)
    store.ensure()
    users = Users(store)
    if not users.all():
        log.warning(
            "console: no user yet: `hakit console user add NAME --role admin` (state %s)",
            opts.state,
        )
    tls = None
    if not opts.insecure_http:
        cert, key = opts.cert, opts.key
        if cert is None or key is None:
            cert, key = store.cert, store.key
            if not (cert.exists() and key.exists()):
                self_signed(cert, key, host)
                log.info("console: made a self-signed certificate %s", cert)
        tls = server_context(cert, key)
        log.info("console: certificate %s, fingerprint %s", cert, fingerprint(cert))
    sessions = Sessions(store, time.time, opts.idle, opts.absolute)
    registry = Registry(store)
    console = Console(users, sessions, registry, Hub(registry), secure=tls is not None)
    config = uvicorn_config(
        build_app(console),
        tls,
        ConsoleProtocol,
        timeout_keep_alive=IDLE_TIMEOUT,
        h11_max_incomplete_event_size=HEAD_LIMIT,
    )
    try:
        sock = listen(host, port, backlog=128)
    except OSError as e:
        raise ConsoleError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = socket.gethostname()
    url = f"{'http' if tls is None else 'https'}://{shown}:{port}/"
    return ConsoleServer(config), sock, console, url


async def _run(server: ConsoleServer, sock: socket.socket, console: Console) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.TaskGroup() as tg:
            hub = tg.create_task(console.hub.run())
            web = tg.create_task(server.serve(sockets=[sock]))
            await stop.wait()
            server.should_exit = True
            await web
            hub.cancel()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def serve(opts: ServeOptions) -> None:
    """Run the console in the foreground until SIGTERM/SIGINT."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    server, sock, console, url = prepare(opts)
    log.info("console: serving on %s (state %s)", url, opts.state)
    print(f"hakit console: {url}", flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(_run(server, sock, console))
