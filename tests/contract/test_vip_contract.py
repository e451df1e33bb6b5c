"""VipPort contract: the same assertions against FakeVips and NetlinkVips.

The real adapter runs in two fresh network namespaces made by the fixture and always deleted:
"node" (where VIPs are added) and "peer" (the rest of the LAN), linked by two veth pairs:

    node va 10.200.0.1/24 fd00:200::1/64  <->  vb 10.200.0.2/24 fd00:200::2/64 peer
    node vx 10.201.0.1/24                 <->  vy 10.201.0.2/24                peer

Announcements are captured on the peer side with an AF_PACKET socket.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import pytest

from hakit.adapters.vip import (
    InUse,
    NetlinkVips,
    Probe,
    Vip,
    VipError,
    VipPort,
    release_all,
)
from hakit.testing.fakes import Announcement, FakeVips
from hakit.waiting import wait_until
from tests.contract import netns

NODE_ADDRESSES = {"va": ["10.200.0.1/24", "fd00:200::1/64"], "vx": ["10.201.0.1/24"]}
PEER_ADDRESSES = {"vb": ["10.200.0.2/24", "fd00:200::2/64"], "vy": ["10.201.0.2/24"]}
PEER_OF = {"va": "vb", "vx": "vy"}
V4 = Vip("10.200.0.200", 24, local_address="10.200.0.1")
V6 = Vip("fd00:200::200", 64, local_address="fd00:200::1")
ETH_P_ALL = 0x0003
REAL_SKIP = netns.unavailable()


class World(Protocol):
    """A node's interfaces as the contract tests see them, whatever the adapter."""

    @property
    def vips(self) -> VipPort: ...

    def addresses(self, interface: str) -> list[str]: ...

    def mac(self, interface: str) -> str: ...

    def remove_interface(self, interface: str) -> None: ...

    def announcements(self, action: Callable[[], None]) -> list[Announcement]:
        """Run `action`; the announcements that the node's neighbours received."""
        ...

    def occupy(self, address: str) -> str:
        """Another host on va's link (the peer side) uses `address`; its MAC."""
        ...

    def know_peer(self) -> str:
        """The node's neighbour table has the peer side's own address (10.200.0.2); its MAC."""
        ...


# -- the fake --------------------------------------------------------------------------------


@dataclass
class FakeWorld:
    vips: FakeVips

    def addresses(self, interface: str) -> list[str]:
        return self.vips.addresses(interface)

    def mac(self, interface: str) -> str:
        return self.vips.mac(interface)

    def remove_interface(self, interface: str) -> None:
        self.vips.remove_interface(interface)

    def announcements(self, action: Callable[[], None]) -> list[Announcement]:
        before = len(self.vips.announced)
        action()
        return self.vips.announced[before:]

    def occupy(self, address: str) -> str:
        self.vips.occupy(address, PEER_MAC)
        return PEER_MAC

    def know_peer(self) -> str:
        self.vips.neighbour(PEER_IP, PEER_MAC)
        return PEER_MAC


PEER_IP = "10.200.0.2"
PEER_MAC = "02:99:00:00:00:02"


# -- the real thing, in namespaces -----------------------------------------------------------


class InNamespace:
    """A VipPort that runs each call of `inner` inside network namespace `ns`."""

    def __init__(self, inner: NetlinkVips, ns: str) -> None:
        self.inner = inner
        self.ns = ns

    def interface_of(self, vip: Vip) -> str:
        with netns.inside(self.ns):
            return self.inner.interface_of(vip)

    def add(self, vip: Vip) -> bool:
        with netns.inside(self.ns):
            return self.inner.add(vip)

    def remove(self, vip: Vip) -> bool:
        with netns.inside(self.ns):
            return self.inner.remove(vip)

    def present(self, vip: Vip) -> bool:
        with netns.inside(self.ns):
            return self.inner.present(vip)

    def held(self) -> list[Vip]:
        with netns.inside(self.ns):
            return self.inner.held()

    def announce(self, vip: Vip, sender: bytes | None = None) -> None:
        with netns.inside(self.ns):
            self.inner.announce(vip, sender)

    def probe(self, vip: Vip, probe: Probe) -> InUse | None:
        with netns.inside(self.ns):
            return self.inner.probe(vip, probe)


