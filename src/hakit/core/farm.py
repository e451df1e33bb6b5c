"""The farm module, per node: bucket assignment, agreement on it, and the state machine. Pure.

Client connections are hashed into `BUCKETS` buckets; each bucket is accepted by exactly one
node. Three pieces, all pure:

- **Assignment** (`preference_table`, `owners`): every bucket has a fixed preference order over
  the farm's nodes, computed once from the configuration; the owner of a bucket is the first
  member of the current view in its order. A node leaving moves only its own buckets, a node
  joining takes back only the buckets it comes first in (minimal movement by construction).
  The orders are dealt level by level in proportion to the weights, so the shares are exact
  (to one bucket) with every node up, and with any one node down; weight-0 nodes come after
  every weighted node, so they get buckets only when all weighted nodes are gone.
- **Agreement** (`converge`): each node publishes in its heartbeats its view (the members it
  sees), a sequence number of that view, the buckets it accepts, and which publication of
  every peer it has seen (acks). A node releases or acquires buckets only when every member of
  its view publishes the same view and every live node has seen its latest publication (an
  epoch all sides acknowledged); it acquires a bucket only once no live node claims it. Two
  nodes that hear each other therefore never accept the same bucket, and a bucket is without
  owner only for the heartbeat round of a handover (a SYN sent then is retransmitted by the
  client and served).
- **The state machine** (`step`): STOP → WAIT (prestart, start_both, data path) → UP → WAIT
  (stop_both, data path down, poststop) → STOP. Checkers (core/checks.py) drive the rest: the
  node is a member only while the checkers guarding the application pass; a failed checker
  asks for a local restart (the node gives its buckets away first), a stopstart or a stop
  (loop protection already applied); `wait` checkers hold the node in WAIT, the application
  stopped, and it starts again by itself when they pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from hakit.core.outcomes import Accepted, Explain, Refused, UnexpectedEvent

BUCKETS = 256
ALL = (1 << BUCKETS) - 1

# --- assignment ---------------------------------------------------------------------------------


def _rank(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("/".join(parts).encode(), digest_size=8).digest(), "big")


def apportion(count: int, weights: Sequence[tuple[str, int]], salt: str) -> dict[str, int]:
    """Split `count` items in proportion to the weights (largest remainder, ties by hash)."""
    total = sum(w for _, w in weights)
    if total <= 0:
        weights = [(n, 1) for n, _ in weights]
        total = len(weights)
    out = {n: count * w // total for n, w in weights}
    left = count - sum(out.values())
    order = sorted(weights, key=lambda nw: (-((count * nw[1]) % total), _rank(salt, nw[0])))
    for n, _ in order[:left]:
        out[n] += 1
    return out


def _deal(items: Sequence[int], counts: Mapping[str, int], salt: str) -> dict[str, list[int]]:
    """Hand `items` out in turn (smooth weighted round robin), so each node's items are spread."""
    total = sum(counts.values())
    current = dict.fromkeys(counts, 0)
    tie = {n: _rank(salt, n) for n in counts}
    out: dict[str, list[int]] = {n: [] for n in counts}
    for item in items:
        for n, c in counts.items():
            current[n] += c
        pick = max(counts, key=lambda n: (current[n], tie[n]))
        current[pick] -= total
        out[pick].append(item)
    return out


def preference_table(nodes: Sequence[tuple[str, int]], seed: str) -> tuple[tuple[str, ...], ...]:
    """For every bucket, the order in which the nodes would own it."""
    prefs: list[list[str]] = [[] for _ in range(BUCKETS)]

    def build(buckets: list[int], remaining: list[tuple[str, int]], path: str) -> None:
        if not buckets or not remaining:
            return
        weighted = [(n, w) for n, w in remaining if w > 0] or [(n, 1) for n, _ in remaining]
        counts = apportion(len(buckets), weighted, seed + path)
        for name, mine in _deal(buckets, counts, seed + path).items():
            for b in mine:
                prefs[b].append(name)
            build(mine, [(n, w) for n, w in remaining if n != name], f"{path}/{name}")

    build(list(range(BUCKETS)), list(nodes), "")
    return tuple(tuple(p) for p in prefs)


def owners(table: Sequence[Sequence[str]], members: frozenset[str]) -> tuple[str | None, ...]:
    return tuple(next((n for n in prefs if n in members), None) for prefs in table)


def mask_of(owner_list: Sequence[str | None], node: str) -> int:
    out = 0
    for b, n in enumerate(owner_list):
        if n == node:
            out |= 1 << b
    return out


