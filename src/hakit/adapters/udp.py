"""UDP sockets for heartbeats: one per network, bound to the local address on that network."""

from __future__ import annotations

import socket

IP_FREEBIND = 15  # Linux: bind to an address that is not (yet) configured on an interface
IPV6_FREEBIND = 78


def open_heartbeat_socket(address: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to `address:port`.

    `IP_FREEBIND` lets the daemon start while an interface is still down or its address not yet
    configured: heartbeats on that network start flowing as soon as the address appears.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            # heartbeats first: DSCP CS6 (network control), like routing protocols
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xC0)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, 6)
        sock.setblocking(False)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock
