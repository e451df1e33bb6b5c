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

The table and `step` are here; the handlers are in `mirror_commands` (operator commands),
`mirror_peer` (peer changes), `mirror_ops` (operation completions, replication loss, checkers),
`mirror_split` (arbitration), `mirror_decide` (what to do while waiting); the types in
`mirror_model`.
"""

from __future__ import annotations

from dataclasses import replace

from hakit.core.mirror_commands import (
    _busy,
    _cmd_already_stopped,
    _cmd_failover,
    _cmd_failover_waiting,
    _cmd_restart,
    _cmd_role_in_waiting,
    _cmd_start,
    _cmd_stop_later,
    _cmd_stop_primary,
    _cmd_stop_second,
    _cmd_stop_waiting,
    _cmd_swap,
    _cmd_swap_on_second,
    _refuse,
)
from hakit.core.mirror_decide import (
    _name,
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
    Due,
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
    Wake,
    compare,
    event_kind,
    peer_from_wire,
    serves_alone,
    to_wire,
    unprotected,
    vouching,
)
from hakit.core.mirror_ops import (
    _after_become_primary,
    _after_poststop,
    _after_prestart,
    _after_restart,
    _after_start_second,
    _after_stop_primary,
    _after_stop_second,
    _after_sync,
    _holds_noted,
    _holds_primary,
    _holds_second,
    _holds_waiting,
    _recover_late,
    _recover_later,
    _recover_primary,
    _recover_second,
    _recover_waiting,
    _replica_lost_ignored,
    _replica_lost_prim,
    _replica_lost_primaryish,
    _replica_lost_second,
)
from hakit.core.mirror_peer import (
    _due_noted,
    _due_primary,
    _peer_note,
    _peer_primary,
    _peer_second,
    _peer_waiting,
)
from hakit.core.mirror_split import (
    _arbiter_noted,
    _arbiter_primary,
    _arbiter_second,
    _arbiter_waiting,
)
from hakit.core.outcomes import Explain, UnexpectedEvent

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
    "Due",
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
    "Wake",
    "compare",
    "peer_from_wire",
    "serves_alone",
    "step",
    "targets",
    "to_wire",
    "unprotected",
    "vouching",
]


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
    _due_primary: frozenset({P.DEMOTING}),
    _due_noted: _SAME,
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
        t[(phase, "due")] = _due_primary if phase in (Phase.ALONE, Phase.PRIM) else _due_noted
        if phase in OP_OF_PHASE:
            op = OP_OF_PHASE[phase]
            t[(phase, f"done:{op.value}")] = _DONE[op]
    return t


TRANSITIONS: dict[tuple[Phase, str], Handler] = _table()
"""(phase, event kind) -> handler. Event kinds: `peer`, `cmd:<command>`, `done:<operation>`,
`replica-lost`, `recover:<action>`, `holds` (checkers) and `due` (a failback delay ran out)."""


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
