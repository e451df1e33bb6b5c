"""Two mirror machines wired together, for tests: no daemon, no scripts, no sockets.

Operations complete one event at a time (optionally failing), every published change reaches
the peer as a `PeerChanged`, and persisted data survives a simulated crash, like the state file
on disk. The simulator keeps a pessimistic "holds the VIP" flag per node (set when a promotion
starts, cleared when a demotion ends — at its start when it releases the VIPs first — or the
node crashes) so tests can check that two nodes never hold it at once.

A node can be frozen (`freeze`, as by SIGSTOP): it handles and sends nothing and renews no
lease; when it resumes (`thaw`) it takes in its peer's heartbeats or the end of its lease first.

The network can drop each direction on its own (`cut("node1", "node2")`: node2 no longer hears
node1). The witness, if any, follows the real lease rules without time: a holder that cannot
reach it loses its lease (so does a holder that crashes), and the lease goes to another node only
once the previous holder has taken in everything it can know (its view of its peer and the loss
of its lease) — the grace of the real witness — never by looking at what the holder decided. A
node granted while it serves alone is the module's `latest`: the witness refuses the others
(their copies are outdated) until it is granted with a ready secondary, as the real one does.

Writes (`write`) model the application on the VIP holder: acknowledged when replicated to a
ready secondary, or when the primary is alone and holds nothing (`Mirror.confirm_after`); held
writes are acknowledged or refused by `HeldWrites`. `acked` lists the acknowledged writes and
each node's `data` the writes its copy holds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from hakit.core import mirror as mm
from hakit.core.outcomes import Accepted, Explain, Refused


@dataclass
class SimNode:
    name: str
    machine: mm.Mirror
    up: bool = True
    frozen: bool = False  # SIGSTOPped: handles nothing, sends nothing, its kernel keeps the VIP
    persisted: mm.Data = field(default_factory=mm.Data)
    failover: bool = True
    holds_vip: bool = False
    queue: deque[mm.Event] = field(default_factory=deque)
    fail: set[mm.Op] = field(default_factory=set)
    seen_peer: mm.PeerInfo | None = None
    log: list[str] = field(default_factory=list)
    answers: list[mm.Action] = field(default_factory=list)
    preserved: list[str] = field(default_factory=list)  # why each join kept the diverged files
    data: set[int] = field(default_factory=set)  # the writes this node's copy holds
    held: list[int] = field(default_factory=list)  # writes held by its replication layer
    wakes: list[float] = field(default_factory=list)  # times it asked to be woken at (Wake)


class MirrorSim:
    def __init__(
        self,
        a: str = "node1",
        b: str = "node2",
        default_primary: str = "alone",
        keep: str = "first-primary",
        witness: bool = False,
        failback_delay: float = 0.0,
    ) -> None:
        self.default_primary = default_primary
        self.keep = keep
        self.failback_delay = failback_delay
        # a witness, if any: which nodes reach it, who holds its lease
        self.witness = witness
        self.reaches: dict[str, bool] = {a: True, b: True}
        self.holder: str | None = None
        self.nodes = {a: self._fresh(a, b, mm.Data(), True), b: self._fresh(b, a, mm.Data(), True)}
        self.cuts: set[tuple[str, str]] = set()  # (sender, receiver) pairs that are dropped
        self.lapsed: str | None = None  # the holder whose lease ended (its grace runs)
        self.latest: str | None = None  # granted while serving alone: the others are outdated
        self.acked: set[int] = set()
        self.refused: set[int] = set()
        self._writes = 0
        self.now = 0.0
        self._ids = 0
        self.double_vip = False

    def _fresh(self, name: str, peer: str, data: mm.Data, failover: bool) -> SimNode:
        machine = mm.Mirror(
            "app",
            name,
            peer,
            self.default_primary,
            self.keep,
            failback_delay=self.failback_delay,
            data=data,
            failover=failover,
            arbitrated=self.witness,
            exclusive=self.witness,
        )
        return SimNode(name, machine, persisted=data, failover=failover)

    def peer_of(self, name: str) -> SimNode:
        return next(n for k, n in self.nodes.items() if k != name)

    @property
    def partitioned(self) -> bool:
        return bool(self.cuts)

    def view_of(self, name: str) -> mm.PeerInfo:
        other = self.peer_of(name)
        if not other.up or other.frozen or (other.name, name) in self.cuts:
            return mm.PeerInfo(alive=False)
        return mm.peer_from_wire(True, mm.to_wire(other.machine), fresh=True)  # as heartbeats do

    # --- driving ---------------------------------------------------------------------------

    def _apply(self, node: SimNode, ev: mm.Event) -> None:
        self.now += 0.01
        self._ids += 1
        m, actions = mm.step(node.machine, ev, self.now, f"id{self._ids}")
        node.machine = m
        for a in actions:
            if isinstance(a, mm.RunOp):
                if a.op is mm.Op.BECOME_PRIMARY:
                    node.holds_vip = True
                if a.vips_first:
                    node.holds_vip = False
                if a.preserve:
                    node.preserved.append(a.preserve)
                ok = a.op not in node.fail
                node.queue.append(mm.OpDone(a.op, ok, "" if ok else f"{a.op.value} failed"))
            elif isinstance(a, mm.Persist):
                node.persisted, node.failover = a.data, a.failover
            elif isinstance(a, Explain):
                node.log.append(a.message)
            elif isinstance(a, Accepted | Refused):
                node.answers.append(a)
            elif isinstance(a, mm.Wake):
                node.wakes.append(a.at)
            elif isinstance(a, mm.HeldWrites):
                (self.acked if a.release else self.refused).update(node.held)
                if not a.release:
                    node.data.difference_update(node.held)
                node.held.clear()
        if isinstance(ev, mm.OpDone) and ev.op is mm.Op.STOP_PRIMARY:
            node.holds_vip = False
        if isinstance(ev, mm.OpDone) and ev.op is mm.Op.SYNC and ev.ok:
            node.data = set(self.peer_of(node.name).data)  # resynchronised
        holders = [n for n in self.nodes.values() if n.holds_vip and not n.frozen]
        if len(holders) == len(self.nodes) and (self.witness or not self.partitioned):
            self.double_vip = True  # with a witness: never, even across a partition

    def settle(self, limit: int = 500) -> None:
        for _ in range(limit):
            progressed = False
            for node in self.nodes.values():
                if not node.up or node.frozen:
                    continue
                view = self.view_of(node.name)
                if view != node.seen_peer:
                    node.seen_peer = view
                    self._apply(node, mm.PeerChanged(view))
                    progressed = True
                if node.queue:
                    self._apply(node, node.queue.popleft())
                    progressed = True
                if self.witness and self._arbitrate(node):
                    progressed = True
            if not progressed:
                return
        raise AssertionError("the two machines did not settle")

    def _settled(self, name: str) -> bool:
        """The previous holder has taken in all it can know: the real witness's grace."""
        n = self.nodes[name]
        if n.frozen:  # its lease ran out on its own clock too: it cannot act on it until resumed
            return True
        return not n.up or (n.seen_peer == self.view_of(name) and not n.machine.lease)

    def _arbitrate(self, node: SimNode) -> bool:
        """The lease keeper of `node` and a witness, without time (see the module docstring)."""
        m = node.machine
        wants = m.asking or m.phase in mm.PRIMARYISH
        if not self.reaches[node.name]:
            if self.holder == node.name:
                self.holder, self.lapsed = None, node.name  # not renewed: it ends
            granted, detail = False, "witness unreachable"
        elif not wants:
            if self.holder == node.name:
                self.holder = None  # released
            granted, detail = False, "released"
        elif self.holder is None and self.latest not in (None, node.name) and not m.forced:
            granted, detail = False, f"{self.latest} served alone: this copy is outdated"
        elif self.holder == node.name or (
            self.holder is None and (self.lapsed in (None, node.name) or self._settled(self.lapsed))
        ):
            self.holder, self.lapsed = node.name, None
            granted, detail = True, f"lease held by {node.name}"
            if mm.serves_alone(m):
                self.latest = node.name
            elif self.latest == node.name or m.forced:
                self.latest = None
        else:
            granted, detail = False, f"lease held by {self.holder or self.lapsed}"
        confirms = granted and m.confirm_after > 0
        if granted == m.lease and (detail == m.arbiter_note or not m.asking) and not confirms:
            return False
        self.now += 0.01  # the request is asked after everything handled so far
        self._apply(node, mm.Arbiter(granted, detail, asked=self.now))
        return True

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass: every wake-up that comes due is delivered (`Due`), then settle."""
        self.now += seconds
        for node in self.nodes.values():
            due = [t for t in node.wakes if t <= self.now]
            node.wakes = [t for t in node.wakes if t > self.now]
            for _ in due:
                if node.up:
                    self._apply(node, mm.Due())
        self.settle()

    def set_witness(self, **reaches: bool) -> None:
        """Which nodes reach the witness (`node1=False`: node1 cannot)."""
        self.reaches.update(reaches)
        self.settle()

    def command(self, name: str, cmd: mm.Cmd) -> mm.Action:
        node = self.nodes[name]
        assert node.up
        node.answers.clear()
        self._apply(node, mm.Command(cmd))
        answer = node.answers[0]
        self.settle()
        return answer

    def inject(self, name: str, ev: mm.Event) -> None:
        """An event from the node's executor (e.g. replication lost), handled at once."""
        self._apply(self.nodes[name], ev)

    def crash(self, name: str) -> None:
        node = self.nodes[name]
        node.up = False
        node.frozen = False
        node.holds_vip = False  # the heartbeat process releases the VIPs when the daemon dies
        node.queue.clear()
        self.refused.update(node.held)  # the application died waiting: never acknowledged
        node.held.clear()
        if self.holder == name:  # a dead holder renews nothing: its lease runs out
            self.holder, self.lapsed = None, name
        self.settle()

    def freeze(self, name: str) -> None:
        """The node stops (SIGSTOP of all its processes) for longer than the heartbeat timeout:
        its peer loses it, it renews nothing (its lease lapses), it handles nothing."""
        node = self.nodes[name]
        node.frozen = True
        if self.holder == name:
            self.holder, self.lapsed = None, name
        self.settle()

    def thaw(self, name: str, *, arbiter_first: bool = False) -> None:
        """The frozen node resumes. It takes in what it missed in either order: its peer's
        heartbeats first (it still believes its lease), or the end of its lease first (its
        lease timer and the heartbeats are both due at once). Its kernel kept the VIP during the
        freeze; it counts as a holder again once it has taken both in (milliseconds in the lab:
        the peer announced the VIP meanwhile, so the clients already reach the peer)."""
        node = self.nodes[name]
        view = self.view_of(name)
        if arbiter_first:
            self._arbitrate(node)
        node.seen_peer = view
        self._apply(node, mm.PeerChanged(view))
        if not arbiter_first:
            self._arbitrate(node)
        node.frozen = False
        self.settle()

    def boot(self, name: str, *, start: bool = True) -> None:
        """A new daemon: the machine restarts from the persisted data, in STOPPED."""
        old = self.nodes[name]
        node = self._fresh(name, old.machine.peer_name, old.persisted, old.failover)
        node.log = old.log
        node.preserved = old.preserved
        node.data = old.data
        self.nodes[name] = node
        if start:  # the daemon starts the module before it publishes anything
            node.answers.clear()
            node.seen_peer = self.view_of(name)
            self._apply(node, mm.PeerChanged(node.seen_peer))
            self._apply(node, mm.Command(mm.Cmd.START))
        self.settle()

    def log(self, name: str) -> list[str]:
        return self.nodes[name].log

    def state(self, name: str) -> str:
        s, status = self.nodes[name].machine.display()
        return f"{s} {status}"

    def states(self) -> tuple[str, ...]:
        return tuple(self.state(n) for n in self.nodes)

    def set_partition(self, on: bool) -> None:
        """Both directions cut (or healed)."""
        a, b = self.nodes
        self.cuts = {(a, b), (b, a)} if on else set()
        self.settle()

    def cut(self, sender: str, receiver: str, on: bool = True) -> None:
        """`receiver` no longer hears `sender` (one direction only)."""
        if on:
            self.cuts.add((sender, receiver))
        else:
            self.cuts.discard((sender, receiver))
        self.settle()

    def write(self) -> int | None:
        """The application writes one record on the node holding the VIP (None: none does).
        Returns its number; see `acked` and `refused` for its fate."""
        node = next((n for n in self.nodes.values() if n.up and n.holds_vip and not n.frozen), None)
        if node is None or node.machine.phase not in (mm.Phase.ALONE, mm.Phase.PRIM):
            return None
        self._writes += 1
        w = self._writes
        node.data.add(w)
        peer = self.peer_of(node.name)
        linked = not {(node.name, peer.name), (peer.name, node.name)} & self.cuts
        if node.machine.phase is mm.Phase.PRIM and peer.up and not peer.frozen and linked:
            peer.data.add(w)  # replicated, then acknowledged
            self.acked.add(w)
            return w
        if node.machine.phase is mm.Phase.PRIM:  # the secondary stops acknowledging
            self._apply(node, mm.ReplicaLost("no acknowledgement within the timeout"))
            node.held.append(w) if node.machine.arbitrated else self.acked.add(w)
            self.settle()
            return w
        if node.machine.confirm_after:
            node.held.append(w)
        else:
            self.acked.add(w)
        return w

    def lost_writes(self) -> set[int]:
        """Acknowledged writes missing from the copy of the node holding the VIP."""
        node = next((n for n in self.nodes.values() if n.up and n.holds_vip and not n.frozen), None)
        return set() if node is None else self.acked - node.data

    def fail(self, name: str, op: mm.Op, on: bool = True) -> None:
        node = self.nodes[name]
        node.fail = node.fail | {op} if on else node.fail - {op}

    def data(self, name: str) -> mm.Data:
        return self.nodes[name].persisted

    def power_cut_all(self) -> None:
        """Both nodes lose power at the same instant (nobody sees the other leave)."""
        for n in self.nodes.values():
            n.up = False
            n.holds_vip = False
            n.queue.clear()
