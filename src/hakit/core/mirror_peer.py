"""What the mirror state machine does when what it knows of the peer changes.

Handlers of `mirror.TRANSITIONS`: the peer becomes primary, goes away, comes back.
"""

from __future__ import annotations

from dataclasses import replace

from hakit.core.mirror_decide import (
    _decide,
    _go,
    _name,
    _secondary_alone,
    _start_op,
)
from hakit.core.mirror_model import (
    PRIMARYISH,
    Action,
    Cmp,
    Event,
    Mirror,
    PeerChanged,
    Persist,
    Phase,
    Publish,
    Result,
    Then,
    Wake,
    compare,
)
from hakit.core.mirror_split import (
    _lost_arbiter,
    _split_brain,
    no_vouch,
    unproven,
)
from hakit.core.outcomes import Explain

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
    if unproven(m2):
        why = ev.why if isinstance(ev, PeerChanged) and ev.why else no_vouch(m2)
        note = m.arbiter_note or "no answer"
        return _lost_arbiter(m2, now, f"{why}, and the arbiter does not grant the role ({note})")
    if m2.peer.primary:
        if was_ready:  # it took over without this node: its copy is stale from then on
            m3, acts0 = _alone(m2, now, fresh_id, f"{peer} took over ({m2.peer.phase.value})")
            m4, more = _split_brain(m3, now)
            return m4, acts0 + more
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
        if m.default_primary == peer and m.failback_delay > 0:
            at = now + m.failback_delay
            m4 = replace(m3, failback_at=at)
            told = Explain(
                f"{_name(m)}: failback to {peer}, the default primary, in "
                f"{m.failback_delay:g} s (failback_delay) if it stays a ready secondary"
            )
            return m4, (*acts, told, Wake(at))
        if m.default_primary == peer:
            return _failback(m3, now, acts)
        return m3, acts
    if was_ready and not is_ready:
        why = ev.why if isinstance(ev, PeerChanged) and ev.why else f"{peer} {m2.peer.describe()}"
        return _alone(m2, now, fresh_id, why)
    return m2, ()


def _failback(m: Mirror, now: float, acts: tuple[Action, ...] = ()) -> Result:
    """Swap the roles back to the peer, the default primary (a ready secondary)."""
    m2, more = _start_op(
        replace(m, failback_at=0.0),
        Phase.DEMOTING,
        now,
        f"{_name(m)} failback: {m.peer_name} is the default primary; swapping",
        then=Then.SWAP,
    )
    return m2, acts + more


def _due_primary(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    """The failback delay ran out: swap if it is still due (the default primary stayed a
    ready secondary all along: leaving reset it, and a later return set a later time)."""
    if m.failback_at <= 0 or now < m.failback_at:
        return m, ()
    if m.phase is not Phase.PRIM or not m.peer_second_ready():
        return replace(m, failback_at=0.0), ()
    return _failback(m, now)


def _due_noted(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    """A wake-up for a failback that no longer applies (the node is no longer primary)."""
    return replace(m, failback_at=0.0), ()


def _alone(m: Mirror, now: float, fresh_id: str, why: str) -> Result:
    """The primary lost its ready secondary: a new generation, the peer's copy is stale."""
    data = replace(m.data.next_generation(fresh_id), alone_ok=True)
    m2 = _go(m, Phase.ALONE, now, data=data)
    return m2, (
        Persist(data, m.failover),
        Explain(
            f"{_name(m)} ALONE: {why}; {m.peer_name}'s copy is stale from now ({data.label()})",
            "warning",
        ),
        Publish(),
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
    if m2.peer.present and compare(m2.data, m2.peer.data) is Cmp.OLDER:
        # The peer went on without us (e.g. alone, then a restart) and is back, not primary:
        # this copy lacks its changes, so no takeover; the peer waits for a settled secondary.
        return _start_op(
            m2,
            Phase.LEAVING,
            now,
            f"{_name(m)}: {m.peer_name} is back with newer data ({m2.peer.data.label()} vs "
            f"{m.data.label()}); leaving the secondary side to wait for it and resynchronise",
        )
    return _secondary_alone(m2, now, fresh_id, ev)