def count(mask: int) -> int:
    return mask.bit_count()


def buckets_of(mask: int) -> list[int]:
    return [b for b in range(BUCKETS) if mask >> b & 1]


# --- agreement ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """What a node says about this farm in its heartbeats."""

    member: bool = False  # UP and healthy: wants its share
    inc: str = ""  # incarnation of its module runner (new at each daemon start)
    seq: int = 0  # number of its current view
    view: tuple[str, ...] = ()
    owned: int = 0  # buckets it accepts new connections for
    acks: tuple[tuple[str, str], ...] = ()  # (node, "inc:seq") of the publications it has seen
    digest: str = ""  # of the farm configuration: nodes, weights, rules
    state: str = "STOP"
    status: str = "not-ready"

    @property
    def stamp(self) -> str:
        return f"{self.inc}:{self.seq}"

    def ack_of(self, node: str) -> str:
        return dict(self.acks).get(node, "")


@dataclass(frozen=True)
class Assignment:
    """This node's side of the agreement."""

    inc: str
    seq: int = 0
    view: tuple[str, ...] = ()
    owned: int = 0
    agreed: bool = False
    target: int = 0  # what we should own in our view
    claimed_by_others: int = 0

    @property
    def settled(self) -> bool:
        return self.agreed and self.owned == self.target


@dataclass(frozen=True)
class Change:
    """Buckets this node started or stopped accepting, and why (for the timeline)."""

    gained: int
    lost: int
    view: tuple[str, ...]
    overlap: tuple[tuple[str, int], ...] = ()  # peers that claimed buckets we also held


def epoch(view: Sequence[str], digest: str) -> str:
    return hashlib.blake2b(f"{digest}|{','.join(view)}".encode(), digest_size=4).hexdigest()


def converge(
    a: Assignment,
    me: str,
    member: bool,
    digest: str,
    table: Sequence[Sequence[str]],
    peers: Mapping[str, Published | None],
) -> tuple[Assignment, Change | None, tuple[tuple[str, str], ...]]:
    """One agreement step from what we last heard of every peer (`None`: peer not alive).

    Returns the new assignment, the change of our owned buckets if any, and the acks to
    publish."""
    alive = {p: pub for p, pub in peers.items() if pub is not None}
    view = tuple(
        sorted(
            ({me} if member else set())
            | {p for p, pub in alive.items() if pub.member and pub.digest == digest}
        )
    )
    seq = a.seq + 1 if view != a.view else a.seq
    stamp = f"{a.inc}:{seq}"
    acks = tuple(sorted((p, pub.stamp) for p, pub in alive.items()))
    # Every live node (member or not) has seen our latest publication, and every member
    # publishes the view we have: only then may buckets move. Waiting for non-members too
    # closes the race of two nodes starting at once, each alone in its own view.
    agreed = (
        member
        and all(pub.ack_of(me) == stamp for pub in alive.values())
        and all(alive[p].view == view for p in view if p != me)
    )
    target = mask_of(owners(table, frozenset(view)), me) if member else 0
    claimed = 0
    for pub in alive.values():
        claimed |= pub.owned
    owned = a.owned
    if not member:
        owned = 0
    elif agreed:
        owned = (owned & target) | (target & ~claimed)
    new = Assignment(a.inc, seq, view, owned, agreed, target, claimed & ALL)
    change = None
    if owned != a.owned:
        overlap = tuple((p, count(pub.owned & a.owned)) for p, pub in alive.items())
        change = Change(owned & ~a.owned, a.owned & ~owned, view, tuple(o for o in overlap if o[1]))
    return new, change, acks


# --- the node's state machine -----------------------------------------------------------------


class Phase(StrEnum):
    STOPPED = "stopped"
    HELD = "held"  # started, the application not running: a `wait` checker holds it
    STARTING = "starting"  # prestart, start_both, data path up
    UP = "up"  # running; a member of the farm while its checkers pass
    RESTARTING = "restarting"  # a checker failed: buckets given away, stop_both, start_both
    STOPPING = "stopping"  # buckets given away, stop_both, data path down, poststop


class Op(StrEnum):
    START = "start"
    RESTART = "restart"
    STOP = "stop"


OP_OF_PHASE = {Phase.STARTING: Op.START, Phase.RESTARTING: Op.RESTART, Phase.STOPPING: Op.STOP}


class Cmd(StrEnum):
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    STOPSTART = "stopstart"


