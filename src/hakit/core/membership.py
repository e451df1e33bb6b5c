"""Membership: which peers are alive, on which networks. A pure, table-driven state machine.

One machine per peer. Inputs are already-authenticated heartbeats and the passing of time; the
outputs are a new frozen `Peer` and the actions to report (every change with its reason).

Rules:
- a link (peer, network) is up while a fresh heartbeat arrived on it within `timeout`;
- a peer is lost only when every link to it is down (silent on every network for `timeout`);
- a heartbeat counts only when it is fresh: sequence number above the highest seen on that
  network for that boot, a boot that is not retired and not older than the current one;
- a new boot of the peer is confirmed (counted) only once its heartbeats echo *our* boot id,
  which no recorded datagram can do: replaying captured heartbeats never resurrects a peer,
  even to a receiver that just restarted and has no memory of sequence numbers.

The machine is `step(peer, event, now, timeout) -> (peer, actions)`; `TRANSITIONS` lists every
(state, event kind) pair that may happen; any other pair raises `UnexpectedEvent`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from hakit.wire.heartbeat import Reject

RETIRED_BOOTS_KEPT = 8


class PeerState(StrEnum):
    UNKNOWN = "unknown"  # never heard since we started, and not yet past the timeout
    ALIVE = "alive"
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class Link:
    up: bool = False
    last_heard: float | None = None  # monotonic time of the last fresh heartbeat
    seq: int = -1  # highest sequence number accepted on this link for the current boot
    heard: int = 0  # fresh heartbeats accepted on this link, every boot (for the metrics)


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    networks: tuple[str, ...]
    state: PeerState = PeerState.UNKNOWN
    since: float = 0.0  # monotonic time the state was entered
    boot: bytes | None = None  # confirmed boot id
    heard_boot: bytes | None = None  # latest authenticated boot id heard (echoed back)
    retired: tuple[bytes, ...] = ()
    links: Mapping[str, Link] = field(default_factory=dict)
    payload: bytes = b""
    clock_offset: float | None = None  # peer wall clock minus ours, at the last heartbeat
    protocol: int = 0  # highest heartbeat version confirmed from its current boot (0: none)
    release: str = ""  # its hakit release, as its heartbeats say (protocol 2 and later)

    def link(self, network: str) -> Link:
        return self.links.get(network, Link())

    def up_networks(self) -> list[str]:
        return [n for n in self.networks if self.link(n).up]

    def last_heard(self) -> float | None:
        times = [t for t in (self.link(n).last_heard for n in self.networks) if t is not None]
        return max(times) if times else None


def new_peer(name: str, networks: tuple[str, ...], now: float) -> Peer:
    return Peer(name=name, networks=networks, since=now, links={n: Link() for n in networks})


# --- events ----------------------------------------------------------------------------------


class Kind(StrEnum):
    FRESH = "fresh"  # a confirmed heartbeat of the current boot
    REBOOTED = "rebooted"  # a confirmed heartbeat of a new boot of the peer
    LINK_SILENT = "link-silent"  # a link timed out, other links still up
    ALL_SILENT = "all-silent"  # every link is (now) down, or never heard after the timeout


@dataclass(frozen=True, slots=True)
class Received:
    """An authenticated heartbeat from this peer on `network`."""

    network: str
    boot: bytes
    seq: int
    echo_ok: bool  # it echoes our current boot id
    sent_at: float  # peer wall clock
    wall_now: float  # our wall clock at reception
    payload: bytes = b""
    version: int = 1  # heartbeat protocol version of the datagram
    release: str = ""  # the peer's hakit release (protocol 2 and later)


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes (the runner calls this every fraction of the heartbeat interval)."""


Event = Received | Tick


# --- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerUp:
    peer: str
    network: str
    reason: str


@dataclass(frozen=True, slots=True)
class PeerLost:
    peer: str
    reason: str


@dataclass(frozen=True, slots=True)
class PeerRestarted:
    peer: str
    network: str
    reason: str


@dataclass(frozen=True, slots=True)
class LinkUp:
    peer: str
    network: str
    reason: str