def conforms(fake: FakeVips, real: NetlinkVips, ns: InNamespace) -> tuple[VipPort, ...]:
    """Type-checked only: the fake, the real adapter and its namespaced wrapper are VipPorts."""
    return fake, real, ns


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def parse_announcement(frame: bytes, interface: str) -> Announcement | None:
    """The announcement `frame` carries if it is a well-formed gratuitous ARP or unsolicited NA."""
    if len(frame) < 42:
        return None
    dst, src, ethertype = frame[:6], frame[6:12], struct.unpack("!H", frame[12:14])[0]
    if ethertype == 0x0806:
        htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
        sha, spa, tha, tpa = frame[22:28], frame[28:32], frame[32:38], frame[38:42]
        garp = (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1) and spa == tpa
        if garp and dst == b"\xff" * 6 and tha == b"\x00" * 6:
            # a farm announces its virtual MAC from the interface's own: "VMAC from MAC"
            mac = mac_text(sha) if sha == src else f"{mac_text(sha)} from {mac_text(src)}"
            return Announcement(interface, mac, str(ipaddress.IPv4Address(spa)))
        return None
    if ethertype == 0x86DD and len(frame) >= 14 + 40 + 32:
        ip6, icmp = frame[14:54], frame[54:]
        next_header, hop_limit = ip6[6], ip6[7]
        dst_ip = ipaddress.IPv6Address(ip6[24:40])
        if next_header != 58 or hop_limit != 255 or icmp[0] != 136 or icmp[1] != 0:
            return None
        flags = struct.unpack("!I", icmp[4:8])[0]
        target = ipaddress.IPv6Address(icmp[8:24])
        option = icmp[24:32]
        if (
            flags == 0x20000000  # override, not solicited, not router
            and dst_ip == ipaddress.IPv6Address("ff02::1")
            and dst == b"\x33\x33\x00\x00\x00\x01"
            and option[:2] == b"\x02\x01"
            and option[2:] == src
            and ipaddress.IPv6Address(ip6[8:24]) == target
        ):
            return Announcement(interface, mac_text(src), str(target))
    return None


class RealWorld:
    def __init__(self, node: str, peer: str) -> None:
        self.node = node
        self.peer = peer
        self.adapter = NetlinkVips(timeout=5.0)
        self.vips = InNamespace(self.adapter, node)

    def addresses(self, interface: str) -> list[str]:
        links = netns.ip_json("addr", "show", "dev", interface, ns=self.node)
        infos = links[0]["addr_info"]  # without the kernel's link-local fe80:: address
        return [f"{a['local']}/{a['prefixlen']}" for a in infos if a.get("scope") != "link"]

    def labels(self, interface: str) -> dict[str, str]:
        links = netns.ip_json("addr", "show", "dev", interface, ns=self.node)
        return {a["local"]: a.get("label", "") for a in links[0]["addr_info"]}

    def mac(self, interface: str) -> str:
        return str(netns.ip_json("link", "show", "dev", interface, ns=self.node)[0]["address"])

    def remove_interface(self, interface: str) -> None:
        netns.ip("link", "del", interface, ns=self.node)

    def announcements(self, action: Callable[[], None]) -> list[Announcement]:
        with netns.inside(self.peer):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            action()
            node_side = {peer: node for node, peer in PEER_OF.items()}
            seen: list[Announcement] = []
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                sock.settimeout(0.05 if seen else max(0.01, deadline - time.monotonic()))
                try:
                    frame, (ifname, *_) = sock.recvfrom(65535)
                except TimeoutError:
                    if seen:
                        break  # nothing more queued after the announcement
                    continue
                a = parse_announcement(frame, node_side.get(ifname, ifname))
                if a is not None:
                    seen.append(a)
            return seen
        finally:
            sock.close()

    def _peer_mac(self) -> str:
        return str(netns.ip_json("link", "show", "dev", "vb", ns=self.peer)[0]["address"])

    def occupy(self, address: str) -> str:
        netns.ip("addr", "add", f"{address}/24", "dev", "vb", ns=self.peer)
        return self._peer_mac()

    def know_peer(self) -> str:
        mac = self._peer_mac()
        netns.ip("neigh", "replace", PEER_IP, "lladdr", mac, "dev", "va", ns=self.node)
        return mac

    def peer_neighbour(self, address: str, interface: str) -> str | None:
        entries = netns.ip_json("neigh", "show", address, "dev", interface, ns=self.peer)
        return str(entries[0].get("lladdr")) if entries else None


