"""The heartbeat engine: membership machines + wire codec, driven by datagrams and time.

No I/O here: the caller feeds received datagrams and the clock, and sends what `outgoing()`
returns. The same engine runs in the real heartbeat process (UDP sockets, real clock) and in
simulations (fake network, fake clock).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from hakit import __version__
from hakit.core import membership as m
from hakit.wire.heartbeat import (
    NO_BOOT,
    VERSION,
    VERSIONS,
    Codec,
    DecodeError,
    Heartbeat,
    Reject,
)

PROBE_EVERY = 10  # rounds between probes of a peer confirmed at an older protocol version


@dataclass(frozen=True)
class Settings:
    cluster: str
    secret: bytes
    local: str
    interval: float
    timeout: float
    # peer -> network -> address; only networks the local node is attached to
    peers: Mapping[str, Mapping[str, str]]
    local_networks: tuple[str, ...]


@dataclass(frozen=True)
class Outgoing:
    network: str
    peer: str
    address: str
    data: bytes


@dataclass(frozen=True)
class Rejected:
    """A datagram dropped before it reached a membership machine (never authenticated)."""

    network: str
    reason: Reject
    detail: str


@dataclass(frozen=True)
class NetworkSilent:
    """No heartbeat from any peer on `network` for the timeout while another network works:
    a local problem (interface, firewall, the port taken) more likely than dead peers."""

    network: str
    reason: str


@dataclass(frozen=True)
class NetworkHeard:
    """Heartbeats arrive again on a network reported silent."""

    network: str
    reason: str


NetworkAction = NetworkSilent | NetworkHeard


@dataclass(frozen=True)
class Statistics:
    sent: int
    received: int
    accepted: int
    rejected: Mapping[str, int]
    peers: Mapping[str, m.Peer]


@dataclass
class Engine:
    settings: Settings
    boot: bytes
    seq: int
    now: float
    payload: bytes = b""
    peers: dict[str, m.Peer] = field(init=False)
    codec: Codec = field(init=False)
    sent: int = 0
    received: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    payload_changed: bool = False  # a peer published a new state: report it without delay
    # local networks this node cannot hear on (no socket): their silence is no evidence
    deaf: set[str] = field(default_factory=set)
    silent_networks: dict[str, str] = field(default_factory=dict)  # network -> reason

    def __post_init__(self) -> None:
        s = self.settings
        self.codec = Codec(s.cluster, s.secret, s.local)
        self.peers = {
            name: m.new_peer(name, tuple(n for n in s.local_networks if n in nets), self.now)
            for name, nets in s.peers.items()
        }

    def reconfigure(self, peers: Mapping[str, Mapping[str, str]], now: float) -> None:
        """New peers and addresses (a cluster configuration applied live): a peer that stays
        keeps its state and its links on the networks it keeps — no peer is lost or re-learnt
        for it —, a new one starts unknown, a removed one is forgotten."""
        self.settings = replace(self.settings, peers=peers)
        local = self.settings.local_networks
        out: dict[str, m.Peer] = {}
        for name, nets in peers.items():
            networks = tuple(n for n in local if n in nets)
            old = self.peers.get(name)
            if old is None:
                out[name] = m.new_peer(name, networks, now)
            elif old.networks == networks:
                out[name] = old
            else:
                links = {n: old.links.get(n, m.Link()) for n in networks}
                out[name] = replace(old, networks=networks, links=links)
        self.peers = out

    def receive(
        self, data: bytes, network: str, now: float, wall: float
    ) -> list[m.Action | Rejected]:
        self.received += 1
        try:
            hb = self.codec.decode(data, network)
        except DecodeError as e:
            self.rejected[e.reason] += 1
            return [Rejected(network, e.reason, e.detail)]
        peer = self.peers.get(hb.sender)
        if peer is None or network not in peer.networks:
            self.rejected[Reject.UNKNOWN_NODE] += 1
            return [
                Rejected(
                    network, Reject.UNKNOWN_NODE, f"sender {hb.sender!r} not expected on {network}"
                )
            ]
        ev = m.Received(
            network=network,
            boot=hb.boot,
            seq=hb.seq,
            echo_ok=hb.echo == self.boot,
            sent_at=hb.sent_at,
            wall_now=wall,
            payload=hb.payload,
            version=hb.version,
            release=hb.release,
        )
        new, actions = m.step(peer, ev, now, self.settings.timeout)
        self.peers[hb.sender] = new
        if new.payload != peer.payload:
            self.payload_changed = True
        dropped = [a for a in actions if isinstance(a, m.Dropped)]
        for d in dropped:
            self.rejected[d.reason] += 1
        if not dropped:
            self.accepted += 1
        return list(actions)

    def tick(self, now: float) -> list[m.Action | NetworkAction]:
        out: list[m.Action | NetworkAction] = []
        for name, peer in self.peers.items():
            if peer.state is m.PeerState.UNKNOWN and set(peer.networks) <= self.deaf:
                continue  # never heard, and cannot hear it: unknown, not lost
            new, actions = m.step(peer, m.Tick(), now, self.settings.timeout)
            self.peers[name] = new
            out.extend(actions)
        out.extend(self._network_health(now))
        return out

    def _network_health(self, now: float) -> list[NetworkAction]:
        """Report a network silent from every peer while another network still works."""
        working: set[str] = set()
        heard: dict[str, float] = {}
        for p in self.peers.values():
            for n in p.networks:
                link = p.link(n)
                if link.up:
                    working.add(n)
                if link.last_heard is not None:
                    heard[n] = max(heard.get(n, link.last_heard), link.last_heard)
        out: list[NetworkAction] = []
        for n in self.settings.local_networks:
            if n in self.deaf or not any(n in p.networks for p in self.peers.values()):
                continue
            if n in working:
                if self.silent_networks.pop(n, None) is not None:
                    out.append(NetworkHeard(n, f"heartbeats received again on {n}"))
                continue
            others = sorted(working - {n})
            quiet = now - heard.get(n, self.now)
            if others and quiet >= self.settings.timeout and n not in self.silent_networks:
                since = f"for {quiet:.2f} s" if n in heard else f"since start ({quiet:.2f} s)"
                verb = "works" if len(others) == 1 else "work"
                reason = (
                    f"no heartbeat received on {n} from any peer {since} while "
                    f"{', '.join(others)} {verb}: check the interface/firewall, or another "
                    "process took the port"
                )
                self.silent_networks[n] = reason
                out.append(NetworkSilent(n, reason))
        return out

    def outgoing(self, wall: float) -> list[Outgoing]:
        """One heartbeat to every peer on every shared network (one sequence number per round),
        in the highest protocol version confirmed from that peer's current boot (the oldest
        one we speak until then). A peer not yet confirmed at our version also gets a probe in
        our version, with a sequence number of its own, every round while it is not confirmed
        at all, every `PROBE_EVERY` rounds once it is (an older release rejects the probe and
        counts it; a release like ours answers in our version from then on)."""
        probe_seq = self.seq + 1
        probing = [
            name
            for name, p in self.peers.items()
            if p.protocol < VERSION and (p.protocol == 0 or probe_seq % PROBE_EVERY == 0)
        ]
        if probing:
            self.seq += 1
        self.seq += 1
        out = []
        for name, addrs in self.settings.peers.items():
            peer = self.peers[name]
            echo = peer.heard_boot or NO_BOOT
            versions = [(max(peer.protocol, VERSIONS[0]), self.seq)]
            if name in probing:
                versions.insert(0, (VERSION, probe_seq))
            for net in peer.networks:
                for version, seq in versions:
                    hb = Heartbeat(
                        sender=self.settings.local,
                        receiver=name,
                        network=net,
                        boot=self.boot,
                        seq=seq,
                        sent_at=wall,
                        echo=echo,
                        payload=self.payload,
                        version=version,
                        release=__version__,
                    )
                    out.append(Outgoing(net, name, addrs[net], self.codec.encode(hb)))
        self.sent += len(out)
        return out

    def statistics(self) -> Statistics:
        return Statistics(
            sent=self.sent,
            received=self.received,
            accepted=self.accepted,
            rejected=dict(self.rejected),
            peers=dict(self.peers),
        )