class Then(StrEnum):
    NOTHING = "nothing"
    STOP = "stop"
    START = "start"
    HOLD = "hold"  # once stopped, wait in HELD for the checkers


@dataclass(frozen=True)
class Farm:
    module: str
    local: str
    gated: bool = False  # checkers guard the application: a member only once they pass
    waits_first: bool = False  # `wait` checkers active before the start: held until they pass
    phase: Phase = Phase.STOPPED
    healthy: bool = False
    holds: tuple[str, ...] = ()  # why `wait` checkers hold the module
    then: Then = Then.NOTHING
    reason: str = ""
    failed: str = ""  # why the module stopped by itself (shown until the next start)
    since: float = 0.0

    @property
    def member(self) -> bool:
        return self.phase is Phase.UP and self.healthy

    def display(self, settled: bool) -> tuple[str, str]:
        if self.phase is Phase.STOPPED:
            return "STOP", "not-ready"
        if self.phase is Phase.HELD:
            return "WAIT", "not-ready"
        if self.phase is not Phase.UP:
            return "WAIT", "transient"
        if not self.healthy:
            return "UP", "not-ready"
        return "UP", "ready" if settled else "transient"


@dataclass(frozen=True)
class Command:
    cmd: Cmd


@dataclass(frozen=True)
class OpDone:
    op: Op
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Health:
    """Every checker that guards the application passes (ok) or one of them does not."""

    ok: bool
    detail: str = ""


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


Event = Command | OpDone | Health | Recover | Holds


def event_kind(ev: Event) -> str:
    if isinstance(ev, Command):
        return f"cmd:{ev.cmd.value}"
    if isinstance(ev, OpDone):
        return f"done:{ev.op.value}"
    if isinstance(ev, Recover):
        return f"recover:{ev.action}"
    if isinstance(ev, Holds):
        return "holds"
    return "health:ok" if ev.ok else "health:failed"


@dataclass(frozen=True)
class RunOp:
    op: Op
    action: str  # the scripts' third argument: start, stop, restart, checker, failed


@dataclass(frozen=True)
class Publish:
    """Membership or state changed: recompute the assignment, persist, publish."""


Action = RunOp | Publish | Explain | Accepted | Refused
Result = tuple[Farm, tuple[Action, ...]]
Handler = Callable[[Farm, Event, float], Result]


def _go(f: Farm, phase: Phase, now: float, why: str, **kw: object) -> Farm:
    since = now if phase is not f.phase else f.since
    return replace(f, phase=phase, since=since, reason=why, **kw)  # type: ignore[arg-type]


def _run(f: Farm, phase: Phase, now: float, why: str, action: str, **kw: object) -> Result:
    f2 = _go(f, phase, now, why, **kw)
    level = "warning" if action in ("checker", "failed", "hold") else "info"
    return f2, (Explain(why, level), Publish(), RunOp(OP_OF_PHASE[phase], action))


def _name(f: Farm) -> str:
    return f"{f.module} on {f.local}"


def _held(f: Farm, now: float, why: str, **kw: object) -> Result:
    f2 = _go(f, Phase.HELD, now, why, healthy=False, then=Then.NOTHING, **kw)
    return f2, (Explain(why, "warning"), Publish())


def _hold_text(f: Farm) -> str:
    return "; ".join(f.holds) or "waiting for the checkers active before the start"


def _start(f: Farm, ev: Event, now: float) -> Result:
    if f.waits_first or f.holds:
        f2, acts = _held(
            replace(f, failed=""),
            now,
            f"{_name(f)}: started, held before starting: {_hold_text(f)}",
        )
        return f2, (*acts, Accepted(f"{f.module} started on {f.local}, waiting: {_hold_text(f)}"))
    f2, acts = _run(f, Phase.STARTING, now, f"{_name(f)}: starting", "start", failed="")
    return f2, (*acts, Accepted(f"{f.module} starting on {f.local}"))


def _refuse(msg: str) -> Handler:
    def handler(f: Farm, ev: Event, now: float) -> Result:
        state, _ = f.display(False)
        return f, (Refused(msg.format(f=f, state=state)),)

    return handler


def _accept(msg: str) -> Handler:
    def handler(f: Farm, ev: Event, now: float) -> Result:
        return f, (Accepted(msg.format(f=f)),)

    return handler


def _stop(f: Farm, ev: Event, now: float) -> Result:
    f2, acts = _run(
        f, Phase.STOPPING, now, f"{_name(f)}: stopping (operator); its share moves", "stop"
    )
    return f2, (*acts, Accepted(f"{f.module} stopping on {f.local}"))