@pytest.fixture
def real_world() -> Iterator[RealWorld]:
    if REAL_SKIP:
        pytest.skip(f"real VIP adapter: {REAL_SKIP}")
    node, peer = netns.new_name("vip"), netns.new_name("vipp")
    with netns.namespaces(node, peer):
        for a, b in PEER_OF.items():
            netns.ip(
                "link", "add", a, "netns", node, "type", "veth", "peer", "name", b, "netns", peer
            )
        for ns, spec in ((node, NODE_ADDRESSES), (peer, PEER_ADDRESSES)):
            for dev, addresses in spec.items():
                for address in addresses:
                    extra = ["nodad"] if ":" in address else []
                    netns.ip("addr", "add", address, "dev", dev, *extra, ns=ns)
                netns.ip("link", "set", dev, "up", ns=ns)
        world = RealWorld(node, peer)
        try:
            yield world
        finally:
            world.adapter.close()


@pytest.fixture(params=["fake", "real"])
def world(request: pytest.FixtureRequest) -> World:
    if request.param == "fake":
        return FakeWorld(FakeVips(NODE_ADDRESSES))
    real: RealWorld = request.getfixturevalue("real_world")
    return real


# -- the contract ----------------------------------------------------------------------------


@pytest.mark.parametrize("vip", [V4, V6], ids=["ipv4", "ipv6"])
def test_add_twice_adds_once(world: World, vip: Vip) -> None:
    assert not world.vips.present(vip)
    assert world.vips.add(vip) is True
    assert world.vips.add(vip) is False
    assert world.vips.present(vip)
    assert world.addresses("va").count(str(vip)) == 1


@pytest.mark.parametrize("vip", [V4, V6], ids=["ipv4", "ipv6"])
def test_remove_twice_removes_once(world: World, vip: Vip) -> None:
    world.vips.add(vip)
    assert world.vips.remove(vip) is True
    assert world.vips.remove(vip) is False
    assert not world.vips.present(vip)
    assert str(vip) not in world.addresses("va")
    assert world.addresses("va") == NODE_ADDRESSES["va"]  # the node's own addresses stay


def test_interface_by_local_address_or_by_name(world: World) -> None:
    assert world.vips.interface_of(V4) == "va"
    assert world.vips.interface_of(V6) == "va"
    assert world.vips.interface_of(Vip("10.201.0.9", 24, local_address="10.201.0.1")) == "vx"
    assert world.vips.interface_of(Vip("10.201.0.9", 24, interface="vx")) == "vx"
    # a named interface wins over a local address
    both = Vip("10.201.0.9", 24, interface="vx", local_address="10.200.0.1")
    assert world.vips.interface_of(both) == "vx"


def test_vip_goes_on_the_interface_it_resolves_to(world: World) -> None:
    vip = Vip("10.201.0.9", 32, local_address="10.201.0.1")
    assert world.vips.add(vip)
    assert "10.201.0.9/32" in world.addresses("vx")
    assert "10.201.0.9/32" not in world.addresses("va")


def test_missing_interface_is_an_actionable_error(world: World) -> None:
    vip = Vip("10.200.0.200", 24, interface="nope0")
    with pytest.raises(VipError, match=r"10\.200\.0\.200/24: interface nope0 does not exist"):
        world.vips.interface_of(vip)
    with pytest.raises(VipError, match="nope0"):
        world.vips.add(vip)
    with pytest.raises(VipError, match="nope0"):
        world.vips.announce(vip)
    assert not world.vips.present(vip)
    assert world.vips.remove(vip) is False


def test_unknown_local_address_is_an_actionable_error(world: World) -> None:
    vip = Vip("10.200.0.200", 24, local_address="10.99.0.1")
    with pytest.raises(VipError, match=r"no interface holds the local address 10\.99\.0\.1"):
        world.vips.add(vip)
    assert not world.vips.present(vip)


def test_interface_that_disappears_takes_its_vip_with_it(world: World) -> None:
    vip = Vip("10.201.0.9", 24, interface="vx")
    world.vips.add(vip)
    world.remove_interface("vx")
    assert not world.vips.present(vip)
    assert world.vips.remove(vip) is False
    with pytest.raises(VipError, match="interface vx does not exist"):
        world.vips.add(vip)


