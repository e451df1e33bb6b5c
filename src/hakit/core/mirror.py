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

from dataclasses import replace

from hakit.core.mirror_decide import (
    _decide,
    _go,
    _holds_text,
    _name,
    _secondary_alone,
    _start_op,
    _stop_now,
    _then_pending,
    _wait_transient,
)
from hakit.core.mirror_model import (
    OP_OF_PHASE,
    PRIMARYISH,
    Action,
    Arbiter,
    Cmd,
    Cmp,
    Command,
    Data,
    Event,
    Handler,
    HeldWrites,
    Holds,
    Mirror,
    Op,
    OpDone,
    PeerChanged,
    PeerInfo,
    Persist,
    Phase,
    Publish,
    Recover,
    ReplicaLost,
    Result,
    RunOp,
    Then,
    Want,
    compare,
    event_kind,
    peer_from_wire,
    serves_alone,
    to_wire,
    unprotected,
    vouching,
)
from hakit.core.mirror_split import (
    _arbiter_noted,
    _arbiter_primary,
    _arbiter_second,
    _arbiter_waiting,
    _lost_arbiter,
    _split_brain,
    no_vouch,
    unproven,
)
from hakit.core.outcomes import Accepted, Explain, Refused, UnexpectedEvent

__all__ = [
    "OP_OF_PHASE",
    "PRIMARYISH",
    "TRANSITIONS",
    "Action",
    "Arbiter",
    "Cmd",
    "Cmp",
    "Command",
    "Data",
    "Event",
    "HeldWrites",
    "Holds",
    "Mirror",
    "Op",
    "OpDone",
    "PeerChanged",
    "PeerInfo",
    "Persist",
    "Phase",
    "Publish",
    "Recover",
    "ReplicaLost",
    "RunOp",
    "Then",
    "compare",
    "peer_from_wire",
    "serves_alone",
    "step",
    "targets",
    "to_wire",
    "unprotected",
    "vouching",
]


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
        why = ev.why if isinstance(ev, PeerChanged) and ev.why else f"{peer} {m2.peer.describe()}"
        return _alone(m2, now, fresh_id, why)
    return m2, ()


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


# arbitration (split-brain protection)
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
    _replica_lost_primaryish: _SAME,
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
            Phase.ALONE: _replica_lost_primaryish,
            Phase.RESTARTING: _replica_lost_primaryish,
            Phase.DEMOTING: _replica_lost_primaryish,
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
    return _invariants(m, new, actions)


def _invariants(old: Mirror, new: Mirror, actions: tuple[Action, ...]) -> Result:
    """What holds after every step, whichever handler ran:
    - leaving the primary role refuses the writes still held (never acknowledged, so never
      lost: the application sees EIO);
    - a change of this node's vouch for its peer is published at once (the primary relies on
      it when its arbiter does not answer), and so is a change of why it is blocked;
    - a primary told by its peer why it cannot become secondary says so as an error (the
      module runs unreplicated: the reason must not stay in the peer's log only)."""
    more: tuple[Action, ...] = ()
    if new.confirm_after and (new.phase is Phase.DEMOTING or new.phase not in PRIMARYISH):
        new = replace(new, confirm_after=0.0)
        more += (
            HeldWrites(release=False),
            Explain(
                f"{_name(new)}: held writes refused (EIO): leaving the primary role before the "
                "arbiter confirmed them",
                "warning",
            ),
        )
    if new.phase not in PRIMARYISH and new.forced:
        new = replace(new, forced=False)
    published = vouching(new) != vouching(old) or (new.blocked, new.join_failed) != (
        old.blocked,
        old.join_failed,
    )
    if published and not any(isinstance(a, Publish) for a in actions):
        more += (Publish(),)
    if new.peer.blocked and new.peer.blocked != old.peer.blocked and new.phase in PRIMARYISH:
        more += (Explain(f"{_name(new)} {unprotected(new) or 'not replicated'}", "error"),)
    return new, actions + more
