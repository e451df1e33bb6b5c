"""Virtual IP addresses on this node's interfaces (netlink), announced by gratuitous ARP / NA.

Thin and idempotent: `add` of a present VIP and `remove` of an absent one succeed (and say so by
returning False). Nothing here decides anything; the mirror module says which VIPs to hold.

Every call is bounded: the netlink work runs on a short-lived worker thread with its own
pyroute2 socket (closed at the end of the call) and is abandoned, with a `VipError`, if the
kernel has not answered within `timeout`. The worker thread also makes the adapter callable from
a thread that runs an asyncio loop (pyroute2's synchronous `IPRoute` cannot run there); from
async code, prefer `await asyncio.to_thread(vips.add, vip)`: a call takes 1-3 ms.

Addresses hakit adds carry `IFA_PROTO` = `HAKIT_ADDR_PROTO`, so `held()` finds them after a
restart, even a VIP that is no longer configured (Linux 5.18 and later; older kernels ignore the
mark and `held()` finds nothing). IPv4 VIPs get the label `<interface>:hakit` (shown by
`ip addr`, and by `ifconfig` as an alias). IPv6 VIPs are added with `nodad`: usable at once, as
keepalived does, instead of after duplicate address detection.

Announcements are single Ethernet frames sent from an AF_PACKET socket in this process, kept
open (closing one costs 10-20 ms): a gratuitous ARP request for IPv4 (RFC 5227 announcement:
sender IP = target IP = VIP, sender MAC = the interface's MAC, to broadcast) and an unsolicited
neighbour advertisement with the override flag for IPv6 (RFC 4861 §7.2.6, to all nodes).
Neighbours update the entries they already have for the VIP; they create none. `announce` does
not check that the VIP is configured: announce only what `add` put there.

Before a VIP is taken, `probe` asks the link whether another host already uses the address:
RFC 5227 duplicate address detection, shortened for the failover path (see docs/mirror.md,
"VIP probe"): `count` ARP probes (sender IP 0.0.0.0, target IP = the VIP) `interval` seconds
apart, and any ARP frame from another MAC with the VIP as sender (a reply, an announcement) or
probing for the same VIP is a conflict. A MAC that the neighbour table gives for one of the
`peers` addresses is the peer node (an old primary still releasing the VIP): reported as such,
not as a foreign host. IPv6 VIPs are not probed (added with `nodad`, see above).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from hakit.adapters.bounded import run_bounded
from hakit.errors import HakitError

T = TypeVar("T")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

HAKIT_ADDR_PROTO = 72  # IFA_PROTO of addresses added by hakit ("H"); 0-3 are the kernel's
NETLINK_TIMEOUT = 5.0  # s; the kernel answers in microseconds, this only bounds the unexpected
IFNAMSIZ = 16  # interface names and IPv4 labels: at most 15 characters
IFA_F_NODAD = 0x02
ARPHRD_ETHER = 1
SIOCGIFHWADDR = 0x8927
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
BROADCAST_MAC = b"\xff" * 6
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"  # Ethernet multicast for ff02::1
ALL_NODES = ipaddress.IPv6Address("ff02::1")
LABEL_RE = re.compile(r"[A-Za-z0-9_.-]{1,14}")


class VipError(HakitError):
    """A virtual IP could not be placed, found, removed or announced; says which, where and why."""


@dataclass(frozen=True)
class Vip:
    """A virtual IP and where it goes: a named interface, or the one holding `local_address`.

    `interface` wins when both are given. The address is normalised (`fd00::0:1` -> `fd00::1`).
    """

    address: str
    prefixlen: int
    interface: str | None = None
    local_address: str | None = None
    label: str = "hakit"

    def __post_init__(self) -> None:
        try:
            ip = ipaddress.ip_address(self.address)
        except ValueError as e:
            raise VipError(f"VIP {self.address!r}: not an IPv4 or IPv6 address") from e
        object.__setattr__(self, "address", str(ip))
        if not 0 <= self.prefixlen <= ip.max_prefixlen:
            raise VipError(
                f"VIP {self.address}: prefix length {self.prefixlen} out of range "
                f"(0-{ip.max_prefixlen} for IPv{ip.version})"
            )
        if self.interface is not None and not 0 < len(self.interface) < IFNAMSIZ:
            raise VipError(
                f"VIP {self.address}: interface name {self.interface!r} must have 1 to "
                f"{IFNAMSIZ - 1} characters"
            )
        if self.local_address is not None:
            try:
                local = ipaddress.ip_address(self.local_address)
            except ValueError as e:
                raise VipError(
                    f"VIP {self.address}: local address {self.local_address!r} is not an IP address"
                ) from e
            if local.version != ip.version:
                raise VipError(
                    f"VIP {self.address}: local address {local} is IPv{local.version}, "
                    f"the VIP IPv{ip.version}: give a local address of the same family"
                )
            object.__setattr__(self, "local_address", str(local))
        if self.interface is None and self.local_address is None:
            raise VipError(
                f"VIP {self.address}: say where it goes: an interface name or a local address"
            )
        if not LABEL_RE.fullmatch(self.label):
            raise VipError(
                f"VIP {self.address}: label {self.label!r} must be 1-14 letters, digits, '_.-'"
            )

    @property
    def ip(self) -> IPAddress:
        return ipaddress.ip_address(self.address)

    @property
    def version(self) -> int:
        return self.ip.version

    def __str__(self) -> str:
        return f"{self.address}/{self.prefixlen}"

    @property
    def where(self) -> str:
        """Where the VIP goes, for messages: "on eth0" or "on the interface holding 10.0.0.1"."""
        if self.interface is not None:
            return f"on {self.interface}"
        return f"on the interface holding {self.local_address}"


@dataclass(frozen=True)
class Probe:
    """How to probe for a VIP before taking it: `count` ARP probes `interval` s apart (the
    whole probe lasts `count` × `interval`); `peers`: the cluster peers' addresses, whose MACs
    are the peer node's, not a foreign host's."""

    count: int = 2
    interval: float = 0.05
    peers: tuple[str, ...] = ()


@dataclass(frozen=True)
class InUse:
    """The VIP answered from another MAC: `peer` is the peer's address that MAC belongs to
    (the peer node still holds it), None for a foreign host. A cloud mover says who holds the
    address instead: `mac` is then the cloud's holder (`what` "interface eni-…"), `how` the
    question asked."""

    mac: str
    peer: str | None = None
    what: str = "MAC"
    how: str = "ARP probe"


class VipPort(Protocol):
    """Virtual IPs on this node. Blocking, short (milliseconds) and bounded."""

    def interface_of(self, vip: Vip) -> str:
        """The interface that carries `vip`; `VipError` if there is none."""
        ...

    def add(self, vip: Vip) -> bool:
        """Configure `vip`: True if added now, False if it was already there."""
        ...

    def remove(self, vip: Vip) -> bool:
        """Unconfigure `vip` wherever it is: True if removed now, False if it was absent."""
        ...

    def present(self, vip: Vip) -> bool:
        """Is `vip` (address and prefix length) on the interface that should carry it?

        False too when no interface can carry it (`interface_of` says why).
        """
        ...

    def held(self) -> list[Vip]:
        """Every VIP that hakit added and that is still configured, with its interface."""
        ...

    def announce(self, vip: Vip, sender: bytes | None = None) -> None:
        """Tell the neighbours that `vip` is here: one frame now (gratuitous ARP or NA).

        `sender`: announce this hardware address for an IPv4 VIP instead of the interface's
        own (a farm's virtual MAC); the frame still leaves from the interface's address."""
        ...

    def probe(self, vip: Vip, probe: Probe) -> InUse | None:
        """Does another host use `vip` on its link? Blocks `probe.count` × `probe.interval`.

        None: nobody answered, or nothing to probe (`count` 0, IPv6, the VIP already here)."""
        ...


# -- frames --------------------------------------------------------------------------------


def gratuitous_arp(mac: bytes, ip: ipaddress.IPv4Address, sender: bytes | None = None) -> bytes:
    """An ARP announcement: request, sender = target = `ip`, from `mac` to broadcast; 60 bytes.

    `sender`: the hardware address announced for `ip` when it is not the frame's source (a
    farm's virtual MAC, which must never appear as a source so that switches keep flooding)."""
    eth = BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP)
    sha = sender or mac
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + sha + ip.packed + b"\x00" * 6 + ip.packed
    return (eth + arp).ljust(60, b"\x00")


