"""The mirror module's state machine, per node. Pure and table-driven.

`step(m, event, now, fresh_id) -> (m', actions)`. Events are operator commands, changes of what
we know of the peer (membership + the state it publishes in its heartbeats), and completions of
the operations we asked the executor to run. `TRANSITIONS` maps (phase, event kind) to a handler;
a pair that is not in the table cannot happen and raises `UnexpectedEvent`. Refusing a command
is a normal outcome (a `Refused` action with the reason and what to do), never a silent no-op.

Safety rules enforced here:
- a node becomes primary only if no peer is primary (the peer publishes its phase; a peer that
  is releasing the primary role stays "primary" until its VIPs are gone) or the peer is lost;
- automatically, only with data known to be the newest: a new *generation* is persisted before
  each promotion and each time the primary loses its secondary; generations carry their history,
  so two nodes compare data (newer / older / same / diverged) like DRBD's generation UUIDs;
- a node that may have been overtaken (it was primary with a ready secondary, or secondary)
  never promotes itself alone after a restart: it waits for the peer or for `prim`;
- the very first start needs `prim` on the node holding the good data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from hakit.core.outcomes import Accepted, Explain, Refused, UnexpectedEvent

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
    lease: bool = False  # the arbiter allows this node to be primary (witness lease held)
    asking: bool = False  # waiting for the arbiter before becoming primary
    arbiter_note: str = ""  # the arbiter's last word (who holds the lease, why it refused)
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
            return "ALONE", "ready"
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


Event = Command | PeerChanged | OpDone | ReplicaLost | Recover | Holds | Arbiter


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


Action = RunOp | Persist | Publish | Explain | Accepted | Refused


Result = tuple[Mirror, tuple[Action, ...]]
Handler = Callable[[Mirror, Event, float, str], Result]


# --- helpers -----------------------------------------------------------------------------------


def _go(m: Mirror, phase: Phase, now: float, **kw: object) -> Mirror:
    return replace(m, phase=phase, since=now if phase is not m.phase else m.since, **kw)  # type: ignore[arg-type]


def _start_op(
    m: Mirror,
    phase: Phase,
    now: float,
    why: str,
    *,
    force: bool = False,
    preserve: str = "",
    vips_first: bool = False,
    **kw: object,
) -> Result:
    m2 = _go(m, phase, now, blocked="", reason=why, asking=False, **kw)
    run = RunOp(OP_OF_PHASE[phase], force=force, preserve=preserve, vips_first=vips_first)
    return m2, (Explain(why), Publish(), run)


def _name(m: Mirror) -> str:
    return f"{m.module} on {m.local}"


def _promote(
    m: Mirror, now: float, fresh_id: str, why: str, *, from_second: bool = False
) -> Result:
    """Persist a new generation first, then become primary (once the arbiter allows it)."""
    if m.arbitrated and not m.lease and m.want is not Want.FORCE:
        return _ask(m, now, why)
    data = replace(
        m.data.next_generation(fresh_id),
        alone_ok=not m.peer_second_ready(),
        consistent=True,
        last_role="primary",
    )
    m2 = _go(
        m,
        Phase.PROMOTING,
        now,
        data=data,
        want=Want.NONE,
        blocked="",
        reason=why,
        handover=False,
        before_promotion=m.data,
        primary_since=now,
        asking=False,
        split_note="",
    )
    steps = "stopping the secondary side, " if from_second else ""
    msg = (
        f"{_name(m)} becoming primary: {why}; {data.label()}; {steps}"
        "taking the VIPs, starting the application"
    )
    run = RunOp(Op.BECOME_PRIMARY, from_second=from_second)
    return m2, (Persist(data, m.failover), Explain(msg), Publish(), run)


def _ask(m: Mirror, now: float, why: str) -> Result:
    """Ready to become primary ({why}), but the arbiter has not allowed it (yet)."""
    note = m.arbiter_note or "no answer yet"
    text = f"{why}; waiting for the arbiter (witness, ping witness or fencing): {note}"
    if m.phase is Phase.SECOND:
        m2 = replace(m, asking=True, reason=text)
        if m.asking and m.reason == text:
            return m2, ()
        return m2, (Explain(f"{_name(m)} stays secondary: {text}", "warning"), Publish())
    m2, acts = _block(replace(m, asking=True), now, text)
    return m2, acts


def _block(m: Mirror, now: float, why: str) -> Result:
    m2 = _go(m, Phase.WAITING, now, blocked=why, reason=why)
    if m.phase is Phase.WAITING and m.blocked == why:
        return m2, ()
    return m2, (Explain(f"{_name(m)} waiting: {why}", "warning"), Publish())


def _wait_transient(m: Mirror, now: float, why: str) -> Result:
    m2 = _go(m, Phase.WAITING, now, blocked="", reason=why)
    if m.phase is Phase.WAITING and not m.blocked and m.reason == why:
        return m2, ()
    return m2, (Explain(f"{_name(m)} waiting: {why}"), Publish())


def _then_pending(
    m: Mirror, now: float, acts: tuple[Action, ...], leave: Phase, during: str
) -> Result:
    """An operation ended in a stable phase while a stop waited for it, or while a checker
    holds the module: leave the role now."""
    if m.then is Then.NOTHING and m.holds:
        m2, more = _start_op(
            replace(m, then=Then.HOLD),
            leave,
            now,
            f"{_name(m)}: held ({_holds_text(m)}) when {during} ended; leaving the role",
        )
        return m2, acts + more
    if m.then is Then.NOTHING:
        return m, acts
    m2, more = _start_op(m, leave, now, f"{_name(m)}: {m.then.value} requested during {during}")
    return m2, acts + more


def _holds_text(m: Mirror) -> str:
    return "; ".join(m.holds)


def _decide(m: Mirror, now: float, fresh_id: str) -> Result:
    """In WAITING: become primary, join as secondary, or keep waiting (and say why)."""
    p, d, peer = m.peer, m.data, m.peer_name
    if m.holds:
        return _block(m, now, f"held: {_holds_text(m)}; resumes by itself when it is back")
    if m.want is Want.FORCE:
        return _promote(m, now, fresh_id, "forced by `primforce`")
    if p.primary:
        if p.phase is not Phase.ALONE and p.phase is not Phase.PRIM:
            return _wait_transient(
                m, now, f"{peer} is {p.phase.value}; joining it when it is primary"
            )
        cmp = compare(d, p.data)
        if cmp in (Cmp.DIVERGED, Cmp.NEWER) and m.want is not Want.SECOND and not m.split_note:
            how = "neither descends from the other" if cmp is Cmp.DIVERGED else "this one is newer"
            return _block(
                m,
                now,
                f"{peer} is primary but the data differ ({d.label()} here, {p.data.label()} on "
                f"{peer}: {how}); joining would discard this node's changes: `hakit second` here "
                f"accepts that, or stop {peer} and `hakit prim` here to keep them",
            )
        if m.join_failed and m.want is not Want.SECOND:
            return _block(
                m,
                now,
                f"becoming secondary of {peer} failed ({m.join_failed}); "
                f"`hakit second {m.module}` retries",
            )
        keep = ""
        if cmp in (Cmp.DIVERGED, Cmp.NEWER):
            keep = (
                f"{m.local} had changes {peer} does not have ({d.label()} here, "
                f"{p.data.label()} on {peer}: "
                + ("diverged" if cmp is Cmp.DIVERGED else "this copy newer")
                + f"); {m.local} joins {peer} as secondary"
                + (f" ({m.split_note})" if m.split_note else " (`hakit second`)")
            )
        return _join(m, now, f"{peer} is primary ({p.phase.value})", keep)
    if m.want is Want.SECOND:
        if not (m.handover and (not p.present or p.phase is Phase.STOPPED)):
            return _wait_transient(m, now, f"waiting for {peer} to become primary")
        # The handover failed: the peer stopped instead of becoming primary.
        m = replace(m, want=Want.NONE, handover=False)
    if m.want is Want.PRIM:
        if not d.consistent:
            return _block(
                m, now, "data inconsistent (resynchronisation interrupted); `hakit primforce`"
            )
        return _promote(m, now, fresh_id, "requested by `prim`")
    if not d.gen_id:
        return _block(
            m,
            now,
            "first start: run `hakit prim` on the node holding the good data, then "
            "`hakit second` on the other",
        )
    if not d.consistent:
        return _block(
            m,
            now,
            "data inconsistent: its resynchronisation was interrupted; it can only become "
            f"secondary of {peer}, or primary with `hakit primforce` (loses {peer}'s changes)",
        )
    if p.present:
        cmp = compare(d, p.data)
        if cmp is Cmp.DIVERGED:
            return _block(
                m,
                now,
                f"data diverged from {peer}'s ({d.label()} vs {p.data.label()}); choose the "
                f"side to keep with `hakit prim` on it",
            )
        if cmp is Cmp.OLDER:
            if p.phase in (Phase.STOPPED,):
                return _block(
                    m,
                    now,
                    f"{peer} has newer data ({p.data.label()} vs {d.label()}): start the module "
                    f"on {peer} first, or `hakit prim` here to discard {peer}'s changes",
                )
            return _wait_transient(
                m, now, f"{peer} has newer data; waiting for it to become primary"
            )
        if p.phase in (Phase.JOINING, Phase.SYNCING, Phase.SECOND, Phase.LEAVING):
            return _wait_transient(m, now, f"{peer} is {p.phase.value}; waiting for it to settle")
        if cmp is Cmp.NEWER:
            return _promote(m, now, fresh_id, f"data newer than {peer}'s ({d.label()})")
        # same data on both sides
        if p.phase is Phase.STOPPED or p.want is Want.SECOND:
            return _promote(
                m, now, fresh_id, f"data as new as {peer}'s, which is not starting as primary"
            )
        if d.last_role == "primary" and p.data.last_role != "primary":
            return _promote(m, now, fresh_id, "this node was primary last")
        if p.data.last_role == "primary" and d.last_role != "primary":
            return _wait_transient(m, now, f"{peer} was primary last; waiting for it")
        preferred = (
            m.default_primary if m.default_primary in (m.local, peer) else min(m.local, peer)
        )
        if preferred == m.local:
            return _promote(m, now, fresh_id, f"same data on both nodes; {m.local} preferred")
        return _wait_transient(m, now, f"same data on both nodes; {peer} preferred")
    if not m.failover and not d.alone_ok:
        return _block(
            m,
            now,
            f"failover is off and {peer} {p.describe()}: waiting for an operator "
            f"(`hakit prim {m.module}` to take over here)",
        )
    if d.alone_ok:
        why = "was primary alone last" if p.alive is False else f"{peer} does not run the module"
        return _promote(
            m,
            now,
            fresh_id,
            f"{peer} {p.describe()}; this node {why}, data up to date ({d.label()})",
        )
    return _block(
        m,
        now,
        f"data may not be up to date: this node was {d.last_role} last and {peer} may have been "
        f"primary since ({peer} {p.describe()}); waiting for {peer}, or `hakit prim` if you are "
        "sure this node has the good data",
    )


def _join(m: Mirror, now: float, why: str, keep: str = "") -> Result:
    kept = "; the entries its resynchronisation changes are kept first" if keep else ""
    return _start_op(
        m,
        Phase.JOINING,
        now,
        f"{_name(m)} joining as secondary: {why}; starting secondary{kept}",
        want=Want.NONE,
        join_failed="",
        split_note="",
        preserve=keep,
    )


def _stop_now(m: Mirror, now: float, why: str) -> Result:
    """From a phase without a role: run poststop, then STOP."""
    return _start_op(m, Phase.STOPPING, now, f"{_name(m)} stopping: {why}", then=Then.NOTHING)


def _takeover(m: Mirror, now: float, fresh_id: str, why: str) -> Result:
    return _promote(m, now, fresh_id, why, from_second=True)


def _secondary_alone(m: Mirror, now: float, fresh_id: str, ev: PeerChanged) -> Result:
    """A secondary whose primary stopped being primary (lost, stopped, handing over)."""
    p, peer = m.peer, m.peer_name
    what = ev.why or f"{peer} {p.describe()}"
    if p.present and p.handover:
        return _takeover(m, now, fresh_id, f"{peer} hands the primary role over (swap)")
    if not m.failover:
        m2 = replace(m, then=Then.NOTHING)
        return _start_op(
            m2,
            Phase.LEAVING,
            now,
            f"{_name(m)}: {what}; failover is off: stopping the secondary side and waiting for "
            f"an operator (`hakit prim {m.module}` to take over)",
        )
    return _takeover(m, now, fresh_id, f"failover: {what}")


# --- handlers ----------------------------------------------------------------------------------


def _refuse(msg: str) -> Handler:
    def handler(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
        return m, (Refused(msg.format(m=m, state="{} {}".format(*m.display()), peer=m.peer_name)),)

    return handler


def _busy(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, Command)
    state, status = m.display()
    return m, (
        Refused(
            f"{_name(m)} is busy ({state} {status}: {m.phase.value}); "
            "retry when it is done, or `hakit stop`"
        ),
    )


WANT_OF = {Cmd.PRIM: Want.PRIM, Cmd.SECOND: Want.SECOND, Cmd.PRIMFORCE: Want.FORCE}


def _cmd_start(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, Command)
    refusal = _role_refusal(m, ev.cmd)
    if refusal:
        return m, (Refused(refusal),)
    m2, acts = _start_op(
        m,
        Phase.STARTING,
        now,
        f"{_name(m)} starting ({ev.cmd.value}): running prestart",
        want=WANT_OF.get(ev.cmd, Want.NONE),
        then=Then.NOTHING,
        join_failed="",
        failed="",
    )
    return m2, (Accepted(f"{m.module}: {ev.cmd.value} accepted"), *_warn_role(m, ev.cmd), *acts)


def _role_refusal(m: Mirror, cmd: Cmd) -> str:
    p, peer = m.peer, m.peer_name
    if cmd in (Cmd.PRIM, Cmd.PRIMFORCE) and p.primary:
        return (
            f"{peer} is primary ({p.phase.value}): `hakit swap {m.module}` moves the primary role "
            f"here, or stop it on {peer} first"
        )
    if cmd is Cmd.PRIM and not m.data.consistent:
        return (
            "this node's data is inconsistent (its resynchronisation was interrupted): "
            f"`hakit primforce {m.module}` forces it and discards {peer}'s changes"
        )
    if cmd is Cmd.SECOND and not p.primary:
        return f"`second` needs {peer} to be primary; it is {p.describe()}"
    return ""


def _warn_role(m: Mirror, cmd: Cmd) -> tuple[Action, ...]:
    if cmd is Cmd.PRIMFORCE:
        return (
            Explain(
                f"PRIMFORCE on {m.local}: {m.module} becomes primary with this node's data as it "
                f"is ({m.data.label()}, consistent={m.data.consistent}); changes only on "
                f"{m.peer_name} will be lost when it joins",
                "warning",
            ),
        )
    if (
        cmd is Cmd.PRIM
        and m.peer.present
        and compare(m.data, m.peer.data) in (Cmp.OLDER, Cmp.DIVERGED)
    ):
        return (
            Explain(
                f"prim on {m.local} with data older than or diverged from {m.peer_name}'s "
                f"({m.data.label()} vs {m.peer.data.label()}): {m.peer_name}'s changes will be "
                "lost when it joins",
                "warning",
            ),
        )
    return ()


def _cmd_role_in_waiting(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, Command)
    refusal = _role_refusal(m, ev.cmd)
    if refusal:
        return m, (Refused(refusal),)
    m2, acts = _decide(replace(m, want=WANT_OF[ev.cmd], blocked=""), now, fresh_id)
    return m2, (Accepted(f"{m.module}: {ev.cmd.value} accepted"), *_warn_role(m, ev.cmd), *acts)


def _cmd_stop_idle(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    m2, acts = _stop_now(m, now, "requested by `stop`")
    return m2, (Accepted(f"{m.module}: stopping"), *acts)


def _cmd_stop_primary(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, Command)
    then = Then.STOPSTART if ev.cmd is Cmd.STOPSTART else Then.STOP
    who = f"{m.peer_name} takes over" if m.peer_second_ready() and m.failover else "no failover"
    m2, acts = _start_op(
        m,
        Phase.DEMOTING,
        now,
        f"{_name(m)} leaving primary ({ev.cmd.value}; {who}): stopping application, releasing VIPs",
        then=then,
    )
    return m2, (Accepted(f"{m.module}: {ev.cmd.value} accepted"), *acts)


def _cmd_stop_second(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, Command)
    then = Then.STOPSTART if ev.cmd is Cmd.STOPSTART else Then.STOP
    m2, acts = _start_op(
        m, Phase.LEAVING, now, f"{_name(m)} leaving secondary ({ev.cmd.value})", then=then
    )
    return m2, (Accepted(f"{m.module}: {ev.cmd.value} accepted"), *acts)


def _cmd_stop_waiting(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, Command)
    then = Then.STOPSTART if ev.cmd is Cmd.STOPSTART else Then.NOTHING
    m2, acts = _start_op(m, Phase.STOPPING, now, f"{_name(m)} stopping ({ev.cmd.value})", then=then)
    return m2, (Accepted(f"{m.module}: {ev.cmd.value} accepted"), *acts)


def _cmd_stop_later(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    """A stop while an operation runs: done right after it."""
    assert isinstance(ev, Command)
    then = Then.STOPSTART if ev.cmd is Cmd.STOPSTART else Then.STOP
    m2 = replace(m, then=then)
    return m2, (
        Accepted(f"{m.module}: {ev.cmd.value} after the current step ({m.phase.value})"),
        Explain(f"{_name(m)}: {ev.cmd.value} requested during {m.phase.value}; done when it ends"),
    )


def _cmd_already_stopped(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    return m, (Accepted(f"{m.module} is already stopped on {m.local}"),)


def _cmd_restart(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    m2, acts = _start_op(
        m, Phase.RESTARTING, now, f"{_name(m)} restarting the application (no failover)"
    )
    return m2, (Accepted(f"{m.module}: restart accepted"), *acts)


def _cmd_swap(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    if m.phase is not Phase.PRIM or not m.peer_second_ready():
        return m, (Refused(f"swap needs a ready secondary; {m.peer_name} is {m.peer.describe()}"),)
    m2, acts = _start_op(
        m,
        Phase.DEMOTING,
        now,
        f"{_name(m)} swap: handing the primary role to {m.peer_name}",
        then=Then.SWAP,
    )
    return m2, (Accepted(f"{m.module}: swap accepted"), *acts)


def _cmd_swap_on_second(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    return m, (Refused(f"run swap on the primary: `hakit swap {m.module} --node {m.peer_name}`"),)


def _cmd_failover(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, Command)
    on = ev.cmd is Cmd.FAILOVER_ON
    if on == m.failover:
        return m, (Accepted(f"{m.module}: failover already {'on' if on else 'off'}"),)
    m2 = replace(m, failover=on)
    acts: tuple[Action, ...] = (
        Accepted(f"{m.module}: failover {'on' if on else 'off'}"),
        Persist(m.data, on),
        Explain(f"{_name(m)}: automatic failover turned {'on' if on else 'off'} by operator"),
    )
    return m2, acts


def _cmd_failover_waiting(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    """In WAITING, turning failover on may unblock a secondary whose primary is gone."""
    m2, acts = _cmd_failover(m, ev, now, fresh_id)
    if m2.failover and not m.failover:
        m2, more = _decide(m2, now, fresh_id)
        acts += more
    return m2, acts


# peer changes


def _peer_update(m: Mirror, ev: Event) -> Mirror:
    assert isinstance(ev, PeerChanged)
    return replace(m, peer=ev.peer)


def _peer_note(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    """Transient phases and STOP: remember; decisions are taken when the operation ends.

    Except one: a node that may still run the application (promoting, restarting, demoting)
    and loses its ready secondary starts a new generation at once, as ALONE would: whatever
    the application writes from now on is not on the peer.
    """
    m2 = _peer_update(m, ev)
    if m.phase in PRIMARYISH and m.peer_second_ready() and not m2.peer_second_ready():
        data = replace(m2.data.next_generation(fresh_id), alone_ok=True)
        why = (
            ev.why
            if isinstance(ev, PeerChanged) and ev.why
            else f"{m.peer_name} {m2.peer.describe()}"
        )
        return replace(m2, data=data), (
            Persist(data, m.failover),
            Explain(
                f"{_name(m)} ({m.phase.value}): {why}; {m.peer_name}'s copy is stale from now "
                f"({data.label()})",
                "warning",
            ),
            Publish(),
        )
    return m2, ()


def _peer_waiting(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    return _decide(_peer_update(m, ev), now, fresh_id)


def _peer_primary(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    m2 = _peer_update(m, ev)
    was_ready = m.peer_second_ready()
    is_ready = m2.peer_second_ready()
    peer = m.peer_name
    if m.arbitrated and not m.lease and m.peer.alive and not m2.peer.alive:
        why = ev.why if isinstance(ev, PeerChanged) and ev.why else f"{peer} lost"
        note = m.arbiter_note or "no answer"
        return _lost_arbiter(m2, now, f"{why}, and the arbiter does not grant the role ({note})")
    if m2.peer.primary:
        if m.split_seen:
            return m2, ()  # decided when it was first seen
        return _split_brain(m2, now)
    m2 = replace(m2, split_seen=False)
    if not m.peer.present and m2.peer.present and compare(m2.data, m2.peer.data) is Cmp.DIVERGED:
        # It comes back with diverged data, already out of the primary role (it saw this node
        # first and stepped down): with the manual policy this side steps down too; else the
        # split brain is reported here as well.
        if m.keep == "manual":
            return _split_brain(m2, now)
        return m2, (
            Explain(
                f"SPLIT BRAIN on {m.module}: {peer} was primary too during the split "
                f"({m2.peer.data.label()} there, {m2.data.label()} here); {m.local} stays "
                f"primary (policy keep: {m.keep}); {peer} rejoins as secondary and keeps its "
                "changes in a dated folder",
                "error",
            ),
        )
    if is_ready and not was_ready:
        data = replace(m2.data, alone_ok=False)
        m3 = _go(m2, Phase.PRIM, now, data=data)
        acts: tuple[Action, ...] = (
            Persist(data, m.failover),
            Explain(f"{_name(m)} PRIM: {peer} is a ready secondary ({data.label()})"),
            Publish(),
        )
        if m.default_primary == peer:
            m4, more = _start_op(
                m3,
                Phase.DEMOTING,
                now,
                f"{_name(m)} failback: {peer} is the default primary; swapping",
                then=Then.SWAP,
            )
            return m4, acts + more
        return m3, acts
    if was_ready and not is_ready:
        data = replace(m2.data.next_generation(fresh_id), alone_ok=True)
        why = ev.why if isinstance(ev, PeerChanged) and ev.why else f"{peer} {m2.peer.describe()}"
        m3 = _go(m2, Phase.ALONE, now, data=data)
        return m3, (
            Persist(data, m.failover),
            Explain(
                f"{_name(m)} ALONE: {why}; {peer}'s copy is stale from now ({data.label()})",
                "warning",
            ),
            Publish(),
        )
    return m2, ()


def survivor(m: Mirror) -> str:
    """Who stays primary when both nodes are primary: the same answer on both nodes (each
    publishes since when it is primary). "" = nobody (policy `manual`)."""
    me, peer = m.local, m.peer_name
    if m.keep in (me, peer):
        return m.keep
    if m.keep == "manual":
        return ""
    mine, theirs = (m.primary_since, me), (m.peer.since, peer)
    first = min(mine, theirs)
    if m.keep == "last-primary":
        return max(mine, theirs)[1]
    return first[1]


def _split_brain(m: Mirror, now: float) -> Result:
    peer = m.peer_name
    keeper = survivor(m)
    head = (
        f"SPLIT BRAIN on {m.module}: {m.local} and {peer} are both primary (after a network "
        f"split: {m.data.label()} here, {m.peer.data.label()} on {peer})"
    )
    m = replace(m, split_seen=True)
    if keeper == m.local:
        return m, (
            Explain(
                f"{head}; policy keep: {m.keep}: {m.local} stays primary, {peer} becomes "
                "secondary and its changes are kept in a dated folder there",
                "error",
            ),
        )
    if keeper == peer:
        note = f"split brain resolved by policy keep: {m.keep} in favour of {peer}"
        return _start_op(
            replace(m, want=Want.SECOND, split_note=note),
            Phase.DEMOTING,
            now,
            f"{head}; policy keep: {m.keep}: {peer} stays primary; {m.local} leaves the primary "
            "role and rejoins as secondary, its changes kept in a dated folder",
            then=Then.HOLD,
        )
    return _start_op(
        m,
        Phase.DEMOTING,
        now,
        f"{head}; policy keep: manual: {m.local} leaves the primary role; choose the copy to "
        f"keep with `hakit prim {m.module}` on its node (the other one's changes are kept when "
        "it rejoins)",
        then=Then.HOLD,
    )


def _peer_second(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, PeerChanged)
    m2 = _peer_update(m, ev)
    if m2.peer.primary and m2.peer.data.gen_id not in ("", m.data.gen_id):
        # The primary started a new generation without us: it stopped replicating to us.
        return _start_op(
            m2,
            Phase.LEAVING,
            now,
            f"{_name(m)}: {m.peer_name} continues without this secondary "
            f"({m2.peer.data.label()}); leaving to resynchronise",
        )
    if m2.peer.primary:
        return replace(m2, asking=False), ()
    return _secondary_alone(m2, now, fresh_id, ev)


# operation completions


def _after_prestart(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, OpDone)
    if not ev.ok:
        return _stop_now(replace(m, want=Want.NONE), now, f"prestart failed: {ev.detail}")
    if m.then in (Then.STOP, Then.STOPSTART):
        return _stop_now(replace(m, then=Then.NOTHING), now, "stop requested during start")
    return _decide(_go(m, Phase.WAITING, now), now, fresh_id)


def _after_become_primary(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, OpDone)
    if not ev.ok:
        # The application never started: give up the claim on a new generation, so that the
        # other node (same data as before the attempt) may take over.
        data = replace(m.before_promotion or m.data, alone_ok=False)
        m2, acts = _start_op(
            replace(m, data=data, then=Then.STOP),
            Phase.DEMOTING,
            now,
            f"{_name(m)} cleaning up after the failed start (stop_prim, VIPs)",
            force=True,
        )
        failed = Explain(f"{_name(m)} start as primary FAILED: {ev.detail}", "error")
        return m2, (Persist(data, m.failover), failed, *acts)
    phase = Phase.PRIM if m.peer_second_ready() else Phase.ALONE
    m2 = _go(m, phase, now, reason=f"primary ({phase.value})")
    acts2: tuple[Action, ...] = (
        Explain(f"{_name(m)} {phase.value.upper()}: application started, VIPs held"),
        Publish(),
    )
    if m2.peer.primary and m2.then is Then.NOTHING:  # met the peer while promoting
        m3, more = _split_brain(m2, now)
        return m3, acts2 + more
    return _then_pending(m2, now, acts2, Phase.DEMOTING, "start")


def _after_restart(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, OpDone)
    if not ev.ok:
        m2 = replace(m, then=Then.STOP)
        return _start_op(
            m2, Phase.DEMOTING, now, f"{_name(m)} restart FAILED: {ev.detail}; stopping", force=True
        )
    phase = Phase.PRIM if m.peer_second_ready() else Phase.ALONE
    m2 = _go(m, phase, now)
    restarted = (Explain(f"{_name(m)} application restarted"), Publish())
    return _then_pending(m2, now, restarted, Phase.DEMOTING, "restart")


def _after_stop_primary(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, OpDone)
    note: tuple[Action, ...] = ()
    if not ev.ok:
        note = (
            Explain(f"{_name(m)} stop_prim failed: {ev.detail} (VIPs released anyway)", "error"),
        )
    # Leaving the primary role: if a ready secondary may take over, our copy may become stale.
    data = replace(m.data, alone_ok=not (m.peer_second_ready() or m.then is Then.SWAP))
    m2 = replace(m, data=data)
    persist = Persist(data, m.failover)
    if m.then is Then.SWAP:
        m3, acts = _wait_transient(
            replace(m2, want=Want.SECOND, handover=True, then=Then.NOTHING),
            now,
            f"handing over to {m.peer_name}",
        )
        return m3, (persist, *note, *acts)
    if m.then is Then.HOLD:
        m3, acts = _decide(_go(replace(m2, then=Then.NOTHING), Phase.WAITING, now), now, fresh_id)
        return m3, (persist, *note, *acts)
    then = m.then
    m3, acts = _start_op(
        replace(m2, then=then if then is Then.STOPSTART else Then.NOTHING),
        Phase.STOPPING,
        now,
        f"{_name(m)} stopping: running poststop",
    )
    return m3, (persist, *note, *acts)


def _after_start_second(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, OpDone)
    if not ev.ok:
        return _start_op(
            replace(m, then=Then.STOP, join_failed=f"start_second failed: {ev.detail}"),
            Phase.LEAVING,
            now,
            f"{_name(m)} start_second FAILED: {ev.detail}",
            force=True,
        )
    if m.then is not Then.NOTHING or not m.peer.primary:
        return _start_op(
            m,
            Phase.LEAVING,
            now,
            f"{_name(m)} leaving secondary: "
            + (m.then.value if m.then is not Then.NOTHING else f"{m.peer_name} is not primary"),
        )
    data = replace(m.data, consistent=False, last_role="secondary", alone_ok=False)
    m2 = replace(m, data=data)
    m3, acts = _start_op(m2, Phase.SYNCING, now, f"{_name(m)} synchronising from {m.peer_name}")
    return m3, (Persist(data, m.failover), *acts)


def _after_sync(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, OpDone)
    if not ev.ok or not m.peer.primary:
        why = ev.detail if not ev.ok else f"{m.peer_name} is no longer primary"
        if not ev.ok:
            m = replace(m, join_failed=f"synchronisation failed: {ev.detail}")
        return _start_op(
            m, Phase.LEAVING, now, f"{_name(m)} synchronisation ended: {why}; data inconsistent"
        )
    p = m.peer.data
    data = replace(
        m.data,
        gen=p.gen,
        gen_id=p.gen_id,
        history=p.history,
        consistent=True,
        alone_ok=False,
        last_role="secondary",
    )
    m2 = _go(m, Phase.SECOND, now, data=data)
    acts: tuple[Action, ...] = (
        Persist(data, m.failover),
        Explain(f"{_name(m)} SECOND ready: up to date with {m.peer_name} ({data.label()})"),
        Publish(),
    )
    return _then_pending(m2, now, acts, Phase.LEAVING, "synchronisation")


def _after_stop_second(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, OpDone)
    note: tuple[Action, ...] = ()
    if not ev.ok:
        note = (Explain(f"{_name(m)} stop_second failed: {ev.detail}", "error"),)
    data = replace(m.data, alone_ok=False)
    m2 = replace(m, data=data)
    if m.then in (Then.STOP, Then.STOPSTART):
        m3, acts = _start_op(
            replace(m2, then=m.then if m.then is Then.STOPSTART else Then.NOTHING),
            Phase.STOPPING,
            now,
            f"{_name(m)} stopping: running poststop",
        )
        return m3, (Persist(data, m.failover), *note, *acts)
    m3, acts = _decide(_go(replace(m2, then=Then.NOTHING), Phase.WAITING, now), now, fresh_id)
    return m3, (Persist(data, m.failover), *note, *acts)


def _after_poststop(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, OpDone)
    note: tuple[Action, ...] = ()
    if not ev.ok:
        note = (Explain(f"{_name(m)} poststop failed: {ev.detail}", "error"),)
    if m.then is Then.STOPSTART:
        m2, acts = _start_op(
            replace(m, then=Then.NOTHING, want=Want.NONE, handover=False),
            Phase.STARTING,
            now,
            f"{_name(m)} starting again (stopstart)",
        )
        return m2, (*note, *acts)
    m2 = _go(
        m,
        Phase.STOPPED,
        now,
        then=Then.NOTHING,
        want=Want.NONE,
        handover=False,
        blocked="",
        holds=(),
        reason=m.failed or "stopped",
    )
    return m2, (*note, Explain(f"{_name(m)} STOP"), Publish())


def _replica_lost_second(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    """A disk error here: leave (an operator must look). A stream that just ended: stay — if
    the primary died we take over (everything it acknowledged is here); if it lives, it
    continues alone with a new generation, and `_peer_second` then makes us resynchronise."""
    assert isinstance(ev, ReplicaLost)
    if not ev.fatal:
        return m, (
            Explain(
                f"{_name(m)}: replication stream ended ({ev.detail}); still secondary until "
                f"{m.peer_name} either continues without it (then it resynchronises) or is lost "
                "(then it takes over)",
                "warning",
            ),
        )
    m = replace(m, join_failed=f"replication failed: {ev.detail}")
    m2, acts = _start_op(
        m, Phase.LEAVING, now, f"{_name(m)} leaving secondary: replication failed ({ev.detail})"
    )
    return m2, (Explain(f"{_name(m)} replication FAILED: {ev.detail}", "error"), *acts)


def _replica_lost_prim(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    """The secondary stopped acknowledging: continue alone, its copy is stale from now."""
    assert isinstance(ev, ReplicaLost)
    data = replace(m.data.next_generation(fresh_id), alone_ok=True)
    m2 = _go(m, Phase.ALONE, now, data=data, reason=f"alone: {ev.detail}")
    return m2, (
        Persist(data, m.failover),
        Explain(
            f"{_name(m)} ALONE: replication to {m.peer_name} ended ({ev.detail}); its copy is "
            f"stale from now ({data.label()})",
            "warning",
        ),
        Publish(),
    )


def _replica_lost_ignored(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    """Elsewhere the loss is handled by the running operation (or there is nothing to do)."""
    return m, ()


# checkers


def _holds_noted(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    """Remembered; applied when the running operation ends (`_then_pending`, `_decide`)."""
    assert isinstance(ev, Holds)
    return replace(m, holds=ev.reasons), ()


def _holds_primary(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, Holds)
    m2 = replace(m, holds=ev.reasons)
    if not ev.reasons:
        return m2, ()
    who = f"{m.peer_name} takes over" if m.peer_second_ready() else "no secondary to take over"
    return _start_op(
        m2,
        Phase.DEMOTING,
        now,
        f"{_name(m)} leaving primary, held: {_holds_text(m2)}; {who}",
        then=Then.HOLD,
    )


def _holds_second(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, Holds)
    m2 = replace(m, holds=ev.reasons)
    if not ev.reasons:
        return m2, ()
    return _start_op(
        m2,
        Phase.LEAVING,
        now,
        f"{_name(m)} leaving secondary, held: {_holds_text(m2)}",
        then=Then.HOLD,
    )


def _holds_waiting(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, Holds)
    return _decide(replace(m, holds=ev.reasons), now, fresh_id)


def _recover_primary(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, Recover)
    if ev.action == "restart":
        return _start_op(m, Phase.RESTARTING, now, f"{ev.message} (no failover)")
    if ev.action == "stopstart":
        who = f"{m.peer_name} takes over" if m.peer_second_ready() else "no secondary"
        return _start_op(m, Phase.DEMOTING, now, f"{ev.message}; {who}", then=Then.STOPSTART)
    return _start_op(m, Phase.DEMOTING, now, ev.message, then=Then.STOP, failed=ev.message)


def _recover_second(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, Recover)
    if ev.action == "stop":
        return _start_op(m, Phase.LEAVING, now, ev.message, then=Then.STOP, failed=ev.message)
    return _start_op(
        m, Phase.LEAVING, now, f"{ev.message}; the secondary side restarts", then=Then.STOPSTART
    )


def _recover_waiting(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, Recover)
    if ev.action == "stop":
        return _start_op(m, Phase.STOPPING, now, ev.message, then=Then.NOTHING, failed=ev.message)
    return m, (Explain(f"{ev.message}: nothing runs here while waiting"),)


def _recover_later(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    """During an operation: a stop is done after it; a restart is not needed (the operation
    starts or stops the application, and the checkers start again afterwards)."""
    assert isinstance(ev, Recover)
    if ev.action == "stop":
        m2 = replace(m, then=Then.STOP, failed=ev.message)
        return m2, (Explain(f"{ev.message}; once {m.phase.value} ends", "warning"),)
    return m, (Explain(f"{ev.message}: not needed, {m.phase.value} already"),)


def _recover_late(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    """A checker result that arrives after the module stopped: nothing to do."""
    return m, ()


# arbitration (split-brain protection)


def _lost_arbiter(m: Mirror, now: float, why: str) -> Result:
    """A primary that can no longer prove it may be the only one: it leaves the role (its peer,
    or whoever the witness grants, takes over) and waits for the arbiter or its peer."""
    note = f"{m.local} stepped down ({why}) and {m.peer_name} became primary"
    return _start_op(
        replace(m, lease=False, split_note=note),
        Phase.DEMOTING,
        now,
        f"{_name(m)} leaving the primary role: {why}; it may be primary on the other side: "
        "VIPs released first",
        vips_first=True,
        then=Then.HOLD,
    )


def _arbiter_primary(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, Arbiter)
    m2 = replace(m, lease=ev.granted, arbiter_note=ev.detail)
    if ev.granted or not m.lease:
        return m2, ()
    if m.peer.present:
        return m2, (
            Explain(
                f"{_name(m)}: the arbiter no longer grants the primary role ({ev.detail}); "
                f"still primary while {m.peer_name} sees it",
                "warning",
            ),
        )
    return _lost_arbiter(
        m2,
        now,
        f"the arbiter no longer grants the role ({ev.detail}) and "
        f"{m.peer_name} {m.peer.describe()}",
    )


def _arbiter_second(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, Arbiter)
    m2 = replace(m, lease=ev.granted, arbiter_note=ev.detail)
    if m.asking and ev.granted and not m.peer.primary:
        return _takeover(m2, now, fresh_id, f"failover allowed by the arbiter ({ev.detail})")
    if m.asking and ev.detail != m.arbiter_note:
        return _ask(m2, now, f"{m.peer_name} {m.peer.describe()}")
    return m2, ()


def _arbiter_waiting(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, Arbiter)
    m2 = replace(m, lease=ev.granted, arbiter_note=ev.detail)
    if m.asking and (ev.granted or ev.detail != m.arbiter_note):
        return _decide(replace(m2, asking=False), now, fresh_id)
    return m2, ()


def _arbiter_noted(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    """Remembered; used by the next decision."""
    assert isinstance(ev, Arbiter)
    return replace(m, lease=ev.granted, arbiter_note=ev.detail), ()


# --- the table ---------------------------------------------------------------------------------


P = Phase
_SAME: frozenset[Phase] = frozenset()  # marker: the handler stays in the phase it runs in
TARGETS: dict[Handler, frozenset[Phase]] = {
    _peer_note: _SAME,
    _peer_waiting: frozenset({P.WAITING, P.PROMOTING, P.JOINING}),
    _peer_primary: frozenset({P.ALONE, P.PRIM, P.DEMOTING}),
    _peer_second: frozenset({P.SECOND, P.PROMOTING, P.LEAVING}),
    _cmd_failover: _SAME,
    _cmd_failover_waiting: frozenset({P.WAITING, P.PROMOTING, P.JOINING}),
    _cmd_start: frozenset({P.STARTING}),
    _cmd_already_stopped: _SAME,
    _cmd_role_in_waiting: frozenset({P.WAITING, P.PROMOTING, P.JOINING}),
    _cmd_stop_waiting: frozenset({P.STOPPING}),
    _cmd_stop_primary: frozenset({P.DEMOTING}),
    _cmd_restart: frozenset({P.RESTARTING}),
    _cmd_swap: frozenset({P.DEMOTING}),
    _cmd_stop_second: frozenset({P.LEAVING}),
    _cmd_swap_on_second: _SAME,
    _cmd_stop_later: _SAME,
    _busy: _SAME,
    _after_prestart: frozenset({P.STOPPING, P.WAITING, P.PROMOTING, P.JOINING}),
    _after_become_primary: frozenset({P.DEMOTING, P.ALONE, P.PRIM}),
    _after_restart: frozenset({P.DEMOTING, P.ALONE, P.PRIM}),
    _after_stop_primary: frozenset({P.WAITING, P.STOPPING, P.PROMOTING, P.JOINING}),
    _after_start_second: frozenset({P.LEAVING, P.SYNCING}),
    _after_sync: frozenset({P.LEAVING, P.SECOND}),
    _after_stop_second: frozenset({P.STOPPING, P.WAITING, P.PROMOTING, P.JOINING}),
    _after_poststop: frozenset({P.STARTING, P.STOPPED}),
    _replica_lost_second: frozenset({P.LEAVING}),  # or stays SECOND
    _replica_lost_prim: frozenset({P.ALONE}),
    _replica_lost_ignored: _SAME,
    _holds_noted: _SAME,
    _holds_primary: frozenset({P.DEMOTING}),
    _holds_second: frozenset({P.LEAVING}),
    _holds_waiting: frozenset({P.WAITING, P.PROMOTING, P.JOINING}),
    _recover_primary: frozenset({P.RESTARTING, P.DEMOTING}),
    _recover_second: frozenset({P.LEAVING}),
    _recover_waiting: frozenset({P.STOPPING}),
    _recover_later: _SAME,
    _recover_late: _SAME,
    _arbiter_primary: frozenset({P.DEMOTING}),
    _arbiter_second: frozenset({P.PROMOTING}),
    _arbiter_waiting: frozenset({P.WAITING, P.PROMOTING, P.JOINING}),
    _arbiter_noted: _SAME,
}
"""Where each handler may lead (besides staying put). `step` enforces it; the diagram in
docs/state-machines.md is drawn from it."""

_DONE: dict[Op, Handler] = {
    Op.PRESTART: _after_prestart,
    Op.BECOME_PRIMARY: _after_become_primary,
    Op.RESTART_PRIMARY: _after_restart,
    Op.STOP_PRIMARY: _after_stop_primary,
    Op.START_SECOND: _after_start_second,
    Op.SYNC: _after_sync,
    Op.STOP_SECOND: _after_stop_second,
    Op.POSTSTOP: _after_poststop,
}


def _command_handler(phase: Phase, cmd: Cmd) -> Handler:
    if cmd in (Cmd.FAILOVER_ON, Cmd.FAILOVER_OFF):
        waiting_on = phase is Phase.WAITING and cmd is Cmd.FAILOVER_ON
        return _cmd_failover_waiting if waiting_on else _cmd_failover
    if phase is Phase.STOPPED:
        return {
            Cmd.START: _cmd_start,
            Cmd.PRIM: _cmd_start,
            Cmd.SECOND: _cmd_start,
            Cmd.PRIMFORCE: _cmd_start,
            Cmd.STOP: _cmd_already_stopped,
        }.get(cmd, _REFUSE_STOPPED)
    if phase is Phase.WAITING:
        return {
            Cmd.PRIM: _cmd_role_in_waiting,
            Cmd.SECOND: _cmd_role_in_waiting,
            Cmd.PRIMFORCE: _cmd_role_in_waiting,
            Cmd.STOP: _cmd_stop_waiting,
            Cmd.STOPSTART: _cmd_stop_waiting,
        }.get(cmd, _REFUSE_STARTED)
    if phase in (Phase.ALONE, Phase.PRIM):
        return {
            Cmd.STOP: _cmd_stop_primary,
            Cmd.STOPSTART: _cmd_stop_primary,
            Cmd.RESTART: _cmd_restart,
            Cmd.SWAP: _cmd_swap,
        }.get(cmd, _REFUSE_PRIMARY)
    if phase is Phase.SECOND:
        return {
            Cmd.STOP: _cmd_stop_second,
            Cmd.STOPSTART: _cmd_stop_second,
            Cmd.SWAP: _cmd_swap_on_second,
        }.get(cmd, _REFUSE_SECOND)
    return _cmd_stop_later if cmd in (Cmd.STOP, Cmd.STOPSTART) else _busy


_REFUSE_STOPPED = _refuse("{m.module} is stopped on {m.local}: `hakit start {m.module}` first")
_REFUSE_STARTED = _refuse("{m.module} is already started ({state}: {m.reason}); `hakit stop` first")
_REFUSE_PRIMARY = _refuse("{m.module} is already primary on {m.local} ({state})")
_REFUSE_SECOND = _refuse(
    "{m.module} is secondary on {m.local} ({state}); to make it primary: "
    "`hakit swap {m.module} --node {peer}`"
)
for _r in (_REFUSE_STOPPED, _REFUSE_STARTED, _REFUSE_PRIMARY, _REFUSE_SECOND):
    TARGETS[_r] = _SAME


def _peer_handler(phase: Phase) -> Handler:
    if phase is Phase.WAITING:
        return _peer_waiting
    if phase in (Phase.ALONE, Phase.PRIM):
        return _peer_primary
    if phase is Phase.SECOND:
        return _peer_second
    return _peer_note


def _table() -> dict[tuple[Phase, str], Handler]:
    t: dict[tuple[Phase, str], Handler] = {}
    for phase in Phase:
        t[(phase, "peer")] = _peer_handler(phase)
        t[(phase, "replica-lost")] = {
            Phase.SECOND: _replica_lost_second,
            Phase.PRIM: _replica_lost_prim,
        }.get(phase, _replica_lost_ignored)
        for cmd in Cmd:
            t[(phase, f"cmd:{cmd.value}")] = _command_handler(phase, cmd)
        t[(phase, "arbiter")] = {
            Phase.ALONE: _arbiter_primary,
            Phase.PRIM: _arbiter_primary,
            Phase.SECOND: _arbiter_second,
            Phase.WAITING: _arbiter_waiting,
        }.get(phase, _arbiter_noted)
        t[(phase, "holds")] = {
            Phase.ALONE: _holds_primary,
            Phase.PRIM: _holds_primary,
            Phase.SECOND: _holds_second,
            Phase.WAITING: _holds_waiting,
        }.get(phase, _holds_noted)
        for action in ("restart", "stopstart", "stop"):
            t[(phase, f"recover:{action}")] = {
                Phase.ALONE: _recover_primary,
                Phase.PRIM: _recover_primary,
                Phase.SECOND: _recover_second,
                Phase.WAITING: _recover_waiting,
                Phase.STOPPED: _recover_late,
            }.get(phase, _recover_later)
        if phase in OP_OF_PHASE:
            op = OP_OF_PHASE[phase]
            t[(phase, f"done:{op.value}")] = _DONE[op]
    return t


TRANSITIONS: dict[tuple[Phase, str], Handler] = _table()
"""(phase, event kind) -> handler. Event kinds: `peer`, `cmd:<command>`, `done:<operation>`,
`replica-lost`, `recover:<action>` and `holds` (checkers)."""


def targets(phase: Phase, kind: str) -> frozenset[Phase]:
    """The phases (phase, kind) may lead to, itself included."""
    return TARGETS[TRANSITIONS[(phase, kind)]] | {phase}


def step(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    handler = TRANSITIONS.get((m.phase, event_kind(ev)))
    if handler is None:
        raise UnexpectedEvent(f"{m.module} on {m.local}: {event_kind(ev)} in phase {m.phase.value}")
    new, actions = handler(m, ev, now, fresh_id)
    if new.phase not in targets(m.phase, event_kind(ev)):
        raise UnexpectedEvent(
            f"{m.module} on {m.local}: {event_kind(ev)} in {m.phase.value} led to "
            f"{new.phase.value}, which its table entry does not allow"
        )
    return new, actions


# --- what a node publishes in its heartbeats ---------------------------------------------------

PUBLISHED_HISTORY = 16


def to_wire(m: Mirror) -> dict[str, object]:
    """The compact form of our state carried in every heartbeat."""
    d = m.data
    return {
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
    }


def peer_from_wire(alive: bool, obj: object) -> PeerInfo:
    """The peer as seen from its heartbeat payload; malformed or absent means not running."""
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
        return PeerInfo(True, True, Phase(obj["p"]), data, Want(obj["w"]), bool(obj["o"]), since)
    except (KeyError, TypeError, ValueError):
        return PeerInfo(alive=True, installed=False)