def _stop_held(f: Farm, ev: Event, now: float) -> Result:
    """Nothing runs while held: stopped at once."""
    why = f"{_name(f)}: stopped (operator) while held"
    f2 = _go(f, Phase.STOPPED, now, why, then=Then.NOTHING)
    return f2, (Explain(why), Publish(), Accepted(f"{f.module} stopped on {f.local}"))


def _stopstart(f: Farm, ev: Event, now: float) -> Result:
    f2, acts = _run(
        f,
        Phase.STOPPING,
        now,
        f"{_name(f)}: stopstart (operator); its share moves meanwhile",
        "stopstart",
        then=Then.START,
    )
    return f2, (*acts, Accepted(f"{f.module} stopping then starting on {f.local}"))


def _stop_later(f: Farm, ev: Event, now: float) -> Result:
    f2 = replace(f, then=Then.STOP)
    return f2, (Accepted(f"{f.module} will stop on {f.local} once {f.phase.value} ends"),)


def _restart(f: Farm, ev: Event, now: float) -> Result:
    f2, acts = _run(
        f,
        Phase.RESTARTING,
        now,
        f"{_name(f)}: restarting the application (operator); its share moves meanwhile",
        "restart",
    )
    return f2, (*acts, Accepted(f"{f.module} restarting on {f.local}"))


def _settle(f: Farm, now: float, what: str) -> Result:
    """An operation ended with the application running: stop if asked, hold if a checker
    says so, else UP."""
    if f.then is Then.STOP:
        return _run(f, Phase.STOPPING, now, f"{_name(f)}: {what}; stop requested", "stop")
    if f.holds:
        why = f"{_name(f)}: {what}, but held: {_hold_text(f)}; stopping the application"
        return _run(f, Phase.STOPPING, now, why, "hold", then=Then.HOLD)
    if f.gated:
        why = f"{_name(f)}: {what}; joins the farm once its checkers pass"
    else:
        why = f"{_name(f)}: {what}; joins the farm"
    f2 = _go(f, Phase.UP, now, why, healthy=not f.gated, then=Then.NOTHING)
    return f2, (Explain(why), Publish())


def _after_start(f: Farm, ev: Event, now: float) -> Result:
    assert isinstance(ev, OpDone)
    if not ev.ok:
        why = f"{_name(f)}: start failed ({ev.detail}); cleaning up"
        return _run(f, Phase.STOPPING, now, why, "failed", failed=why, then=Then.NOTHING)
    return _settle(f, now, "started")


def _after_restart(f: Farm, ev: Event, now: float) -> Result:
    assert isinstance(ev, OpDone)
    if not ev.ok:
        why = f"{_name(f)}: restart failed ({ev.detail}); stopping here, the others keep serving"
        return _run(f, Phase.STOPPING, now, why, "failed", failed=why, then=Then.NOTHING)
    return _settle(f, now, "application restarted")


def _after_stop(f: Farm, ev: Event, now: float) -> Result:
    assert isinstance(ev, OpDone)
    outcome = "stopped" if ev.ok else f"stopped, with errors ({ev.detail})"
    if f.then is Then.HOLD and not f.failed:
        if f.holds:
            return _held(f, now, f"{_name(f)}: {outcome}; held: {_hold_text(f)}")
        f = replace(f, then=Then.START)  # the checker came back meanwhile
    if f.then is Then.START and not f.failed:
        f2 = replace(f, then=Then.NOTHING)
        return _run(f2, Phase.STARTING, now, f"{_name(f)}: {outcome}; starting again", "start")
    why = f.failed or f"{_name(f)}: {outcome}"
    f2 = _go(f, Phase.STOPPED, now, why, healthy=False, then=Then.NOTHING, holds=())
    return f2, (Explain(f"{_name(f)}: {outcome}", "info" if ev.ok else "error"), Publish())


def _health(f: Farm, ev: Event, now: float) -> Result:
    """Membership follows the checkers that guard the application."""
    assert isinstance(ev, Health)
    if ev.ok == f.healthy:
        return f, ()
    if ev.ok:
        why = f"{_name(f)}: checkers pass ({ev.detail}); joins the farm"
        return _go(f, Phase.UP, now, why, healthy=True), (Explain(why), Publish())
    why = f"{_name(f)}: leaves the farm, its share moves: {ev.detail}"
    return _go(f, Phase.UP, now, why, healthy=False), (Explain(why, "warning"), Publish())