def arp_probe(mac: bytes, ip: ipaddress.IPv4Address) -> bytes:
    """An ARP probe (RFC 5227 §2.1.1): request, sender IP 0.0.0.0, target IP `ip`; 60 bytes."""
    eth = BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + b"\x00" * 4 + b"\x00" * 6 + ip.packed
    return (eth + arp).ljust(60, b"\x00")


def conflict(frame: bytes, mac: bytes, ip: ipaddress.IPv4Address) -> bytes | None:
    """The MAC of another host using `ip`, if ARP `frame` shows one (RFC 5227 §2.1.1: its sender
    IP is `ip`, or it probes for `ip` too); None otherwise."""
    if len(frame) < 42 or frame[12:14] != struct.pack("!H", ETH_P_ARP):
        return None
    sha, spa, tpa = frame[22:28], frame[28:32], frame[38:42]
    if sha == mac:
        return None
    if spa == ip.packed or (spa == b"\x00" * 4 and tpa == ip.packed):
        return sha
    return None


def unsolicited_na(mac: bytes, ip: ipaddress.IPv6Address) -> bytes:
    """A neighbour advertisement for `ip` from `mac` to all nodes, override flag set."""
    icmp = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + ip.packed + b"\x02\x01" + mac
    pseudo = ip.packed + ALL_NODES.packed + struct.pack("!I3xB", len(icmp), 58)
    checksum = _inet_checksum(pseudo + icmp)
    icmp = icmp[:2] + struct.pack("!H", checksum) + icmp[4:]
    ipv6 = struct.pack("!IHBB", 6 << 28, len(icmp), 58, 255) + ip.packed + ALL_NODES.packed
    return ALL_NODES_MAC + mac + struct.pack("!H", ETH_P_IPV6) + ipv6 + icmp


def _inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def interface_mac(sock: socket.socket, interface: str) -> tuple[int, bytes]:
    """(hardware type, address) of `interface` (SIOCGIFHWADDR), in the socket's namespace."""
    ifreq = fcntl.ioctl(sock, SIOCGIFHWADDR, struct.pack("16s24x", interface.encode()))
    (hatype,) = struct.unpack_from("=H", ifreq, 16)
    return hatype, ifreq[18:24]


def send_announcement(
    sock: socket.socket, vip: Vip, interface: str, sender: bytes | None = None
) -> None:
    """Send on `sock` (AF_PACKET, SOCK_RAW) the one frame that announces `vip` on `interface`."""
    try:
        hatype, mac = interface_mac(sock, interface)
        if hatype != ARPHRD_ETHER:
            raise VipError(
                f"cannot announce VIP {vip} on {interface}: not an Ethernet interface "
                f"(hardware type {hatype}); neighbours learn the address when they ask for it"
            )
        ip = vip.ip
        if isinstance(ip, ipaddress.IPv4Address):
            sock.sendto(gratuitous_arp(mac, ip, sender), (interface, ETH_P_ARP))
        else:
            sock.sendto(unsolicited_na(mac, ip), (interface, ETH_P_IPV6))
    except OSError as e:
        raise VipError(
            f"cannot announce VIP {vip} on {interface}: {_why(e)}{_hint(e.errno)}"
        ) from e


def open_arp_socket(interface: str) -> socket.socket:
    """A non-blocking AF_PACKET socket receiving the ARP frames of `interface` (for probes)."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    except OSError as e:
        raise VipError(
            f"cannot open a packet socket to probe VIPs: {_why(e)}{_hint(e.errno)}"
        ) from e
    try:
        sock.bind((interface, ETH_P_ARP))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise VipError(f"cannot listen for ARP on {interface}: {_why(e)}{_hint(e.errno)}") from e
    return sock


def run_probe(
    sock: socket.socket,
    mac: bytes,
    vip: Vip,
    interface: str,
    probe: Probe,
    clock: Callable[[], float],
) -> bytes | None:
    """Send `probe.count` probes for `vip` on `sock` (bound to `interface`) and listen until
    `count` × `interval` has passed; the MAC of the first conflict, or None."""
    ip = vip.ip
    assert isinstance(ip, ipaddress.IPv4Address)
    for _ in range(10_000):  # drop what arrived before this probe (bounded)
        try:
            sock.recv(2048)
        except (BlockingIOError, InterruptedError):
            break
    frame = arp_probe(mac, ip)
    start = clock()
    for k in range(probe.count):
        try:
            sock.sendto(frame, (interface, ETH_P_ARP))
        except OSError as e:
            raise VipError(f"cannot probe for VIP {vip} on {interface}: {_why(e)}") from e
        until = start + (k + 1) * probe.interval
        while (left := until - clock()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                continue
            for _ in range(256):  # bounded batch per wake-up
                try:
                    data, addr = sock.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    break
                if addr[2] == socket.PACKET_OUTGOING:
                    continue
                other = conflict(data, mac, ip)
                if other is not None:
                    return other
    return None


def open_packet_socket() -> socket.socket:
    """An AF_PACKET socket that sends frames and receives none (protocol 0).

    Kept open by its owner: closing a packet socket waits for an RCU grace period (10-20 ms),
    far more than announcing takes (tens of microseconds).
    """
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except OSError as e:
        raise VipError(
            f"cannot open a packet socket to announce VIPs: {_why(e)}{_hint(e.errno)}"
        ) from e
    sock.settimeout(1.0)
    return sock


# -- netlink ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Addr:
    index: int
    ip: IPAddress
    prefixlen: int
    proto: int | None
    label: str | None


class _Session:
    """One call's netlink socket, opened on first use and closed at the end of the call."""

    def __init__(self) -> None:
        self._ipr: Any = None

    @property
    def ipr(self) -> Any:
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def addresses(self, family: int = socket.AF_UNSPEC) -> list[_Addr]:
        out = []
        for msg in self.ipr.addr("dump", family=family):
            raw = msg.get("local") or msg.get("address")
            if raw is None:
                continue
            out.append(
                _Addr(
                    index=int(msg["index"]),
                    ip=ipaddress.ip_address(raw),
                    prefixlen=int(msg["prefixlen"]),
                    proto=msg.get("proto"),
                    label=msg.get("label"),
                )
            )
        return out


def _family(vip: Vip) -> int:
    return socket.AF_INET if vip.version == 4 else socket.AF_INET6


def _why(e: BaseException) -> str:
    if isinstance(e, NetlinkError):
        code = int(e.code)
        return f"{errno.errorcode.get(code, code)} ({os.strerror(code)})"
    if isinstance(e, OSError) and e.errno is not None:
        return f"{errno.errorcode.get(e.errno, e.errno)} ({os.strerror(e.errno)})"
    return f"{type(e).__name__}: {e}"


def _hint(code: int | None) -> str:
    if code in (errno.EPERM, errno.EACCES):
        return ": hakit needs root (CAP_NET_ADMIN, CAP_NET_RAW) to manage VIPs"
    if code == errno.ENETDOWN:
        return ": the interface is down (`ip link set IFACE up`)"
    if code == errno.ENODEV:
        return ": the interface does not exist (any more)"
    return ""


def _resolve(s: _Session, vip: Vip) -> tuple[int, str]:
    if vip.interface is not None:
        try:
            return socket.if_nametoindex(vip.interface), vip.interface
        except OSError as e:
            raise VipError(
                f"VIP {vip}: interface {vip.interface} does not exist on this node "
                "(`ip link` lists the interfaces; check `interface` in the module configuration)"
            ) from e
    assert vip.local_address is not None
    local = ipaddress.ip_address(vip.local_address)
    holders = sorted({a.index for a in s.addresses(_family(vip)) if a.ip == local})
    if not holders:
        raise VipError(
            f"VIP {vip}: no interface holds the local address {local}, so none can carry the "
            "VIP (`ip addr` lists the addresses; configure it, or name the interface)"
        )
    names = [_name(i) for i in holders]
    if len(holders) > 1:
        raise VipError(
            f"VIP {vip}: the local address {local} is on {', '.join(names)}: name the interface"
        )
    return holders[0], names[0]


def _name(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"interface #{index}"


def _ipv4_label(interface: str, label: str) -> str | None:
    room = IFNAMSIZ - 1 - len(interface) - 1
    return f"{interface}:{label[:room]}" if room > 0 else None


def _present_on(s: _Session, vip: Vip, index: int) -> bool:
    ip = vip.ip
    return any(
        a.index == index and a.ip == ip and a.prefixlen == vip.prefixlen
        for a in s.addresses(_family(vip))
    )


def _add(s: _Session, vip: Vip) -> bool:
    index, name = _resolve(s, vip)
    spec: dict[str, Any] = {
        "index": index,
        "address": vip.address,
        "prefixlen": vip.prefixlen,
        "proto": HAKIT_ADDR_PROTO,
    }
    if vip.version == 4:
        label = _ipv4_label(name, vip.label)
        if label is not None:
            spec["label"] = label
    else:
        spec["flags"] = IFA_F_NODAD
    try:
        s.ipr.addr("add", **spec)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise VipError(f"cannot add VIP {vip} on {name}: {_why(e)}{_hint(e.code)}") from e
        if _present_on(s, vip, index):
            return False
        others = [
            f"/{a.prefixlen}"
            for a in s.addresses(_family(vip))
            if a.index == index and a.ip == vip.ip
        ]
        raise VipError(
            f"cannot add VIP {vip} on {name}: {vip.address} is already there with prefix length "
            f"{', '.join(others) or 'unknown'}; remove it (`ip addr del`) or fix the prefix length"
        ) from e
    return True


def _remove(s: _Session, vip: Vip) -> list[str]:
    """Remove `vip` from every interface that has it; the names of those it was removed from."""
    ip = vip.ip
    found = [a for a in s.addresses(_family(vip)) if a.ip == ip and a.prefixlen == vip.prefixlen]
    removed = []
    for a in found:
        try:
            s.ipr.addr("del", index=a.index, address=vip.address, prefixlen=vip.prefixlen)
            removed.append(_name(a.index))
        except NetlinkError as e:
            if e.code in (errno.EADDRNOTAVAIL, errno.ENODEV):
                continue  # gone meanwhile
            raise VipError(
                f"cannot remove VIP {vip} from {_name(a.index)}: {_why(e)}{_hint(e.code)}"
            ) from e
    return removed


def _present(s: _Session, vip: Vip) -> bool:
    try:
        index, _ = _resolve(s, vip)
    except VipError:
        return False
    return _present_on(s, vip, index)


def _held(s: _Session) -> list[Vip]:
    out = []
    for a in s.addresses():
        if a.proto != HAKIT_ADDR_PROTO:
            continue
        name = _name(a.index)
        label = "hakit"
        if (
            a.label
            and a.label.startswith(f"{name}:")
            and LABEL_RE.fullmatch(a.label[len(name) + 1 :])
        ):
            label = a.label[len(name) + 1 :]
        out.append(Vip(str(a.ip), a.prefixlen, interface=name, label=label))
    return out


def _announce(
    s: _Session, vip: Vip, packets: Callable[[], socket.socket], sender: bytes | None = None
) -> None:
    _, name = _resolve(s, vip)
    send_announcement(packets(), vip, name, sender)


def _neighbour_macs(s: _Session, index: int, addresses: Iterable[str]) -> dict[bytes, str]:
    """MAC -> address for those of `addresses` the neighbour table knows on interface `index`."""
    wanted = {str(ipaddress.ip_address(a)) for a in addresses}
    out: dict[bytes, str] = {}
    for msg in s.ipr.neigh("dump", ifindex=index):
        dst, lladdr = msg.get("NDA_DST"), msg.get("NDA_LLADDR")
        if dst is not None and lladdr and str(ipaddress.ip_address(dst)) in wanted:
            out[bytes.fromhex(lladdr.replace(":", ""))] = str(ipaddress.ip_address(dst))
    return out


def _bounded(what: str, timeout: float, fn: Callable[[_Session], T]) -> T:
    """Run `fn` with a fresh netlink session on a worker thread; at most `timeout` seconds."""

    def work() -> T:
        s = _Session()
        try:
            return fn(s)
        finally:
            with contextlib.suppress(Exception):  # closing a failed socket: nothing to add
                s.close()

    def late() -> VipError:
        return VipError(f"{what}: the kernel did not answer within {timeout:g} s (netlink)")

    try:
        return run_bounded(work, timeout, late, "hakit-netlink")
    except VipError:
        raise
    except (NetlinkError, OSError) as e:
        code = e.code if isinstance(e, NetlinkError) else e.errno
        raise VipError(f"{what}: {_why(e)}{_hint(code)}") from e


class NetlinkVips:
    """The real `VipPort`: netlink through pyroute2, announcements from an AF_PACKET socket.

    The packet socket is opened by the first announcement, in the network namespace of the
    caller, and kept until `close()` (or the end of a `with` block).
    """

    def __init__(self, timeout: float = NETLINK_TIMEOUT) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._packets: socket.socket | None = None
        # one ARP listener per interface probed, kept open (closing one costs 10-20 ms)
        self._arp: dict[str, socket.socket] = {}

    def __enter__(self) -> NetlinkVips:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._packets is not None:
                self._packets.close()
                self._packets = None
            for sock in self._arp.values():
                sock.close()
            self._arp.clear()

    def _packet_socket(self) -> socket.socket:
        with self._lock:
            if self._packets is None:
                self._packets = open_packet_socket()
            return self._packets

    def _arp_socket(self, interface: str) -> socket.socket:
        with self._lock:
            sock = self._arp.get(interface)
            if sock is None:
                sock = self._arp[interface] = open_arp_socket(interface)
            return sock

    def interface_of(self, vip: Vip) -> str:
        return _bounded(f"VIP {vip}", self.timeout, lambda s: _resolve(s, vip)[1])

    def add(self, vip: Vip) -> bool:
        return _bounded(f"cannot add VIP {vip} {vip.where}", self.timeout, lambda s: _add(s, vip))

    def remove(self, vip: Vip) -> bool:
        return bool(_bounded(f"cannot remove VIP {vip}", self.timeout, lambda s: _remove(s, vip)))

    def present(self, vip: Vip) -> bool:
        return _bounded(f"cannot look for VIP {vip}", self.timeout, lambda s: _present(s, vip))

    def held(self) -> list[Vip]:
        return _bounded("cannot list the VIPs held", self.timeout, _held)

    def announce(self, vip: Vip, sender: bytes | None = None) -> None:
        _bounded(
            f"cannot announce VIP {vip} {vip.where}",
            self.timeout,
            lambda s: _announce(s, vip, self._packet_socket, sender),
        )

    def probe(self, vip: Vip, probe: Probe) -> InUse | None:
        if probe.count <= 0 or vip.version != 4:
            return None

        def work(s: _Session) -> InUse | None:
            index, name = _resolve(s, vip)
            if _present_on(s, vip, index):
                return None  # ours already (a restarted daemon)
            sock = self._arp_socket(name)
            hatype, mac = interface_mac(sock, name)
            if hatype != ARPHRD_ETHER:
                return None  # no ARP on this link: nothing to probe
            peers = _neighbour_macs(s, index, probe.peers)
            other = run_probe(sock, mac, vip, name, probe, time.monotonic)
            if other is None:
                return None
            return InUse(other.hex(":"), peers.get(other))

        limit = self.timeout + probe.count * probe.interval
        return _bounded(f"cannot probe for VIP {vip} {vip.where}", limit, work)


def release_all(vips: Iterable[Vip], timeout: float = 2.0) -> list[str]:
    """Remove every VIP in `vips` wherever it is; one message per VIP. Never raises.

    For the heartbeat process when the daemon dies: a node whose daemon is gone must not keep
    answering for the module's addresses. One netlink socket, one dump, a delete per VIP held.
    """
    todo = list(vips)
    if not todo:
        return []

    def work(s: _Session) -> list[str]:
        out = []
        for vip in todo:
            try:
                held = _remove(s, vip)
                if held:
                    out.append(f"released VIP {vip} from {', '.join(held)}")
                else:
                    out.append(f"VIP {vip} was not configured")
            except Exception as e:
                out.append(f"could not release VIP {vip}: {e}")
        return out

    try:
        return _bounded("releasing VIPs", timeout, work)
    except Exception as e:
        names = ", ".join(str(v) for v in todo)
        return [f"could not release VIPs {names}: {e}; check with `ip addr`"]
