"""The mirror machine's split-brain protection: the arbiter's word and two primaries. Pure.

With an arbiter (witness, ping witness, fencing), a node may be primary without its peer only
while the arbiter allows it; when both nodes were primary anyway (no witness), `survivor` picks
who stays by the module's `keep` policy, with the same answer on both nodes.

The rules that keep a single primary with a witness, whatever the network does (one-way cuts
included), and lose no acknowledged write:
- a primary whose lease lapsed (witness unreachable) stays primary only while its peer
  *vouches* for it: the peer's heartbeats, heard within the vouching window, say that it sees
  this node as primary and does not ask for the role (`mirror_model.vouching`). A peer that
  stops hearing the primary withdraws its vouch within that window, long before it declares
  the primary lost and asks the witness; the witness then still waits its grace. Without the
  vouch, the primary releases its VIPs first and steps down (`_lost_arbiter`), whatever else it
  hears. The arithmetic is in docs/mirror.md (split brain) and checked by the configuration
  (`heartbeat.timeout + grace >= 6 × heartbeat.interval + 0.1 s`);
- when the replication to a ready secondary breaks, the application's writes are held
  (`confirm_after`) until the arbiter grants a request *asked after* the break: then the other
  node cannot be granted the role before this node's new lease runs out, and this node will
  not lose that lease silently (it steps down instead, refusing what it held). Writes held when
  the node leaves the primary role are refused (EIO): never acknowledged, never lost.
"""

from __future__ import annotations

from dataclasses import replace

from hakit.core.mirror_decide import _ask, _decide, _name, _start_op, _takeover
from hakit.core.mirror_model import (
    PRIMARYISH,
    Arbiter,
    Event,
    HeldWrites,
    Mirror,
    Phase,
    Result,
    Then,
    Want,
)
from hakit.core.outcomes import Explain


def survivor(m: Mirror) -> str:
    """Who stays primary when both nodes are primary and no exclusive arbiter decides: the same
    answer on both nodes (each publishes since when it is primary). "" = nobody (policy
    `manual`)."""
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


def _stale_peer(m: Mirror) -> Result:
    """Both nodes are primary and an exclusive arbiter (a witness's lease) grants this one: the
    other is a primary whose lease lapsed while it could not act (frozen, or its daemon stalled)
    and that has not yet learnt it. It acknowledged nothing since (its writes were held: the
    replication to this node broke), and it steps down as soon as it learns that its lease is
    gone; this node stays, whatever the `keep` policy says (that policy is for two primaries
    that were both allowed, without an exclusive arbiter). A node whose own lease may be the
    stale one — it was primary first — does nothing here: the arbiter's next answer decides."""
    peer = m.peer_name
    if m.split_seen or not m.lease or m.primary_since < m.peer.since:
        return m, ()
    return replace(m, split_seen=True), (
        Explain(
            f"{m.module}: {peer} is primary too, but its lease lapsed (it was frozen or "
            f"stalled) and the arbiter granted the role to {m.local} "
            f"({m.arbiter_note or 'lease held'}); {m.local} stays primary, {peer} steps down when "
            "it learns it and rejoins as secondary, keeping what it wrote since in a dated folder",
            "warning",
        ),
    )


def _split_brain(m: Mirror, now: float) -> Result:
    """Both nodes are primary. Decided again at every view of the peer while it lasts (both
    sides reach the same answer, so it converges whatever order they saw each other in); said
    once. With an exclusive arbiter, the node it grants stays (`_stale_peer`)."""
    if m.exclusive and m.arbitrated and not m.forced:
        return _stale_peer(m)
    peer = m.peer_name
    keeper = survivor(m)
    if keeper == m.local and m.split_seen:
        return m, ()
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


def vouched(m: Mirror) -> bool:
    """The peer vouches for this node as the only primary (heard within the window)."""
    return m.peer.present and m.peer.fresh and m.peer.vouches


def unproven(m: Mirror) -> bool:
    """A primary that cannot prove it is the only one: an arbiter is configured, it does not
    grant the role, the peer does not vouch for this node, and no operator forced it."""
    return m.arbitrated and not m.lease and not m.forced and not vouched(m)


def no_vouch(m: Mirror) -> str:
    """Why the peer does not vouch for this node (for the explanation)."""
    p, peer = m.peer, m.peer_name
    if not p.alive:
        return f"{peer} is lost"
    if not p.installed:
        return f"{peer} does not run the module"
    if not p.fresh:
        return f"{peer} was not heard in the vouching window"
    return f"{peer} no longer vouches for it ({p.phase.value}: it does not hear this node, or asks)"


def _lost_arbiter(m: Mirror, now: float, why: str) -> Result:
    """A primary that can no longer prove it may be the only one: it leaves the role (its peer,
    or whoever the witness grants, takes over) and waits for the arbiter or its peer. Writes
    held since a replication break are refused first: they were never acknowledged."""
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


def _confirmed(m: Mirror, ev: Arbiter) -> Result:
    """Writes held since a replication break are released by a grant asked after the break."""
    if not (m.confirm_after and ev.granted and ev.asked > m.confirm_after):
        return m, ()
    return replace(m, confirm_after=0.0), (
        HeldWrites(release=True),
        Explain(
            f"{_name(m)}: the arbiter confirmed this node goes on alone ({ev.detail}, asked "
            f"{ev.asked - m.confirm_after:.2f} s after the replication broke): held writes "
            "released"
        ),
    )


def _arbiter_primary(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    assert isinstance(ev, Arbiter)
    m2, acts = _confirmed(replace(m, lease=ev.granted, arbiter_note=ev.detail), ev)
    if ev.granted or not m.lease:
        return m2, acts
    if not unproven(m2):
        return m2, (
            Explain(
                f"{_name(m)}: the arbiter no longer grants the primary role ({ev.detail}); "
                f"still primary while {m.peer_name} vouches for it",
                "warning",
            ),
        )
    return _lost_arbiter(
        m2, now, f"the arbiter no longer grants the role ({ev.detail}) and {no_vouch(m2)}"
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
    """Remembered; used by the next decision (held writes may be released meanwhile)."""
    assert isinstance(ev, Arbiter)
    m2 = replace(m, lease=ev.granted, arbiter_note=ev.detail)
    return _confirmed(m2, ev) if m.phase in PRIMARYISH else (m2, ())
