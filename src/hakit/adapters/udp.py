"""UDP sockets for heartbeats: one per network, bound to the local address on that network.

The sockets are exclusive: no `SO_REUSEADDR`, no `SO_REUSEPORT`. On Linux, once hakit holds
`ADDRESS:PORT` that way, no other process (root or not) can bind a socket that would receive
those datagrams: the same address, the wildcard `0.0.0.0` (or `::` without `IPV6_V6ONLY`), with
or without `SO_REUSEADDR`/`SO_REUSEPORT` or `SO_BINDTODEVICE`, all fail with EADDRINUSE. Taking
the port *before* hakit binds it is still possible for a non-root user when the port is 1024 or
above: then the bind here fails and `PortTaken` names the process holding the port.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from hakit.errors import HakitError

IP_FREEBIND = 15  # Linux: bind to an address that is not (yet) configured on an interface
IPV6_FREEBIND = 78
MAX_PROCESSES_SCANNED = 100_000


class PortTaken(HakitError):
    """The heartbeat address and port are held by another socket (named when it can be)."""


def open_heartbeat_socket(address: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to `address:port`, exclusively.

    `IP_FREEBIND` lets the daemon start while an interface is still down or its address not yet
    configured: heartbeats on that network start flowing as soon as the address appears.
    `PortTaken` when another socket holds the port; `OSError` for other failures.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            # heartbeats first: DSCP CS6 (network control), like routing protocols
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xC0)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, 6)
        sock.setblocking(False)
        sock.bind((address, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PortTaken(
                f"cannot bind {address}:{port}/udp: address already in use, "
                f"{udp_port_holders(port)}: heartbeats on this network are not received; "
                "stop that process (or choose another heartbeat.port) and restart hakit"
            ) from e
        raise
    return sock


def udp_port_holders(port: int, proc: Path = Path("/proc")) -> str:
    """Who holds UDP `port` in this network namespace, for messages ("held by pid 12 (nc, uid
    65534) on 0.0.0.0"); from `/proc/net/udp[6]` and the processes' descriptors (root sees all).
    """
    sockets: dict[str, tuple[str, str]] = {}  # inode -> (local address, uid)
    for name in ("udp", "udp6"):
        try:
            lines = (proc / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or ":" not in f[1]:
                continue
            addr, hexport = f[1].rsplit(":", 1)
            if int(hexport, 16) == port:
                sockets[f[9]] = (_address(addr), f[7])
    if not sockets:
        return "by a socket this node's /proc/net/udp does not show"
    found: list[str] = []
    for i, pid_dir in enumerate(proc.glob("[0-9]*")):
        if i >= MAX_PROCESSES_SCANNED:
            break
        try:
            links = [os.readlink(fd) for fd in (pid_dir / "fd").iterdir()]
        except OSError:
            continue
        for link in links:
            inode = link.removeprefix("socket:[").removesuffix("]")
            if link.startswith("socket:[") and inode in sockets:
                try:
                    comm = (pid_dir / "comm").read_text().strip()
                except OSError:
                    comm = "?"
                addr, uid = sockets[inode]
                found.append(f"pid {pid_dir.name} ({comm}, uid {uid}) on {addr}")
    if found:
        return "held by " + ", ".join(sorted(set(found)))
    owners = ", ".join(f"uid {uid} on {addr}" for addr, uid in sockets.values())
    return f"held by a socket of {owners} (process not found)"


def _address(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # /proc/net/udp6: four host-order 32-bit words
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)
