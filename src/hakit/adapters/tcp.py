"""TCP listeners of the daemon (the node API, the join listener): their sockets, and bounds on
connections that have not authenticated yet, per source address and in all.

A listener takes a slot when it accepts a connection and gives it back once the connection
authenticated or was closed; an accept beyond the bounds is closed at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from hakit.adapters.udp import IP_FREEBIND


def listen(address: str, port: int, backlog: int = 64) -> socket.socket:
    """A non-blocking listening socket on `address` (FREEBIND: the address may come up later);
    `OSError` if it cannot be bound."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((address, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


@dataclass
class Admission:
    per_address: int
    total: int
    pending: dict[str, int] = field(default_factory=dict)

    def take(self, address: str) -> bool:
        """A slot for a new connection from `address`, or False (close it)."""
        if (
            self.pending.get(address, 0) >= self.per_address
            or sum(self.pending.values()) >= self.total
        ):
            return False
        self.pending[address] = self.pending.get(address, 0) + 1
        return True

    def give_back(self, address: str) -> None:
        left = self.pending.get(address, 1) - 1
        if left > 0:
            self.pending[address] = left
        else:
            self.pending.pop(address, None)


async def accept_bounded(
    sock: socket.socket,
    admission: Admission,
    start: Callable[[socket.socket, str], None],
    log: logging.Logger,
    what: str,
) -> None:
    """Accept on `sock` for ever: a connection beyond `admission`'s bounds is closed at once,
    the others go to `start(conn, address)`, which gives the slot back when it is done. An
    accept error (e.g. out of descriptors) is logged and retried, never the end of serving."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn, peer = await loop.sock_accept(sock)
        except OSError as e:
            log.warning("%s: accept failed: %s", what, e)
            await asyncio.sleep(0.1)
            continue
        addr = str(peer[0])
        if not admission.take(addr):
            conn.close()  # beyond the bounds before authentication
            continue
        start(conn, addr)