def test_ipv6_address_with_another_prefix_is_a_conflict(world: World) -> None:
    with pytest.raises(VipError, match=r"fd00:200::1 is already there|another prefix"):
        world.vips.add(Vip("fd00:200::1", 48, interface="va"))


def test_held_lists_the_vips_hakit_added(world: World) -> None:
    other = Vip("10.201.0.9", 32, interface="vx", label="web")
    world.vips.add(V4)
    world.vips.add(V6)
    world.vips.add(other)
    held = sorted(world.vips.held(), key=str)
    assert held == [
        Vip("10.200.0.200", 24, interface="va"),
        Vip("10.201.0.9", 32, interface="vx", label="web"),
        Vip("fd00:200::200", 64, interface="va"),
    ]
    world.vips.remove(V4)
    assert Vip("10.200.0.200", 24, interface="va") not in world.vips.held()


@pytest.mark.parametrize("vip", [V4, V6], ids=["ipv4", "ipv6"])
def test_announce_sends_one_frame_that_neighbours_see(world: World, vip: Vip) -> None:
    world.vips.add(vip)
    seen = world.announcements(lambda: world.vips.announce(vip))
    assert seen[:1] == [Announcement("va", world.mac("va"), vip.address)]
    assert set(seen) == {seen[0]}


def test_announce_a_virtual_mac_from_the_interface_address(world: World) -> None:
    """A farm: the ARP payload names the virtual MAC, the frame leaves from the real one (the
    virtual MAC must never be a frame source, or switches would stop flooding it)."""
    world.vips.add(V4)
    vmac = bytes.fromhex("02480ac800c8")
    seen = world.announcements(lambda: world.vips.announce(V4, vmac))
    assert seen[:1] == [Announcement("va", f"02:48:0a:c8:00:c8 from {world.mac('va')}", V4.address)]


def test_announce_on_the_resolved_interface(world: World) -> None:
    vip = Vip("10.201.0.9", 24, local_address="10.201.0.1")
    world.vips.add(vip)
    seen = world.announcements(lambda: world.vips.announce(vip))
    assert seen[:1] == [Announcement("vx", world.mac("vx"), "10.201.0.9")]


# -- the real adapter only -------------------------------------------------------------------


@pytest.mark.parametrize("vip", [V4, V6], ids=["ipv4", "ipv6"])
def test_announcement_updates_the_neighbours_cache(real_world: RealWorld, vip: Vip) -> None:
    """What the announcement is for: a client that knew the VIP at another MAC now uses ours."""
    old = "02:00:00:00:00:99"
    netns.ip("neigh", "replace", vip.address, "lladdr", old, "dev", "vb", "nud", "stale",
             ns=real_world.peer)  # fmt: skip
    assert real_world.peer_neighbour(vip.address, "vb") == old
    if vip.version == 6:  # the kernel routes multicast on a new link only once it has carrier
        local_routes = ("-6", "route", "show", "table", "local", "dev", "vb")
        wait_until(
            lambda: "ff00::/8" in netns.ip(*local_routes, ns=real_world.peer), 5, "IPv6 on vb"
        )
    real_world.vips.add(vip)
    real_world.vips.announce(vip)
    ours = real_world.mac("va")
    wait_until(lambda: real_world.peer_neighbour(vip.address, "vb") == ours, 3, "the peer's cache")


def test_real_ipv4_vips_are_labelled(real_world: RealWorld) -> None:
    """`ip addr` shows which addresses are hakit's (iproute2 6.1 does not show IFA_PROTO)."""
    real_world.vips.add(V4)
    assert real_world.labels("va")["10.200.0.200"] == "va:hakit"


def test_long_interface_name_gets_a_shortened_label(real_world: RealWorld) -> None:
    netns.ip("link", "add", "hakit-long-nic0", "type", "veth", "peer", "name", "hkt-p",
             ns=real_world.node)  # fmt: skip
    netns.ip("link", "set", "hakit-long-nic0", "up", ns=real_world.node)
    vip = Vip("10.202.0.1", 24, interface="hakit-long-nic0")
    assert real_world.vips.add(vip)
    assert real_world.labels("hakit-long-nic0")["10.202.0.1"] in ("", "hakit-long-nic0")