def _health_noted(f: Farm, ev: Event, now: float) -> Result:
    """Outside UP membership is not in question; the checker result is already recorded."""
    return f, ()


def _recover(f: Farm, ev: Event, now: float) -> Result:
    assert isinstance(ev, Recover)
    if ev.action == "restart":
        why = f"{ev.message}; {f.local} leaves the farm meanwhile"
        return _run(f, Phase.RESTARTING, now, why, "checker", healthy=False)
    if ev.action == "stopstart":
        why = f"{ev.message}; its share moves meanwhile"
        return _run(f, Phase.STOPPING, now, why, "checker", then=Then.START)
    return _run(
        f,
        Phase.STOPPING,
        now,
        f"{ev.message}; the others keep serving",
        "failed",
        failed=ev.message,
        then=Then.NOTHING,
    )


def _recover_later(f: Farm, ev: Event, now: float) -> Result:
    """During an operation: a stop is done after it; a restart is not needed (the operation
    restarts or stops the application, and the checkers start again afterwards)."""
    assert isinstance(ev, Recover)
    if ev.action == "stop":
        f2 = replace(f, then=Then.STOP, failed=ev.message)
        return f2, (Explain(f"{ev.message}; once {f.phase.value} ends", "warning"),)
    return f, (Explain(f"{ev.message}: not needed, {f.phase.value} already", "info"),)


def _recover_idle(f: Farm, ev: Event, now: float) -> Result:
    """Nothing runs (held): only a stop applies."""
    assert isinstance(ev, Recover)
    if ev.action == "stop":
        f2 = _go(f, Phase.STOPPED, now, ev.message, failed=ev.message, then=Then.NOTHING)
        return f2, (Explain(ev.message, "warning"), Publish())
    return f, (Explain(f"{ev.message}: nothing runs here (held)", "info"),)


def _recover_late(f: Farm, ev: Event, now: float) -> Result:
    """A checker result that arrives after the module stopped: nothing to do."""
    return f, ()


def _holds_up(f: Farm, ev: Event, now: float) -> Result:
    assert isinstance(ev, Holds)
    f2 = replace(f, holds=ev.reasons)
    if not ev.reasons:
        return f2, ()
    why = f"{_name(f)}: held: {_hold_text(f2)}; leaves the farm and stops the application"
    return _run(f2, Phase.STOPPING, now, why, "hold", healthy=False, then=Then.HOLD)


def _holds_held(f: Farm, ev: Event, now: float) -> Result:
    assert isinstance(ev, Holds)
    f2 = replace(f, holds=ev.reasons)
    if ev.reasons:
        if ev.reasons != f.holds:
            return _go(f2, Phase.HELD, now, f"{_name(f)}: held: {_hold_text(f2)}"), (Publish(),)
        return f2, ()
    return _run(
        f2, Phase.STARTING, now, f"{_name(f)}: nothing holds it any more; starting", "start"
    )


def _holds_noted(f: Farm, ev: Event, now: float) -> Result:
    """Remembered; applied when the running operation ends (`_settle`, `_after_stop`)."""
    assert isinstance(ev, Holds)
    return replace(f, holds=ev.reasons), ()


_ALREADY_STARTED = _refuse(
    "{f.module} is already started on {f.local} ({state}); `hakit stop` first"
)
_NOT_RUNNING = _refuse("{f.module} is not running on {f.local}: `hakit start {f.module}` first")
_BUSY = _refuse("{f.module} is busy on {f.local} ({f.phase.value}); try again when it is UP")
_HELD_BUSY = _refuse(
    "{f.module} is held on {f.local} ({f.reason}); it starts by itself when its checkers "
    "pass, or `hakit stop`"
)