@dataclass(frozen=True, slots=True)
class LinkDown:
    peer: str
    network: str
    reason: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """A heartbeat was authenticated but rejected (replayed, old boot)."""

    peer: str
    network: str
    reason: Reject
    detail: str


Action = PeerUp | PeerLost | PeerRestarted | LinkUp | LinkDown | Dropped


class UnexpectedEvent(Exception):
    """A (state, event) pair the transition table does not allow: a bug, never ignored."""


# --- classification: raw event -> machine event ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Classified:
    kind: Kind | None  # None: nothing for the state machine (unconfirmed or dropped)
    peer: Peer  # peer with bookkeeping already applied (heard boot, link refresh)
    actions: tuple[Action, ...] = ()
    network: str = ""


def _fmt(seconds: float) -> str:
    return f"{seconds:.2f} s"


def _classify_received(p: Peer, ev: Received, now: float) -> Classified:
    net = ev.network
    if ev.boot in p.retired:
        return Classified(None, p, (Dropped(p.name, net, Reject.OLD_BOOT, "retired boot id"),))
    current = p.boot
    new_boot = current is None or ev.boot != current
    if (
        new_boot
        and current is not None
        and ev.boot[:8] < current[:8]
        and p.state is not PeerState.LOST
    ):
        # Older than the boot we know while that boot is alive: a replay of a previous life.
        return Classified(
            None, p, (Dropped(p.name, net, Reject.OLD_BOOT, "boot older than the current one"),)
        )
    heard = p.heard_boot
    if heard is None or ev.boot == heard or ev.boot[:8] >= heard[:8]:
        p = replace(p, heard_boot=ev.boot)
    if not new_boot and ev.seq <= p.link(net).seq:
        return Classified(
            None,
            p,
            (
                Dropped(
                    p.name, net, Reject.REPLAYED, f"sequence {ev.seq} ≤ {p.link(net).seq} on {net}"
                ),
            ),
        )
    if not ev.echo_ok:
        # Authentic but not yet proven fresh: the peer has not heard this boot of ours yet.
        # We now echo its boot id; its next heartbeat will confirm it.
        return Classified(None, p)
    links = dict(p.links)
    if new_boot:
        retired = p.retired if current is None else ((*p.retired, current))[-RETIRED_BOOTS_KEPT:]
        links = {n: Link(heard=p.link(n).heard) for n in p.networks}
        p = replace(p, boot=ev.boot, retired=retired)
    was_up = links[net].up if net in links else False
    heard_before = net in links and links[net].last_heard is not None
    count = links[net].heard if net in links else 0
    links[net] = Link(up=True, last_heard=now, seq=ev.seq, heard=count + 1)
    protocol = ev.version if new_boot else max(p.protocol, ev.version)
    p = replace(
        p,
        links=links,
        payload=ev.payload,
        clock_offset=ev.sent_at - ev.wall_now,
        protocol=protocol,
        release=ev.release or ("" if new_boot else p.release),
    )
    kind = Kind.REBOOTED if (new_boot and current is not None) else Kind.FRESH
    actions: tuple[Action, ...] = ()
    if not was_up and kind is Kind.FRESH and p.state is PeerState.ALIVE:
        again = " again" if heard_before else ""
        actions = (LinkUp(p.name, net, f"{p.name} heard{again} on {net}"),)
    return Classified(kind, p, actions, net)


def _silence(link: Link, now: float) -> float:
    return 0.0 if link.last_heard is None else now - link.last_heard


def _classify_tick(p: Peer, now: float, timeout: float) -> Classified:
    if p.state is PeerState.UNKNOWN and not p.up_networks():
        if now - p.since >= timeout:
            return Classified(Kind.ALL_SILENT, p)
        return Classified(None, p)
    expired = [n for n in p.up_networks() if _silence(p.link(n), now) >= timeout]
    if not expired:
        return Classified(None, p)
    links = dict(p.links)
    actions: list[Action] = []
    for n in expired:
        silent = _silence(links[n], now)
        links[n] = replace(links[n], up=False)
        actions.append(LinkDown(p.name, n, f"no heartbeat from {p.name} on {n} for {_fmt(silent)}"))
    p = replace(p, links=links)
    kind = Kind.ALL_SILENT if not p.up_networks() else Kind.LINK_SILENT
    return Classified(kind, p, tuple(actions))