def test_usable_from_a_thread_running_an_event_loop(real_world: RealWorld) -> None:
    """pyroute2's IPRoute refuses a running loop; the adapter works from any thread."""

    async def main() -> tuple[bool, bool]:
        return real_world.vips.add(V4), real_world.vips.present(V4)

    assert asyncio.run(main()) == (True, True)


def test_release_all_removes_every_vip_and_never_raises(real_world: RealWorld) -> None:
    gone = Vip("10.200.0.77", 24, interface="vx")  # never added
    missing = Vip("10.203.0.1", 24, interface="nope0")
    real_world.vips.add(V4)
    real_world.vips.add(V6)
    with netns.inside(real_world.node):
        messages = release_all([V4, V6, gone, missing])
    assert messages == [
        "released VIP 10.200.0.200/24 from va",
        "released VIP fd00:200::200/64 from va",
        "VIP 10.200.0.77/24 was not configured",
        "VIP 10.203.0.1/24 was not configured",
    ]
    assert real_world.addresses("va") == NODE_ADDRESSES["va"]
    assert release_all([]) == []


def test_a_vip_left_on_another_interface_is_still_removed(real_world: RealWorld) -> None:
    """remove() looks everywhere: a VIP must not survive on an interface it was moved from."""
    netns.ip("addr", "add", "10.200.0.200/24", "dev", "vx", ns=real_world.node)
    assert not real_world.vips.present(V4)  # not where it belongs
    assert real_world.vips.remove(V4) is True
    assert "10.200.0.200/24" not in real_world.addresses("vx")


def test_announce_on_a_down_interface_says_so(real_world: RealWorld) -> None:
    real_world.vips.add(V4)
    netns.ip("link", "set", "va", "down", ns=real_world.node)
    with pytest.raises(VipError, match=r"on va: ENETDOWN.*down"):
        real_world.vips.announce(V4)


# -- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": "10.0.0.256", "prefixlen": 24, "interface": "eth0"}, "not an IPv4 or IPv6"),
        ({"address": "10.0.0.5", "prefixlen": 33, "interface": "eth0"}, "out of range"),
        ({"address": "10.0.0.5", "prefixlen": 24}, "interface name or a local address"),
        ({"address": "10.0.0.5", "prefixlen": 24, "local_address": "fd00::1"}, "same family"),
        ({"address": "10.0.0.5", "prefixlen": 24, "interface": "x" * 16}, "1 to 15 characters"),
        ({"address": "10.0.0.5", "prefixlen": 24, "interface": "e", "label": "a b"}, "label"),
    ],
)
def test_invalid_vip_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(VipError, match=message):
        Vip(**kwargs)  # type: ignore[arg-type]


def test_vip_addresses_are_normalised() -> None:
    assert Vip("FD00:0200::0:200", 64, local_address="fd00:200:0::1") == Vip(
        "fd00:200::200", 64, local_address="fd00:200::1"
    )
    assert str(V6) == "fd00:200::200/64"


# -- probing before taking a VIP (RFC 5227 duplicate address detection) -------------------------


def test_a_free_address_is_probed_and_found_free(world: World) -> None:
    assert world.vips.probe(V4, Probe(count=2, interval=0.05)) is None


def test_an_address_another_host_uses_is_found_with_its_mac(world: World) -> None:
    mac = world.occupy(V4.address)
    assert world.vips.probe(V4, Probe(count=2, interval=0.05, peers=(PEER_IP,))) == InUse(mac)
    # the kernel of the node was not told anything by the probe (sender IP 0.0.0.0)
    assert str(V4) not in world.addresses("va")


def test_an_address_the_peer_node_holds_is_reported_as_the_peer(world: World) -> None:
    mac = world.occupy(V4.address)
    assert world.know_peer() == mac
    found = world.vips.probe(V4, Probe(count=2, interval=0.05, peers=(PEER_IP,)))
    assert found == InUse(mac, PEER_IP)


def test_nothing_is_probed_when_off_for_ipv6_or_when_the_vip_is_already_here(
    world: World,
) -> None:
    world.occupy(V4.address)
    assert world.vips.probe(V4, Probe(count=0)) is None
    assert world.vips.probe(V6, Probe()) is None
    world.vips.add(V4)
    assert world.vips.probe(V4, Probe()) is None
