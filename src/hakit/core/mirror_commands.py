"""Operator commands of the mirror state machine (`start`, `stop`, `prim`, `second`, `swap`…).

Handlers of `mirror.TRANSITIONS`: pure, (m, event, now, fresh_id) -> (m', actions).
"""

from __future__ import annotations

from dataclasses import replace

from hakit.core.mirror_decide import (
    _decide,
    _name,
    _start_op,
    _stop_now,
)
from hakit.core.mirror_model import (
    Action,
    Cmd,
    Cmp,
    Command,
    Event,
    Handler,
    Mirror,
    Persist,
    Phase,
    Result,
    Then,
    Want,
    compare,
)
from hakit.core.outcomes import Accepted, Explain, Refused


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