# --- the transition table --------------------------------------------------------------------

Handler = Callable[[Peer, Classified, float, float], tuple[Peer, tuple[Action, ...]]]


def _enter(p: Peer, state: PeerState, now: float) -> Peer:
    return replace(p, state=state, since=now)


def _up_first(
    p: Peer, c: Classified, now: float, timeout: float
) -> tuple[Peer, tuple[Action, ...]]:
    return _enter(p, PeerState.ALIVE, now), (
        *c.actions,
        PeerUp(p.name, c.network, f"{p.name} alive: first heartbeat, on {c.network}"),
    )


def _up_again(
    p: Peer, c: Classified, now: float, timeout: float
) -> tuple[Peer, tuple[Action, ...]]:
    why = "it restarted (new boot)" if c.kind is Kind.REBOOTED else "heartbeats resumed"
    return _enter(p, PeerState.ALIVE, now), (
        *c.actions,
        PeerUp(
            p.name,
            c.network,
            f"{p.name} alive again after {_fmt(now - p.since)} lost: {why}, on {c.network}",
        ),
    )


def _stay(p: Peer, c: Classified, now: float, timeout: float) -> tuple[Peer, tuple[Action, ...]]:
    return p, c.actions


def _restarted(
    p: Peer, c: Classified, now: float, timeout: float
) -> tuple[Peer, tuple[Action, ...]]:
    return _enter(p, PeerState.ALIVE, now), (
        *c.actions,
        PeerRestarted(
            p.name, c.network, f"{p.name} restarted (new boot) without missing the timeout"
        ),
    )


def _lost(p: Peer, c: Classified, now: float, timeout: float) -> tuple[Peer, tuple[Action, ...]]:
    if p.state is PeerState.UNKNOWN:
        nets = ", ".join(p.networks)
        reason = f"{p.name} lost: no heartbeat on {nets} since start ({_fmt(now - p.since)})"
    else:
        last = p.last_heard()
        silent = _fmt(now - last) if last is not None else "ever"
        nets = ", ".join(p.networks)
        reason = f"{p.name} lost: no heartbeat on {nets} for {silent} (timeout {_fmt(timeout)})"
    return _enter(p, PeerState.LOST, now), (*c.actions, PeerLost(p.name, reason))


TRANSITIONS: dict[tuple[PeerState, Kind], tuple[PeerState, Handler]] = {
    (PeerState.UNKNOWN, Kind.FRESH): (PeerState.ALIVE, _up_first),
    (PeerState.UNKNOWN, Kind.ALL_SILENT): (PeerState.LOST, _lost),
    (PeerState.ALIVE, Kind.FRESH): (PeerState.ALIVE, _stay),
    (PeerState.ALIVE, Kind.REBOOTED): (PeerState.ALIVE, _restarted),
    (PeerState.ALIVE, Kind.LINK_SILENT): (PeerState.ALIVE, _stay),
    (PeerState.ALIVE, Kind.ALL_SILENT): (PeerState.LOST, _lost),
    (PeerState.LOST, Kind.FRESH): (PeerState.ALIVE, _up_again),
    (PeerState.LOST, Kind.REBOOTED): (PeerState.ALIVE, _up_again),
}
"""(state, event kind) -> (next state, handler). Absent pairs cannot happen (`UnexpectedEvent`)."""


def step(p: Peer, ev: Event, now: float, timeout: float) -> tuple[Peer, tuple[Action, ...]]:
    c = (
        _classify_received(p, ev, now)
        if isinstance(ev, Received)
        else _classify_tick(p, now, timeout)
    )
    if c.kind is None:
        return c.peer, c.actions
    entry = TRANSITIONS.get((p.state, c.kind))
    if entry is None:
        raise UnexpectedEvent(f"peer {p.name}: event {c.kind} in state {p.state}")
    target, handler = entry
    new, actions = handler(c.peer, c, now, timeout)
    if new.state is not target:  # the table is the truth; a handler may not disagree
        raise UnexpectedEvent(f"handler for ({p.state}, {c.kind}) went to {new.state}")
    return new, actions
