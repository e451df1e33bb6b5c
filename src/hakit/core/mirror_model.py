"""The mirror module's state, events and actions (the vocabulary of `core/mirror.py`). Pure.

Phases and the operations behind them, the persistent data generation and how two are compared,
the peer as published in its heartbeats, and the compact form a node publishes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from hakit.core.outcomes import Accepted, Explain, Refused

HISTORY_KEPT = 64


class Phase(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"  # prestart
    WAITING = "waiting"  # started, no role yet (deciding, or blocked)
    PROMOTING = "promoting"  # [stop_second], add VIPs, start_prim
    ALONE = "alone"  # primary, no secondary
    PRIM = "prim"  # primary with a ready secondary
    RESTARTING = "restarting"  # stop_prim, start_prim (no failover)
    DEMOTING = "demoting"  # stop_prim, remove VIPs
    JOINING = "joining"  # start_second
    SYNCING = "syncing"  # secondary catching up with the primary
    SECOND = "second"  # secondary, up to date
    LEAVING = "leaving"  # stop_second
    STOPPING = "stopping"  # poststop


PRIMARYISH = frozenset({Phase.PROMOTING, Phase.ALONE, Phase.PRIM, Phase.RESTARTING, Phase.DEMOTING})
"""Phases in which a node holds (or may hold) the VIPs and the application."""


class Op(StrEnum):
    PRESTART = "prestart"
    BECOME_PRIMARY = "become-primary"
    RESTART_PRIMARY = "restart-primary"
    STOP_PRIMARY = "stop-primary"
    START_SECOND = "start-second"
    SYNC = "sync"
    STOP_SECOND = "stop-second"
    POSTSTOP = "poststop"


OP_OF_PHASE: dict[Phase, Op] = {
    Phase.STARTING: Op.PRESTART,
    Phase.PROMOTING: Op.BECOME_PRIMARY,
    Phase.RESTARTING: Op.RESTART_PRIMARY,
    Phase.DEMOTING: Op.STOP_PRIMARY,
    Phase.JOINING: Op.START_SECOND,
    Phase.SYNCING: Op.SYNC,
    Phase.LEAVING: Op.STOP_SECOND,
    Phase.STOPPING: Op.POSTSTOP,
}


class Cmd(StrEnum):
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    STOPSTART = "stopstart"
    SWAP = "swap"
    PRIM = "prim"
    SECOND = "second"
    PRIMFORCE = "primforce"
    FAILOVER_ON = "failover-on"
    FAILOVER_OFF = "failover-off"


class Want(StrEnum):
    NONE = "none"
    PRIM = "prim"  # operator asked this node to be primary
    FORCE = "force"  # primforce
    SECOND = "second"  # operator (or a swap) asked this node to be secondary


class Then(StrEnum):
    """What to do once the running operation ends."""

    NOTHING = "nothing"
    STOP = "stop"
    STOPSTART = "stopstart"
    SWAP = "swap"
    HOLD = "hold"  # once the role is left, wait in WAITING until the checkers release it


# --- data freshness ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    """What a node knows, persistently, about the freshness of its copy of the data."""

    gen: int = 0
    gen_id: str = ""  # "" = never initialised (first start)
    history: tuple[tuple[int, str], ...] = ()  # ancestors of this generation, newest last
    alone_ok: bool = False  # may become primary without hearing from the peer
    consistent: bool = True  # False while a resynchronisation is incomplete
    last_role: str = "none"  # primary | secondary | none

    def label(self) -> str:
        return f"generation {self.gen}" if self.gen_id else "no data generation yet"

    def next_generation(self, fresh_id: str) -> Data:
        hist = (*self.history, (self.gen, self.gen_id)) if self.gen_id else self.history
        return replace(self, gen=self.gen + 1, gen_id=fresh_id, history=hist[-HISTORY_KEPT:])


class Cmp(StrEnum):
    SAME = "same"
    NEWER = "newer"  # local data descends from the peer's
    OLDER = "older"
    DIVERGED = "diverged"


def compare(local: Data, peer: Data) -> Cmp:
    if local.gen_id == peer.gen_id:
        return Cmp.SAME
    if not peer.gen_id or (peer.gen, peer.gen_id) in local.history:
        return Cmp.NEWER
    if not local.gen_id or (local.gen, local.gen_id) in peer.history:
        return Cmp.OLDER
    return Cmp.DIVERGED


# --- the peer, as published in its heartbeats ------------------------------------------------


@dataclass(frozen=True)
class PeerInfo:
    alive: bool = False  # the node is alive (membership)
    installed: bool = False  # it runs this module and published its state
    phase: Phase = Phase.STOPPED
    data: Data = field(default_factory=Data)
    want: Want = Want.NONE
    handover: bool = False  # it is giving the primary role away (swap)
    since: float = 0.0  # primary since (its wall clock), 0 when not primary
    fresh: bool = False  # this node heard it within the vouching window (see `vouching`)
    vouches: bool = False  # it publishes that it sees this node as primary and will not take
    # over (see `vouching`)
    blocked: str = ""  # it published why it cannot go on (e.g. it cannot become secondary)

    @property
    def present(self) -> bool:
        return self.alive and self.installed

    @property
    def primary(self) -> bool:
        return self.present and self.phase in PRIMARYISH

    def describe(self) -> str:
        if not self.alive:
            return "lost"
        if not self.installed:
            return "alive, module not running there"
        return f"{self.phase.value}"


# --- the machine -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mirror:
    module: str
    local: str
    peer_name: str
    default_primary: str = "alone"
    keep: str = "first-primary"  # split-brain policy: who stays primary when both were
    failback_delay: float = 0.0  # s a returned default primary stays secondary before the swap
    failback_at: float = 0.0  # > 0: when the pending failback is due (see `Due`)
    phase: Phase = Phase.STOPPED
    data: Data = field(default_factory=Data)
    peer: PeerInfo = field(default_factory=PeerInfo)
    failover: bool = True
    want: Want = Want.NONE
    then: Then = Then.NOTHING
    handover: bool = False
    blocked: str = ""  # why WAITING is stuck (not-ready); "" while deciding
    join_failed: str = ""  # last attempt to become secondary failed: no automatic retry
    before_promotion: Data | None = None  # data state to restore if the promotion fails
    holds: tuple[str, ...] = ()  # why `wait` checkers hold the module (core/checks.py)
    failed: str = ""  # why a checker stopped the module (shown until the next start)
    primary_since: float = 0.0  # when this node last became primary (split-brain policy)
    split_note: str = ""  # a split brain was resolved against this node: why (for the report)
    split_seen: bool = False  # both primary: decided (stays True while the peer is primary)
    arbitrated: bool = False  # a witness, a ping witness or fencing must allow the primary role
    exclusive: bool = False  # that arbiter grants the role to one node at a time (a lease)
    lease: bool = False  # the arbiter allows this node to be primary (witness lease held)
    asking: bool = False  # waiting for the arbiter before becoming primary
    arbiter_note: str = ""  # the arbiter's last word (who holds the lease, why it refused)
    forced: bool = False  # primary by `primforce`: the operator, not the arbiter, allowed it
    confirm_after: float = 0.0  # > 0: the replication to the secondary broke at this time and
    # the application's writes since are held until the arbiter grants a request asked after it
    reason: str = ""  # the last explanation
    since: float = 0.0

    def display(self) -> tuple[str, str]:
        """(state, status) of the interface contract."""
        p = self.phase
        if p is Phase.STOPPED:
            return "STOP", "not-ready"
        if p is Phase.WAITING:
            return "WAIT", "not-ready" if self.blocked else "transient"
        if p in (Phase.STARTING, Phase.DEMOTING, Phase.LEAVING, Phase.STOPPING):
            return "WAIT", "transient"
        if p is Phase.PROMOTING:
            return "ALONE", "transient"
        if p is Phase.RESTARTING:
            return ("PRIM" if self.peer_second_ready() else "ALONE"), "transient"
        if p is Phase.ALONE:
            return "ALONE", "transient" if self.confirm_after else "ready"
        if p is Phase.PRIM:
            return "PRIM", "ready"
        if p in (Phase.JOINING, Phase.SYNCING) or self.asking:
            return "SECOND", "transient"  # (asking: its primary is lost, the arbiter decides)
        return "SECOND", "ready"

    def peer_second_ready(self) -> bool:
        return self.peer.present and self.peer.phase is Phase.SECOND


# events


@dataclass(frozen=True)
class Command:
    cmd: Cmd


@dataclass(frozen=True)
class PeerChanged:
    peer: PeerInfo
    why: str = ""  # e.g. membership's sentence: "node1 lost: no heartbeat on net1 for 1.00 s"


@dataclass(frozen=True)
class OpDone:
    op: Op
    ok: bool
    detail: str = ""  # e.g. "start_prim exited 3 after 0.41 s (log: …)"


@dataclass(frozen=True)
class ReplicaLost:
    """The replication stream ended outside any operation (primary: the secondary stopped
    acknowledging; secondary: the stream broke, or `fatal`: its disk refused a write)."""

    detail: str
    fatal: bool = False
    complete: bool = False  # primary: our own orderly stop; the secondary has everything


@dataclass(frozen=True)
class Recover:
    """A checker failed and asks for `action` (restart, stopstart or stop), with the sentence
    (loop protection already applied: see core/checks.py)."""

    action: str
    message: str


@dataclass(frozen=True)
class Holds:
    """The reasons `wait` checkers hold the module (empty: nothing holds it any more)."""

    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Arbiter:
    """What the arbiter says (the runner asks the witness, pings the ping witness, runs the
    fencing script): `granted` = this node may be primary without seeing its peer."""

    granted: bool
    detail: str = ""
    # when the request (or ping round) that gave this answer started; 0: not a fresh answer
    # (not part of what the answer says: two answers with the same word are equal)
    asked: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class Due:
    """A time the machine asked to be woken at (`Wake`) has come: a pending failback."""


Event = Command | PeerChanged | OpDone | ReplicaLost | Recover | Holds | Arbiter | Due


def event_kind(ev: Event) -> str:
    if isinstance(ev, Command):
        return f"cmd:{ev.cmd.value}"
    if isinstance(ev, OpDone):
        return f"done:{ev.op.value}"
    if isinstance(ev, ReplicaLost):
        return "replica-lost"
    if isinstance(ev, Recover):
        return f"recover:{ev.action}"
    if isinstance(ev, Holds):
        return "holds"
    if isinstance(ev, Arbiter):
        return "arbiter"
    if isinstance(ev, Due):
        return "due"
    return "peer"


# actions


@dataclass(frozen=True)
class RunOp:
    op: Op
    force: bool = False  # stop scripts: skip the graceful call
    from_second: bool = False  # become-primary: stop the secondary side first
    action: str = ""  # why, for scripts' third argument: start, stop, swap, failover, ...
    preserve: str = ""  # start-second: keep the entries the resync changes, and why
    vips_first: bool = False  # stop-primary: release the VIPs before stop_prim (fencing itself)


@dataclass(frozen=True)
class Persist:
    data: Data
    failover: bool


@dataclass(frozen=True)
class Publish:
    """The state to put in our heartbeats changed (phase, data, want, handover)."""


@dataclass(frozen=True)
class HeldWrites:
    """The application's writes held since the replication broke (`Mirror.confirm_after`):
    release them (the arbiter confirmed that this node may go on alone, so the other node will
    not take over without them), or refuse them (EIO: they were never acknowledged)."""

    release: bool


@dataclass(frozen=True)
class Wake:
    """Send the machine `Due` at `at` (the executor's timer; an earlier one may be pending)."""

    at: float


Action = RunOp | Persist | Publish | HeldWrites | Wake | Explain | Accepted | Refused


Result = tuple[Mirror, tuple[Action, ...]]
Handler = Callable[[Mirror, Event, float, str], Result]


# --- what a node publishes in its heartbeats ---------------------------------------------------

PUBLISHED_HISTORY = 16


def vouching(m: Mirror) -> bool:
    """This node sees its peer as primary, heard it recently, and will not take the role over:
    published in its heartbeats, it lets a primary whose arbiter no longer answers stay primary
    (see `core/mirror_split.py`). A node that stops hearing its primary withdraws it within the
    vouching window, long before it declares the primary lost and asks for the role."""
    return m.phase not in PRIMARYISH and not m.asking and m.peer.primary and m.peer.fresh


def unprotected(m: Mirror) -> str:
    """Why this node serves the application without a replica ("" when it does not serve it or
    its peer is a ready secondary): shown loudly in the state, never as protected."""
    if m.phase not in PRIMARYISH or m.phase is Phase.PRIM or m.peer_second_ready():
        return ""
    p, peer = m.peer, m.peer_name
    if not p.alive:
        why = f"{peer} is lost"
    elif not p.installed:
        why = f"the module is not running on {peer}"
    elif p.blocked:
        why = f"{peer} cannot become secondary: {p.blocked}"
    elif p.phase in (Phase.JOINING, Phase.SYNCING):
        why = f"{peer} is synchronising"
    else:
        why = f"{peer} is {p.describe()}"
    return f"not replicated: {why}"


def serves_alone(m: Mirror) -> bool:
    """This node serves, or asks to serve, the application without a ready secondary: told to
    the witness with each request, so that once it is granted no other node whose copy then
    falls behind can be given the role (`hakit.core.witness`, "outdated")."""
    return m.asking or bool(unprotected(m))


MAX_PUBLISHED_REASON = 200  # a blocked node's reason in its heartbeat (kept under one MTU)


def to_wire(m: Mirror) -> dict[str, object]:
    """The compact form of our state carried in every heartbeat."""
    d = m.data
    wire: dict[str, object] = {
        "p": m.phase.value,
        "g": d.gen,
        "i": d.gen_id,
        "h": [list(x) for x in d.history[-PUBLISHED_HISTORY:]],
        "a": int(d.alone_ok),
        "c": int(d.consistent),
        "r": d.last_role,
        "w": m.want.value,
        "o": int(m.handover),
        "t": m.primary_since if m.phase in PRIMARYISH else 0.0,
        "v": int(vouching(m)),
    }
    if problem := m.blocked or m.join_failed:
        wire["b"] = problem[:MAX_PUBLISHED_REASON]
    return wire


def peer_from_wire(alive: bool, obj: object, fresh: bool = True) -> PeerInfo:
    """The peer as seen from its heartbeat payload; malformed or absent means not running.
    `fresh`: heard within the vouching window."""
    if not alive:
        return PeerInfo(alive=False)
    if not isinstance(obj, dict):
        return PeerInfo(alive=True, installed=False)
    try:
        data = Data(
            gen=int(obj["g"]),
            gen_id=str(obj["i"]),
            history=tuple((int(g), str(i)) for g, i in obj["h"]),
            alone_ok=bool(obj["a"]),
            consistent=bool(obj["c"]),
            last_role=str(obj["r"]),
        )
        since = float(obj.get("t", 0.0))
        if not math.isfinite(since):
            raise ValueError("primary_since is not a finite number")
        vouches = bool(obj.get("v", 0))
        blocked = str(obj.get("b", ""))[:MAX_PUBLISHED_REASON]
        return PeerInfo(
            True,
            True,
            Phase(obj["p"]),
            data,
            Want(obj["w"]),
            bool(obj["o"]),
            since,
            fresh,
            vouches,
            blocked,
        )
    except (KeyError, TypeError, ValueError, OverflowError):
        return PeerInfo(alive=True, installed=False)
