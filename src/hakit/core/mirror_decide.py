"""The mirror machine's decisions shared by its handlers: promote, join, wait, stop. Pure.

`_decide` is the heart: in WAITING, become primary, join as secondary, or keep waiting (and say
why), by the data-freshness rules of `core/mirror.py`'s docstring.
"""

from __future__ import annotations

from dataclasses import replace

from hakit.core.mirror_model import (
    OP_OF_PHASE,
    Action,
    Cmp,
    Mirror,
    Op,
    PeerChanged,
    Persist,
    Phase,
    Publish,
    Result,
    RunOp,
    Then,
    Want,
    compare,
)
from hakit.core.outcomes import Explain


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
        forced=m.want is Want.FORCE and not m.lease,
        confirm_after=0.0,
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