P = Phase
TRANSITIONS: dict[tuple[Phase, str], Handler] = {
    (P.STOPPED, "cmd:start"): _start,
    (P.STOPPED, "cmd:stop"): _accept("{f.module} is already stopped on {f.local}"),
    (P.STOPPED, "cmd:restart"): _NOT_RUNNING,
    (P.STOPPED, "cmd:stopstart"): _NOT_RUNNING,
    (P.HELD, "cmd:start"): _ALREADY_STARTED,
    (P.HELD, "cmd:stop"): _stop_held,
    (P.HELD, "cmd:restart"): _HELD_BUSY,
    (P.HELD, "cmd:stopstart"): _HELD_BUSY,
    (P.STARTING, "cmd:start"): _ALREADY_STARTED,
    (P.STARTING, "cmd:stop"): _stop_later,
    (P.STARTING, "cmd:restart"): _BUSY,
    (P.STARTING, "cmd:stopstart"): _BUSY,
    (P.STARTING, "done:start"): _after_start,
    (P.UP, "cmd:start"): _ALREADY_STARTED,
    (P.UP, "cmd:stop"): _stop,
    (P.UP, "cmd:restart"): _restart,
    (P.UP, "cmd:stopstart"): _stopstart,
    (P.RESTARTING, "cmd:start"): _ALREADY_STARTED,
    (P.RESTARTING, "cmd:stop"): _stop_later,
    (P.RESTARTING, "cmd:restart"): _BUSY,
    (P.RESTARTING, "cmd:stopstart"): _BUSY,
    (P.RESTARTING, "done:restart"): _after_restart,
    (P.STOPPING, "cmd:start"): _refuse(
        "{f.module} is stopping on {f.local}; start it once it is stopped"
    ),
    (P.STOPPING, "cmd:stop"): _accept("{f.module} is already stopping on {f.local}"),
    (P.STOPPING, "cmd:restart"): _BUSY,
    (P.STOPPING, "cmd:stopstart"): _BUSY,
    (P.STOPPING, "done:stop"): _after_stop,
    (P.UP, "holds"): _holds_up,
    (P.HELD, "holds"): _holds_held,
}
for _p in Phase:
    for _ok in ("ok", "failed"):
        TRANSITIONS[(_p, f"health:{_ok}")] = _health if _p is P.UP else _health_noted
    for _a in ("restart", "stopstart", "stop"):
        TRANSITIONS[(_p, f"recover:{_a}")] = {
            P.UP: _recover,
            P.HELD: _recover_idle,
            P.STOPPED: _recover_late,
        }.get(_p, _recover_later)
    TRANSITIONS.setdefault((_p, "holds"), _holds_noted)


TARGETS: dict[Handler, frozenset[Phase]] = {
    _start: frozenset({P.STARTING, P.HELD}),
    _stop: frozenset({P.STOPPING}),
    _stop_held: frozenset({P.STOPPED}),
    _stopstart: frozenset({P.STOPPING}),
    _restart: frozenset({P.RESTARTING}),
    _after_start: frozenset({P.UP, P.STOPPING}),
    _after_restart: frozenset({P.UP, P.STOPPING}),
    _after_stop: frozenset({P.STOPPED, P.STARTING, P.HELD}),
    _recover: frozenset({P.RESTARTING, P.STOPPING}),
    _recover_idle: frozenset({P.STOPPED}),
    _holds_up: frozenset({P.STOPPING}),
    _holds_held: frozenset({P.STARTING}),
}
"""Phases each handler may lead to (refusals and bookkeeping stay where they are)."""


def targets(phase: Phase, kind: str) -> frozenset[Phase]:
    return TARGETS.get(TRANSITIONS[(phase, kind)], frozenset()) | {phase}


def step(f: Farm, ev: Event, now: float) -> Result:
    kind = event_kind(ev)
    handler = TRANSITIONS.get((f.phase, kind))
    if handler is None:
        raise UnexpectedEvent(f"farm {f.module}: {kind} in phase {f.phase.value}")
    f2, actions = handler(f, ev, now)
    if f2.phase not in targets(f.phase, kind):
        raise UnexpectedEvent(
            f"farm {f.module}: {kind} in {f.phase.value} led to {f2.phase.value}, which its "
            "table entry does not allow"
        )
    return f2, actions


# --- heartbeat payload ----------------------------------------------------------------------


def to_wire(p: Published) -> dict[str, object]:
    return {
        "k": "farm",
        "m": p.member,
        "i": p.inc,
        "s": p.seq,
        "v": list(p.view),
        "o": f"{p.owned:064x}",
        "a": [list(x) for x in p.acks],
        "d": p.digest,
        "st": p.state,
        "su": p.status,
    }


def from_wire(obj: object) -> Published | None:
    """A peer's publication, or None if it is not a farm publication we can read."""
    if not isinstance(obj, dict) or obj.get("k") != "farm":
        return None
    try:
        return Published(
            member=bool(obj["m"]),
            inc=str(obj["i"]),
            seq=int(obj["s"]),
            view=tuple(str(n) for n in obj["v"]),
            owned=int(str(obj["o"]), 16) & ALL,
            acks=tuple((str(n), str(s)) for n, s in obj["a"]),
            digest=str(obj["d"]),
            state=str(obj.get("st", "STOP")),
            status=str(obj.get("su", "not-ready")),
        )
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
