"""The witness arbiter: which node holds the lease of each (cluster, module). Pure, table-driven.

When the two nodes of a mirror module lose each other, only the node holding the module's lease
may be or become primary. The witness (a third machine) grants leases; this module is its whole
decision logic, over frozen values with the time injected, so the server, the in-memory fake and
the property tests run exactly the same rules.

Safety rests on three facts:
- a node counts its lease from the moment it *sent* the request (`deadline = send + ttl`), which
  is never later than the witness's own expiry (`grant + ttl`): the node always believes it
  holds the lease for less time than the witness does;
- the witness grants the lease to another node only once the holder released it, or once its
  lease expired *and* the holder's grace passed (the time the holder needs to stop the module
  after its own deadline);
- a witness that restarts forgets every lease: during `quarantine` seconds it grants no new
  lease, and it refuses any lease whose ttl + grace exceeds the quarantine, so every lease
  granted before the restart has run out, grace included, when the quarantine ends. A holder
  whose lease has not run out may renew it during the quarantine (the witness cannot check its
  claim, so the client sends `renew` only while its own deadline has not passed).

Leases say who may serve; they do not say whose copy of the data is current. A node that is
granted the lease while it serves *alone* (its request says so: no ready secondary, or it asks
to take over) is recorded as the module's `latest`: from then on every other node's copy is
outdated, and the witness refuses it the lease even after the alone node dies, so that writes
acknowledged alone are never lost to a takeover by a stale node (DRBD's "outdate-peer" fencing
does the same through its peers). The mark goes when the latest node is granted again with a
ready secondary (the copies are the same again), or when the operator forces another node
(`primforce`, the request's `force`: what the alone node wrote is given up). Marks survive a
restart of the witness (`restore`, the server keeps them on disk).

Entry points:
- `admit(arbiter, request, now, wall)`: freshness (replayed, duplicate, old boot, clock skew);
  a rejected request is dropped without an answer and counted;
- `decide(arbiter, request, now)`: the lease rules, one `Decision` per admitted request;
- `expire(arbiter, now)`: time passes (expired leases, forgotten contenders), for the log.

`TRANSITIONS` lists every (lease state, op, role of the requester) that can happen; any other
combination raises `UnexpectedRequest`. `now` is a monotonic clock in seconds, `wall` the
witness's wall clock (only compared with the sender's `sent_at`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from hakit.wire.witness import Op, Reject, Request

MAX_TTL = 60.0
MAX_GRACE = 60.0
MAX_SKEW = 30.0
"""A request whose `sent_at` is further than this from the witness clock is dropped (`skew`):
after a restart the witness has no memory of sequence numbers, and this bounds how old a
captured datagram can be and still be accepted."""
NODE_MEMORY = 3 * MAX_SKEW
"""A node silent for this long can be forgotten: any datagram it sent before is now refused as
`skew`, so forgetting its sequence number cannot let a replay in."""
CONTENDER_MEMORY = 2.0
"""A contender that has not asked for this many times its ttl is forgotten."""
MAX_NODES_PER_CLUSTER = 64
SEQ_WINDOW = 64
"""A request may arrive up to this many sequence numbers late (concurrent requests of one node
reordered on the way, or copies through several witness addresses) and still be accepted once;
like IPsec's anti-replay window, each number is accepted at most once."""
MAX_LEASES_PER_CLUSTER = 256

LeaseKey = tuple[str, str]  # (cluster, module)
NodeKey = tuple[str, str]  # (cluster, node)


class LeaseState(StrEnum):
    VACANT = "vacant"  # nobody held it since the witness started
    HELD = "held"  # a holder with an unexpired lease
    EXPIRED = "expired"  # the last holder did not renew in time (its grace may still run)
    RELEASED = "released"  # the last holder gave it back


class Role(StrEnum):
    HOLDER = "holder"  # the requester holds the unexpired lease
    PREVIOUS = "previous"  # the requester held the lease that expired
    OTHER = "other"


class UnexpectedRequest(Exception):
    """A (state, op, role) the transition table does not allow: a bug, never ignored."""


@dataclass(frozen=True, slots=True)
class Contender:
    """A node asking for a lease held or recently held by another (one contest)."""

    first: float  # its first request of this contest
    last: float  # its latest request
    ttl: float
    grace: float


