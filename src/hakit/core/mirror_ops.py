"""Completions of the executor's operations, loss of the replication, checkers' verdicts.

Handlers of `mirror.TRANSITIONS` for the mirror state machine.
"""

from __future__ import annotations

from dataclasses import replace

from hakit.core.mirror_decide import (
    _decide,
    _go,
    _holds_text,
    _name,
    _start_op,
    _stop_now,
    _then_pending,
    _wait_transient,
)
from hakit.core.mirror_model import (
    Action,
    Event,
    HeldWrites,
    Holds,
    Mirror,
    OpDone,
    Persist,
    Phase,
    Publish,
    Recover,
    ReplicaLost,
    Result,
    Then,
    Want,
)
from hakit.core.mirror_split import (
    _lost_arbiter,
    _split_brain,
    no_vouch,
    unproven,
)
from hakit.core.outcomes import Explain

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
    if unproven(m2) and m2.then is Then.NOTHING:  # lost the arbiter while promoting
        m3, more = _lost_arbiter(m2, now, f"the arbiter does not grant the role and {no_vouch(m2)}")
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
    if unproven(m2) and m2.then is Then.NOTHING:  # lost the arbiter while restarting
        m3, more = _lost_arbiter(m2, now, f"the arbiter does not grant the role and {no_vouch(m2)}")
        return m3, restarted + more
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


def _hold_writes(m: Mirror, now: float) -> Result:
    """The replication to a ready secondary broke: with an arbiter, the replication process
    holds the application's writes until the arbiter confirms (`mirror_split._confirmed`);
    a forced primary releases them at once (the operator vouched for this node)."""
    if not m.arbitrated:
        return m, ()
    if m.forced:
        return m, (HeldWrites(release=True),)
    if m.confirm_after:
        return m, ()
    return replace(m, confirm_after=now), (
        Explain(
            f"{_name(m)}: writes held until the arbiter confirms this node may go on alone "
            "(the other node must not take over without them)",
            "warning",
        ),
    )


def _replica_lost_prim(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    """The secondary stopped acknowledging: continue alone, its copy is stale from now."""
    assert isinstance(ev, ReplicaLost)
    data = replace(m.data.next_generation(fresh_id), alone_ok=True)
    m2 = _go(m, Phase.ALONE, now, data=data, reason=f"alone: {ev.detail}")
    m3, held = _hold_writes(m2, now)
    return m3, (
        Persist(data, m.failover),
        Explain(
            f"{_name(m)} ALONE: replication to {m.peer_name} ended ({ev.detail}); its copy is "
            f"stale from now ({data.label()})",
            "warning",
        ),
        *held,
        Publish(),
    )


def _replica_lost_primaryish(m: Mirror, ev: Event, now: float, fresh_id: str) -> Result:
    """Alone already (the peer was lost first), restarting or leaving the role: the secondary's
    copy is stale from now if it was not already, and held writes wait for the arbiter."""
    assert isinstance(ev, ReplicaLost)
    acts: tuple[Action, ...] = ()
    if ev.complete and m.phase is Phase.DEMOTING:
        return m, ()  # stopped in order as it hands over: the secondary's copy is complete
    if m.data.alone_ok is False:
        data = replace(m.data.next_generation(fresh_id), alone_ok=True)
        m = replace(m, data=data)
        acts = (
            Persist(data, m.failover),
            Explain(
                f"{_name(m)} ({m.phase.value}): replication to {m.peer_name} ended "
                f"({ev.detail}); its copy is stale from now ({data.label()})",
                "warning",
            ),
            Publish(),
        )
    m2, held = _hold_writes(m, now)
    return m2, acts + held


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
