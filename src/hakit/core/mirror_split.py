"""The mirror machine's split-brain protection: the arbiter's word and two primaries. Pure.

With an arbiter (witness, ping witness, fencing), a node may be primary without its peer only
while the arbiter allows it; when both nodes were primary anyway (no witness), `survivor` picks
who stays by the module's `keep` policy, with the same answer on both nodes.
"""

from __future__ import annotations

from dataclasses import replace

from hakit.core.mirror_decide import _ask, _decide, _name, _start_op, _takeover
from hakit.core.mirror_model import Arbiter, Event, Mirror, Phase, Result, Then, Want
from hakit.core.outcomes import Explain


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