@dataclass(frozen=True, slots=True)
class Ended:
    """How the last holder's lease ended."""

    holder: str
    at: float  # when it expired or was released
    grace: float  # the holder's grace: time it may still need to stop its module
    released: bool
    boot: bytes = b""  # the holder's boot and sequence number of its release, or of its
    seq: int = -1  # last granted request if the lease expired (see `_sent_before`)


@dataclass(frozen=True, slots=True)
class Lease:
    holder: str = ""  # "" when nobody holds it (then expires, grace, since are unused)
    expires: float = 0.0
    grace: float = 0.0
    since: float = 0.0  # when it was granted to the holder
    boot: bytes = b""  # the holder's boot and the sequence number of the request that last
    seq: int = -1  # granted or extended its lease (see `_sent_before`)
    previous: Ended | None = None
    contenders: Mapping[str, Contender] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Seen:
    """The newest boot of a node, the highest sequence number accepted from it, and which of the
    `SEQ_WINDOW` numbers below it were accepted too (bit i set: `seq - 1 - i` was accepted)."""

    boot: bytes
    seq: int
    last: float  # when it was last heard (monotonic)
    window: int = 0


@dataclass(frozen=True)
class Arbiter:
    started: float  # monotonic time the witness started (its quarantine starts then)
    quarantine: float
    leases: Mapping[LeaseKey, Lease] = field(default_factory=dict)
    seen: Mapping[NodeKey, Seen] = field(default_factory=dict)
    latest: Mapping[LeaseKey, str] = field(default_factory=dict)  # the node granted while it
    # served alone: the only current copy of the module (see the module docstring)

    def in_quarantine(self, now: float) -> bool:
        return now < self.started + self.quarantine


def new_arbiter(
    now: float, quarantine: float, latest: Mapping[LeaseKey, str] | None = None
) -> Arbiter:
    """A witness that starts (or restarts) at `now`: it knows no lease and no node, only the
    `latest` marks it kept on disk."""
    if not quarantine > 0:
        raise ValueError("the quarantine must be positive")
    return Arbiter(started=now, quarantine=quarantine, latest=dict(latest or {}))


def _outdated(arb: Arbiter, req: Request) -> str | None:
    """Why `req`'s node may not be given the lease: another node served alone since its copy
    was last current (None: it may)."""
    latest = arb.latest.get((req.cluster, req.module))
    if latest is None or latest == req.node or req.force:
        return None
    return (
        f"{latest} served {req.module} without {req.node} and was granted the lease then: "
        f"the copy on {req.node} is outdated. {req.node} takes over again once it is up to date "
        f"with {latest}; `hakit primforce {req.module}` on {req.node} accepts losing what "
        f"{latest} wrote alone"
    )


@dataclass(frozen=True, slots=True)
class Note:
    """One explanatory line for the witness's log (a grant, release, expiry or refusal)."""

    cluster: str
    module: str
    node: str
    op: str  # the request's op, or "expire"
    kind: str  # "granted" | "released" | "expired" | "refused"
    granted: bool
    message: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one request."""

    granted: bool
    holder: str
    remaining: float
    reason: str  # addressed to the requester
    notes: tuple[Note, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reject
    detail: str


def _s(seconds: float) -> str:
    return f"{seconds:.1f} s"


def state_of(lease: Lease) -> LeaseState:
    """The state of a settled lease (see `_settle`)."""
    if lease.holder:
        return LeaseState.HELD
    if lease.previous is None:
        return LeaseState.VACANT
    return LeaseState.RELEASED if lease.previous.released else LeaseState.EXPIRED


# --- freshness -------------------------------------------------------------------------------


def admit(arb: Arbiter, req: Request, now: float, wall: float) -> tuple[Arbiter, Rejection | None]:
    """Is this authenticated request fresh? Records its sequence number if so.

    A captured request sent again is refused: a sequence number already accepted (`duplicate`:
    also the normal fate of the copies a node sends to the witness's other addresses), older
    than the acceptance window (`replayed`), from an older boot of the node (`old-boot`), or
    too far from the witness clock (`skew`) — the last guard after a witness restart, when the
    others have no memory yet.
    """
    if abs(req.sent_at - wall) > MAX_SKEW:
        return arb, Rejection(
            Reject.SKEW,
            f"{req.cluster}/{req.node}: sent_at differs from the witness clock by "
            f"{_s(req.sent_at - wall)} (at most {MAX_SKEW:g} s): synchronise the clocks (NTP)",
        )
    key = (req.cluster, req.node)
    seen = arb.seen.get(key)
    if seen is None or req.boot != seen.boot:
        if seen is not None and req.boot < seen.boot:  # start time first: byte order is age
            return arb, Rejection(
                Reject.OLD_BOOT, f"{req.cluster}/{req.node}: a boot older than its newest"
            )
        fresh = Seen(req.boot, req.seq, now)
    elif req.seq > seen.seq:
        shift = req.seq - seen.seq
        window = ((seen.window << 1 | 1) << (shift - 1)) if shift <= SEQ_WINDOW else 0
        fresh = Seen(req.boot, req.seq, now, window & ((1 << SEQ_WINDOW) - 1))
    else:
        back = seen.seq - req.seq  # 0: the highest itself
        if back > SEQ_WINDOW:
            return arb, Rejection(
                Reject.REPLAYED,
                f"{req.cluster}/{req.node}: seq {req.seq} is {back} below the highest "
                f"({seen.seq}), beyond the window of {SEQ_WINDOW}",
            )
        bit = 1 << (back - 1) if back else 0
        if back == 0 or seen.window & bit:
            return arb, Rejection(
                Reject.DUPLICATE, f"{req.cluster}/{req.node}: seq {req.seq} already received"
            )
        fresh = replace(seen, window=seen.window | bit, last=now)
    table = dict(arb.seen)
    if seen is None:
        mine = [k for k in table if k[0] == req.cluster]
        if len(mine) >= MAX_NODES_PER_CLUSTER:
            for k in mine:
                if now - table[k].last > NODE_MEMORY:
                    del table[k]
            if sum(1 for k in table if k[0] == req.cluster) >= MAX_NODES_PER_CLUSTER:
                return arb, Rejection(
                    Reject.LIMIT,
                    f"cluster {req.cluster}: more than {MAX_NODES_PER_CLUSTER} nodes at once",
                )
    table[key] = fresh
    return replace(arb, seen=table), None


# --- the lease rules -------------------------------------------------------------------------


def _settle(lease: Lease, now: float, key: LeaseKey) -> tuple[Lease, tuple[Note, ...]]:
    """Apply the passing of time: end an expired lease, forget silent contenders."""
    notes: tuple[Note, ...] = ()
    if lease.holder and now >= lease.expires:
        cluster, module = key
        notes = (
            Note(
                cluster,
                module,
                lease.holder,
                "expire",
                "expired",
                False,
                f"{cluster}/{module}: {lease.holder}'s lease expired (not renewed in time, "
                f"held {_s(lease.expires - lease.since)}); another node may be granted it after "
                f"{lease.holder}'s grace of {lease.grace:g} s",
            ),
        )
        lease = Lease(
            previous=Ended(lease.holder, lease.expires, lease.grace, False, lease.boot, lease.seq),
            contenders=lease.contenders,
        )
    stale = [n for n, c in lease.contenders.items() if now - c.last > CONTENDER_MEMORY * c.ttl]
    if stale:
        lease = replace(
            lease, contenders={n: c for n, c in lease.contenders.items() if n not in stale}
        )
    return lease, notes


def _role(lease: Lease, state: LeaseState, node: str) -> Role:
    if state is LeaseState.HELD and lease.holder == node:
        return Role.HOLDER
    if state is LeaseState.EXPIRED and lease.previous is not None and lease.previous.holder == node:
        return Role.PREVIOUS
    return Role.OTHER


def _quarantine_reason(arb: Arbiter, now: float) -> str:
    return (
        f"witness restarted {_s(now - arb.started)} ago: no new lease before {arb.quarantine:g} s"
    )


def _held_reason(lease: Lease, now: float) -> str:
    return f"held by {lease.holder} for {_s(lease.expires - now)} more"


def _remaining(lease: Lease, now: float) -> float:
    return max(0.0, lease.expires - now) if lease.holder else 0.0


def _refuse(
    lease: Lease, req: Request, now: float, reason: str, *, log: bool = False
) -> tuple[Lease, Decision]:
    notes: tuple[Note, ...] = ()
    if log:
        notes = (
            Note(
                req.cluster,
                req.module,
                req.node,
                req.op,
                "refused",
                False,
                f"{req.cluster}/{req.module}: lease refused to {req.node}: {reason}",
            ),
        )
    return lease, Decision(False, lease.holder, _remaining(lease, now), reason, notes)


def _grant(
    lease: Lease, req: Request, now: float, why: str, grace: float | None = None
) -> tuple[Lease, Decision]:
    new = Lease(
        holder=req.node,
        expires=now + req.ttl,
        grace=req.grace if grace is None else grace,
        since=now,
        boot=req.boot,
        seq=req.seq,
        previous=lease.previous,
    )
    note = Note(
        req.cluster,
        req.module,
        req.node,
        req.op,
        "granted",
        True,
        f"{req.cluster}/{req.module}: lease granted to {req.node} ({why})",
    )
    return new, Decision(True, req.node, req.ttl, f"granted for {req.ttl:g} s ({why})", (note,))


Handler = Callable[[Arbiter, Lease, Request, float], tuple[Lease, Decision]]


def _sent_before(req: Request, boot: bytes, seq: int) -> bool:
    """Was `req` sent before the request (boot, seq) of the same node, and arrived after it?

    Requests of one node may arrive out of order (see `SEQ_WINDOW`). A release sent before an
    acquisition must not free the lease that acquisition granted (the node believes it holds
    it), and an acquisition sent before a release must not take the lease back.
    """
    return req.boot == boot and req.seq < seq


_LATE = "it was sent before your latest request about this lease, and arrived after it"


def _extend(arb: Arbiter, lease: Lease, req: Request, now: float) -> tuple[Lease, Decision]:
    """The holder asks again: its lease runs `ttl` from now, and is never shortened."""
    new = replace(
        lease,
        expires=max(lease.expires, now + req.ttl),
        grace=max(lease.grace, req.grace),
        boot=req.boot,
        seq=max(lease.seq, req.seq) if req.boot == lease.boot else req.seq,
    )
    left = new.expires - now
    verb = "renewed" if req.op is Op.RENEW else "granted"
    return new, Decision(True, req.node, left, f"{verb}: you hold it for {_s(left)}")


def _contend(arb: Arbiter, lease: Lease, req: Request, now: float) -> tuple[Lease, Decision]:
    """Another node asks: recorded as a contender; granted only by the rules below."""
    node = req.node
    prev = lease.previous
    if prev is not None and prev.holder == node and _sent_before(req, prev.boot, prev.seq):
        return _refuse(lease, req, now, f"not granted: {_LATE}")
    contenders = dict(lease.contenders)
    mine = contenders.get(node)
    first_time = mine is None
    contenders[node] = Contender(
        first=now if mine is None else mine.first, last=now, ttl=req.ttl, grace=req.grace
    )
    lease = replace(lease, contenders=contenders)
    state = state_of(lease)
    if state is LeaseState.HELD:
        return _refuse(lease, req, now, _held_reason(lease, now), log=first_time)
    if arb.in_quarantine(now):
        return _refuse(lease, req, now, _quarantine_reason(arb, now), log=first_time)
    if (stale := _outdated(arb, req)) is not None:
        return _refuse(lease, req, now, stale, log=first_time)
    if state is LeaseState.VACANT:
        why = f"no holder since the witness started {_s(now - arb.started)} ago"
    elif prev is not None and state is LeaseState.RELEASED:
        why = f"{prev.holder} released it {_s(now - prev.at)} ago"
    else:
        assert prev is not None
        if prev.holder == node and len(contenders) == 1:
            # Its own lease comes back to it and nobody else wants it: nobody else can run the
            # module, so there is nothing to wait for. What is left of its earlier grace still
            # binds the next holder: the new lease's expiry + grace covers it.
            pending = prev.at + prev.grace - (now + req.ttl)
            return _grant(
                lease,
                req,
                now,
                f"its lease had expired {_s(now - prev.at)} ago and nobody else asked for it",
                grace=max(req.grace, pending),
            )
        why = f"{prev.holder}'s lease expired {_s(now - prev.at)} ago, grace {prev.grace:g} s"

    def ready_at(c: Contender) -> float:
        if state is LeaseState.EXPIRED and prev is not None:
            return max(prev.at + prev.grace, c.first + c.grace)
        return c.first

    me = contenders[node]
    if ready_at(me) > now:
        wait = ready_at(me) - now
        if prev is not None and prev.at + prev.grace > now:
            reason = (
                f"{prev.holder}'s lease expired {_s(now - prev.at)} ago: waiting for its grace "
                f"of {prev.grace:g} s ({_s(wait)} more)"
            )
        else:
            reason = f"waiting for your own grace of {req.grace:g} s ({_s(wait)} more)"
        return _refuse(lease, req, now, reason, log=first_time)
    first, winner = min((c.first, n) for n, c in contenders.items() if ready_at(c) <= now)
    if winner != node:
        reason = f"{winner} asked first ({_s(now - first)} ago) and is granted next"
        return _refuse(lease, req, now, reason, log=first_time)
    return _grant(lease, req, now, why)


def _renew_unrecorded(
    arb: Arbiter, lease: Lease, req: Request, now: float
) -> tuple[Lease, Decision]:
    """A renewal for a lease nobody held since this witness started.

    During the quarantine that follows a restart, it comes from the node that held the lease
    before the restart (an honest client renews only while its own deadline runs): the lease is
    given back to it. Otherwise it is an acquisition like any other.
    """
    if arb.in_quarantine(now) and _outdated(arb, req) is None:
        return _grant(
            lease,
            req,
            now,
            f"renewal after the witness restarted {_s(now - arb.started)} ago: "
            f"{req.node} held it before",
        )
    return _contend(arb, lease, req, now)


def _released_note(req: Request, text: str) -> Note:
    return Note(req.cluster, req.module, req.node, req.op, "released", True, text)


def _release(arb: Arbiter, lease: Lease, req: Request, now: float) -> tuple[Lease, Decision]:
    """The holder gives the lease back (it has stopped the module): free at once."""
    if _sent_before(req, lease.boot, lease.seq):
        return lease, Decision(
            False, lease.holder, _remaining(lease, now), f"not released: {_LATE}"
        )
    new = Lease(
        previous=Ended(req.node, now, lease.grace, True, req.boot, req.seq),
        contenders=lease.contenders,
    )
    note = _released_note(req, f"{req.cluster}/{req.module}: lease released by {req.node}")
    return new, Decision(True, "", 0.0, "released", (note,))


def _release_expired(
    arb: Arbiter, lease: Lease, req: Request, now: float
) -> tuple[Lease, Decision]:
    """The holder of an expired lease says it has stopped: no need to wait for its grace."""
    prev = lease.previous
    assert prev is not None
    if _sent_before(req, prev.boot, prev.seq):
        return lease, Decision(False, "", 0.0, f"not released: {_LATE}")
    new = replace(lease, previous=replace(prev, at=now, released=True, boot=req.boot, seq=req.seq))
    note = _released_note(
        req, f"{req.cluster}/{req.module}: {req.node} released its expired lease (it has stopped)"
    )
    return new, Decision(True, "", 0.0, "released (your lease had already expired)", (note,))


def _not_holder(arb: Arbiter, lease: Lease, req: Request, now: float) -> tuple[Lease, Decision]:
    who = f"held by {lease.holder}" if lease.holder else "nobody holds it"
    return lease, Decision(False, lease.holder, _remaining(lease, now), f"not released: {who}")


def _query(arb: Arbiter, lease: Lease, req: Request, now: float) -> tuple[Lease, Decision]:
    state = state_of(lease)
    prev = lease.previous
    if state is LeaseState.HELD:
        left = lease.expires - now
        mine = lease.holder == req.node
        text = f"you hold it for {_s(left)} more" if mine else _held_reason(lease, now)
        return lease, Decision(mine, lease.holder, left, text)
    if prev is None:
        text = f"free: never held since the witness started {_s(now - arb.started)} ago"
    elif prev.released:
        text = f"free: released by {prev.holder} {_s(now - prev.at)} ago"
    else:
        text = (
            f"free: {prev.holder}'s lease expired {_s(now - prev.at)} ago (grace {prev.grace:g} s)"
        )
    if arb.in_quarantine(now):
        text += "; " + _quarantine_reason(arb, now)
    return lease, Decision(False, "", 0.0, text)


_V, _H, _E, _R = LeaseState.VACANT, LeaseState.HELD, LeaseState.EXPIRED, LeaseState.RELEASED
_ACQ, _REN, _REL, _QRY = Op.ACQUIRE, Op.RENEW, Op.RELEASE, Op.QUERY
_HOLDER, _PREV, _OTHER = Role.HOLDER, Role.PREVIOUS, Role.OTHER

TRANSITIONS: dict[tuple[LeaseState, Op, Role], tuple[frozenset[LeaseState], Handler]] = {
    (_V, _ACQ, _OTHER): (frozenset({_V, _H}), _contend),
    (_V, _REN, _OTHER): (frozenset({_V, _H}), _renew_unrecorded),
    (_V, _REL, _OTHER): (frozenset({_V}), _not_holder),
    (_V, _QRY, _OTHER): (frozenset({_V}), _query),
    (_H, _ACQ, _HOLDER): (frozenset({_H}), _extend),
    (_H, _REN, _HOLDER): (frozenset({_H}), _extend),
    (_H, _REL, _HOLDER): (frozenset({_R, _H}), _release),
    (_H, _QRY, _HOLDER): (frozenset({_H}), _query),
    (_H, _ACQ, _OTHER): (frozenset({_H}), _contend),
    (_H, _REN, _OTHER): (frozenset({_H}), _contend),
    (_H, _REL, _OTHER): (frozenset({_H}), _not_holder),
    (_H, _QRY, _OTHER): (frozenset({_H}), _query),
    (_E, _ACQ, _PREV): (frozenset({_E, _H}), _contend),
    (_E, _REN, _PREV): (frozenset({_E, _H}), _contend),
    (_E, _REL, _PREV): (frozenset({_R, _E}), _release_expired),
    (_E, _QRY, _PREV): (frozenset({_E}), _query),
    (_E, _ACQ, _OTHER): (frozenset({_E, _H}), _contend),
    (_E, _REN, _OTHER): (frozenset({_E, _H}), _contend),
    (_E, _REL, _OTHER): (frozenset({_E}), _not_holder),
    (_E, _QRY, _OTHER): (frozenset({_E}), _query),
    (_R, _ACQ, _OTHER): (frozenset({_R, _H}), _contend),
    (_R, _REN, _OTHER): (frozenset({_R, _H}), _contend),
    (_R, _REL, _OTHER): (frozenset({_R}), _not_holder),
    (_R, _QRY, _OTHER): (frozenset({_R}), _query),
}
"""(lease state, op, role of the requester) -> (states the handler may leave, handler)."""


def check_parameters(arb: Arbiter, ttl: float, grace: float) -> str | None:
    """Why a lease with this ttl and grace cannot be granted, or None if it can."""
    if not 0 < ttl <= MAX_TTL:
        return f"ttl {ttl:g} s is out of range: expected more than 0 and at most {MAX_TTL:g} s"
    if not 0 <= grace <= MAX_GRACE:
        return f"grace {grace:g} s is out of range: expected 0 to {MAX_GRACE:g} s"
    if ttl + grace > arb.quarantine:
        return (
            f"ttl {ttl:g} s + grace {grace:g} s = {ttl + grace:g} s exceeds the witness "
            f"quarantine of {arb.quarantine:g} s: such a lease could outlive a witness restart "
            "(shorten it, or raise `quarantine` in witness.yaml)"
        )
    return None


def decide(arb: Arbiter, req: Request, now: float) -> tuple[Arbiter, Decision]:
    """Apply the lease rules to one admitted request."""
    key = (req.cluster, req.module)
    existing = arb.leases.get(key)
    lease, notes = _settle(existing or Lease(), now, key)
    state = state_of(lease)
    entry = TRANSITIONS.get((state, req.op, _role(lease, state, req.node)))
    if entry is None:
        raise UnexpectedRequest(
            f"{req.cluster}/{req.module}: {req.op} by {req.node} with the lease {state}"
        )
    targets, handler = entry
    problem = None
    if req.op in (Op.ACQUIRE, Op.RENEW):
        problem = check_parameters(arb, req.ttl, req.grace)
        if existing is None and problem is None:
            count = sum(1 for c, _ in arb.leases if c == req.cluster)
            if count >= MAX_LEASES_PER_CLUSTER:
                problem = (
                    f"this witness already keeps {count} leases for cluster {req.cluster} "
                    f"(at most {MAX_LEASES_PER_CLUSTER})"
                )
    if problem is not None:
        new, decision = _refuse(lease, req, now, problem, log=True)
    else:
        new, decision = handler(arb, lease, req, now)
        if state_of(new) not in targets:  # the table is the truth; a handler may not disagree
            raise UnexpectedRequest(f"handler for ({state}, {req.op}) left {state_of(new)}")
    leases = dict(arb.leases)
    if new == Lease():
        leases.pop(key, None)
    else:
        leases[key] = new
    latest = _mark(arb.latest, req, decision)
    if latest is not arb.latest:
        text = (
            f"{req.cluster}/{req.module}: {req.node} serves alone: the copies of the other "
            "nodes are outdated"
            if key in latest
            else f"{req.cluster}/{req.module}: {req.node} has a current secondary again"
        )
        marked = Note(req.cluster, req.module, req.node, req.op, "latest", True, text)
        decision = replace(decision, notes=(*decision.notes, marked))
    if notes:
        decision = replace(decision, notes=notes + decision.notes)
    return replace(arb, leases=leases, latest=latest), decision


def _mark(latest: Mapping[LeaseKey, str], req: Request, d: Decision) -> Mapping[LeaseKey, str]:
    """The `latest` marks after a decision (the same mapping when nothing changes): a grant to
    a node serving alone marks it; a grant to the marked node (or a forced one) with a ready
    secondary clears the mark."""
    key = (req.cluster, req.module)
    if not d.granted or req.op not in (Op.ACQUIRE, Op.RENEW):
        return latest
    before = latest.get(key)
    if req.alone:
        after: str | None = req.node
    elif before == req.node or req.force:
        after = None
    else:
        after = before
    if after == before:
        return latest
    out = dict(latest)
    if after is None:
        out.pop(key, None)
    else:
        out[key] = after
    return out


def expire(arb: Arbiter, now: float) -> tuple[Arbiter, tuple[Note, ...]]:
    """Time passes: end the leases that expired and forget silent contenders (for the log)."""
    leases = dict(arb.leases)
    notes: list[Note] = []
    changed = False
    for key, lease in arb.leases.items():
        new, more = _settle(lease, now, key)
        if new != lease:
            leases[key] = new
            changed = True
            notes.extend(more)
    return (replace(arb, leases=leases) if changed else arb), tuple(notes)


def describe(arb: Arbiter, now: float) -> dict[str, dict[str, dict[str, Any]]]:
    """What the witness holds, by cluster and module, as plain data (for `hakit witness state`)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for cluster, module in sorted({*arb.leases, *arb.latest}):
        raw = arb.leases.get((cluster, module), Lease())
        lease, _ = _settle(raw, now, (cluster, module))
        state = state_of(lease)
        prev = lease.previous
        item: dict[str, Any] = {
            "state": state.value,
            "holder": lease.holder,
            "remaining": round(_remaining(lease, now), 3),
            "grace": lease.grace if lease.holder else None,
            "held_for": round(now - lease.since, 3) if lease.holder else None,
            "previous": None
            if prev is None
            else {
                "holder": prev.holder,
                "ended": "released" if prev.released else "expired",
                "ago": round(now - prev.at, 3),
                "grace": prev.grace,
            },
            "contenders": {
                n: {"waiting_for": round(now - c.first, 3), "ttl": c.ttl, "grace": c.grace}
                for n, c in sorted(lease.contenders.items())
            },
            "latest": arb.latest.get((cluster, module)),
        }
        out.setdefault(cluster, {})[module] = item
    return out
