"""The witness arbiter: the lease rules as a table of scenarios, freshness, and the safety
property (never two nodes believing they hold the same lease) under any sequence of requests,
delays, lost answers, node crashes and witness restarts."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hakit.adapters.witness import LeaseMemory, Sent
from hakit.core import witness as w
from hakit.core.witness import LeaseState, Role
from hakit.wire.heartbeat import make_boot_id
from hakit.wire.witness import Op, Reject, Request

Q = 10.0
WALL = 1_700_000_000.0
BOOTS = {f"node{i}": make_boot_id(1_000 * i, bytes(8)) for i in range(1, 5)}


@dataclass
class Witness:
    """A scripted witness: requests at given times, in order."""

    arb: w.Arbiter = field(default_factory=lambda: w.new_arbiter(0.0, Q))
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    notes: list[w.Note] = field(default_factory=list)

    def ask(
        self,
        t: float,
        node: str,
        op: str,
        ttl: float = 3.0,
        grace: float = 1.0,
        *,
        alone: bool = False,
        force: bool = False,
    ) -> w.Decision:
        seq = next(self.seq)
        req = Request(
            "shop", node, "db", Op(op), ttl, grace, BOOTS[node], seq, WALL + t, alone, force
        )
        self.arb, rejection = w.admit(self.arb, req, t, WALL + t)
        assert rejection is None, rejection
        self.arb, d = w.decide(self.arb, req, t)
        self.notes.extend(d.notes)
        return d

    def restart(self, t: float) -> None:
        self.arb = w.new_arbiter(t, Q, self.arb.latest)  # the server keeps the marks on disk

    def ask_seq(self, t: float, node: str, op: str, seq: int) -> w.Decision:
        """A request with a chosen sequence number (requests reordered in the network)."""
        req = Request("shop", node, "db", Op(op), 3.0, 1.0, BOOTS[node], seq, WALL + t)
        self.arb, rejection = w.admit(self.arb, req, t, WALL + t)
        assert rejection is None, rejection
        self.arb, d = w.decide(self.arb, req, t)
        return d


Step = tuple[Any, ...]  # (t, node, op[, ttl, grace])


def play(steps: list[Step]) -> tuple[Witness, w.Decision]:
    wit = Witness()
    d: w.Decision | None = None
    for step in steps:
        if step[1] == "RESTART":
            wit.restart(step[0])
            continue
        d = wit.ask(*step)
    assert d is not None
    return wit, d


# (name, steps, expected granted, expected holder, expected reason fragment) — the last step's
# decision is checked.
SCENARIOS: list[tuple[str, list[Step], bool, str, str]] = [
    (
        "no new lease during the quarantine",
        [(3.0, "node1", "acquire")],
        False,
        "",
        "witness restarted 3.0 s ago: no new lease before 10 s",
    ),
    (
        "first lease after the quarantine: at once",
        [(3.0, "node1", "acquire"), (10.0, "node1", "acquire")],
        True,
        "node1",
        "no holder since the witness started 10.0 s ago",
    ),
    (
        "the holder renews",
        [(10.0, "node1", "acquire"), (12.0, "node1", "renew")],
        True,
        "node1",
        "renewed: you hold it for 3.0 s",
    ),
    (
        "the holder acquires again: an extension",
        [(10.0, "node1", "acquire"), (12.0, "node1", "acquire")],
        True,
        "node1",
        "granted: you hold it for 3.0 s",
    ),
    (
        "another node while it is held",
        [(10.0, "node1", "acquire"), (11.0, "node2", "acquire")],
        False,
        "node1",
        "held by node1 for 2.0 s more",
    ),
    (
        "a renewal by a node that does not hold it is an acquisition",
        [(10.0, "node1", "acquire"), (11.0, "node2", "renew")],
        False,
        "node1",
        "held by node1 for 2.0 s more",
    ),
    (
        "released: another node at once",
        [(10.0, "node1", "acquire"), (11.0, "node1", "release"), (11.1, "node2", "acquire")],
        True,
        "node2",
        "node1 released it 0.1 s ago",
    ),
    (
        "the release itself",
        [(10.0, "node1", "acquire"), (11.0, "node1", "release")],
        True,
        "",
        "released",
    ),
    (
        "a release by a node that does not hold it changes nothing",
        [(10.0, "node1", "acquire"), (11.0, "node2", "release")],
        False,
        "node1",
        "not released: held by node1",
    ),
    (
        "a release of a lease nobody holds",
        [(10.0, "node2", "release")],
        False,
        "",
        "not released: nobody holds it",
    ),
    (
        "expired: not before the holder's grace",
        [
            (10.0, "node1", "acquire", 3.0, 1.0),
            (11.0, "node2", "acquire", 3.0, 0.5),
            (13.5, "node2", "acquire", 3.0, 0.5),
        ],
        False,
        "",
        "node1's lease expired 0.5 s ago: waiting for its grace of 1 s (0.5 s more)",
    ),
    (
        "expired: granted once the holder's grace passed",
        [
            (10.0, "node1", "acquire", 3.0, 1.0),
            (11.0, "node2", "acquire", 3.0, 0.5),
            (14.0, "node2", "acquire", 3.0, 0.5),
        ],
        True,
        "node2",
        "node1's lease expired 1.0 s ago, grace 1 s",
    ),
    (
        "expired: the contender also waits its own grace from its first request",
        [(10.0, "node1", "acquire", 3.0, 0.0), (20.0, "node2", "acquire", 3.0, 2.0)],
        False,
        "",
        "waiting for your own grace of 2 s (2.0 s more)",
    ),
    (
        "expired: granted after the contender's own grace",
        [
            (10.0, "node1", "acquire", 3.0, 0.0),
            (20.0, "node2", "acquire", 3.0, 2.0),
            (22.0, "node2", "acquire", 3.0, 2.0),
        ],
        True,
        "node2",
        "node1's lease expired 9.0 s ago",
    ),
    (
        "the earliest contender wins: the later one is refused",
        [
            (10.0, "node1", "acquire", 3.0, 0.5),
            (11.0, "node2", "acquire", 3.0, 0.5),
            (12.0, "node3", "acquire", 3.0, 0.5),
            (14.0, "node3", "acquire", 3.0, 0.5),
        ],
        False,
        "",
        "node2 asked first (3.0 s ago) and is granted next",
    ),
    (
        "the earliest contender wins: granted",
        [
            (10.0, "node1", "acquire", 3.0, 0.5),
            (11.0, "node2", "acquire", 3.0, 0.5),
            (12.0, "node3", "acquire", 3.0, 0.5),
            (14.0, "node3", "acquire", 3.0, 0.5),
            (14.1, "node2", "acquire", 3.0, 0.5),
        ],
        True,
        "node2",
        "node1's lease expired",
    ),
    (
        "equal first requests: the smallest name wins",
        [
            (3.0, "node3", "acquire", 5.0, 1.0),
            (3.0, "node2", "acquire", 5.0, 1.0),
            (10.0, "node3", "acquire", 5.0, 1.0),
        ],
        False,
        "",
        "node2 asked first (7.0 s ago)",
    ),
    (
        "a contender silent for 2 × its ttl is forgotten",
        [
            (10.0, "node1", "acquire", 3.0, 0.5),
            (11.0, "node2", "acquire", 3.0, 0.5),
            (12.0, "node3", "acquire", 3.0, 0.5),
            (17.5, "node3", "acquire", 3.0, 0.5),
        ],
        True,
        "node3",
        "node1's lease expired 4.5 s ago",
    ),
    (
        "the previous holder gets its expired lease back when nobody else asked",
        [(10.0, "node1", "acquire", 3.0, 1.0), (13.2, "node1", "acquire", 3.0, 1.0)],
        True,
        "node1",
        "its lease had expired 0.2 s ago and nobody else asked for it",
    ),
    (
        "the previous holder waits like anyone when another node asked",
        [
            (10.0, "node1", "acquire", 3.0, 1.0),
            (12.0, "node2", "acquire", 3.0, 0.5),
            (13.2, "node1", "acquire", 3.0, 1.0),
        ],
        False,
        "",
        "waiting for its grace of 1 s",
    ),
    (
        "the previous holder releases its expired lease: no grace to wait for",
        [
            (10.0, "node1", "acquire", 3.0, 5.0),
            (12.0, "node2", "acquire", 3.0, 0.5),
            (13.5, "node1", "release"),
            (13.6, "node2", "acquire", 3.0, 0.5),
        ],
        True,
        "node2",
        "node1 released it 0.1 s ago",
    ),
    (
        "restart: the previous holder renews during the quarantine",
        [(10.0, "node1", "acquire"), (11.0, "RESTART"), (12.0, "node1", "renew")],
        True,
        "node1",
        "renewal after the witness restarted 1.0 s ago: node1 held it before",
    ),
    (
        "restart: no acquisition during the quarantine",
        [(10.0, "node1", "acquire"), (11.0, "RESTART"), (12.0, "node2", "acquire")],
        False,
        "",
        "witness restarted 1.0 s ago: no new lease before 10 s",
    ),
    (
        "restart: once renewed, the holder may acquire (extend) during the quarantine",
        [
            (10.0, "node1", "acquire"),
            (11.0, "RESTART"),
            (12.0, "node1", "renew"),
            (13.0, "node1", "acquire"),
        ],
        True,
        "node1",
        "granted: you hold it for 3.0 s",
    ),
    (
        "restart: a second renewal by another node is refused",
        [(11.0, "RESTART"), (12.0, "node1", "renew"), (12.5, "node2", "renew")],
        False,
        "node1",
        "held by node1 for 2.5 s more",
    ),
    (
        "restart: a renewal of a lease that expired during the quarantine is an acquisition",
        [
            (11.0, "RESTART"),
            (12.0, "node1", "renew", 1.0, 0.5),
            (13.5, "node2", "renew", 1.0, 0.5),
        ],
        False,
        "",
        "witness restarted 2.5 s ago",
    ),
    (
        "after the quarantine a renewal nobody holds is an acquisition: granted",
        [(10.5, "node2", "renew")],
        True,
        "node2",
        "no holder since the witness started",
    ),
    (
        "ttl + grace beyond the quarantine: refused",
        [(10.0, "node1", "acquire", 8.0, 5.0)],
        False,
        "",
        "ttl 8 s + grace 5 s = 13 s exceeds the witness quarantine of 10 s",
    ),
    (
        "a refused extension leaves the lease as it was",
        [(10.0, "node1", "acquire"), (11.0, "node1", "renew", 9.0, 5.0)],
        False,
        "node1",
        "exceeds the witness quarantine",
    ),
    (
        "a shorter renewal never shortens the lease",
        [(10.0, "node1", "acquire", 3.0, 1.0), (10.5, "node1", "renew", 0.5, 0.0)],
        True,
        "node1",
        "renewed: you hold it for 2.5 s",
    ),
    (
        "query by another node: reports the holder, changes nothing",
        [(10.0, "node1", "acquire"), (11.0, "node2", "query")],
        False,
        "node1",
        "held by node1 for 2.0 s more",
    ),
    (
        "query by the holder",
        [(10.0, "node1", "acquire"), (11.0, "node1", "query")],
        True,
        "node1",
        "you hold it for 2.0 s more",
    ),
    (
        "query during the quarantine",
        [(2.0, "node1", "query")],
        False,
        "",
        "free: never held since the witness started 2.0 s ago; witness restarted 2.0 s ago",
    ),
    (
        "query of an expired lease",
        [(10.0, "node1", "acquire", 3.0, 1.0), (14.0, "node2", "query")],
        False,
        "",
        "free: node1's lease expired 1.0 s ago (grace 1 s)",
    ),
]


@pytest.mark.parametrize(
    ("steps", "granted", "holder", "reason"),
    [s[1:] for s in SCENARIOS],
    ids=[s[0] for s in SCENARIOS],
)
def test_lease_rules(steps: list[Step], granted: bool, holder: str, reason: str) -> None:
    _, d = play(steps)
    assert (d.granted, d.holder) == (granted, holder), d
    assert reason in d.reason, d.reason


@pytest.mark.parametrize(
    ("ttl", "grace", "expected"),
    [
        (0.0, 1.0, "ttl 0 s is out of range"),
        (-1.0, 1.0, "ttl -1 s is out of range"),
        (61.0, 0.0, "ttl 61 s is out of range"),
        (float("nan"), 0.0, "ttl nan s is out of range"),
        (3.0, -0.1, "grace -0.1 s is out of range"),
        (3.0, 61.0, "grace 61 s is out of range"),
    ],
)
def test_parameters_out_of_range_are_not_granted(ttl: float, grace: float, expected: str) -> None:
    wit = Witness()
    d = wit.ask(10.0, "node1", "acquire", ttl, grace)
    assert not d.granted
    assert expected in d.reason
    assert d.notes
    assert "lease refused to node1" in d.notes[0].message
    assert wit.arb.leases == {}  # nothing recorded


def test_notes_explain_each_change_once() -> None:
    wit, _ = play(
        [
            (10.0, "node1", "acquire", 3.0, 0.5),
            (11.0, "node2", "acquire", 3.0, 0.5),
            (12.0, "node2", "acquire", 3.0, 0.5),  # same contest: no second refusal line
            (12.5, "node1", "renew", 3.0, 0.5),
            (16.1, "node2", "acquire", 3.0, 0.5),
        ]
    )
    assert [n.message for n in wit.notes] == [
        "shop/db: lease granted to node1 (no holder since the witness started 10.0 s ago)",
        "shop/db: lease refused to node2: held by node1 for 2.0 s more",
        "shop/db: node1's lease expired (not renewed in time, held 5.5 s); another node may be "
        "granted it after node1's grace of 0.5 s",
        "shop/db: lease granted to node2 (node1's lease expired 0.6 s ago, grace 0.5 s)",
    ]
    assert [n.kind for n in wit.notes] == ["granted", "refused", "expired", "granted"]


def test_a_release_overtaken_by_a_later_acquisition_frees_nothing() -> None:
    """node1 sent release (seq 1) then acquire (seq 2); the acquire arrived first and was
    granted: node1 believes it holds the lease, so the late release must not free it."""
    wit = Witness()
    assert wit.ask_seq(10.0, "node1", "acquire", 2).granted
    d = wit.ask_seq(10.1, "node1", "release", 1)
    assert (d.granted, d.holder) == (False, "node1")
    assert "sent before your latest request" in d.reason
    assert not wit.ask_seq(10.2, "node2", "acquire", 1).granted


def test_an_acquisition_overtaken_by_a_later_release_is_refused() -> None:
    """node1 sent acquire (seq 2) then release (seq 3); the release arrived first: the late
    acquire must not take the lease back (node1 stopped and ignores its answer)."""
    wit = Witness()
    assert wit.ask_seq(10.0, "node1", "acquire", 1).granted
    assert wit.ask_seq(11.0, "node1", "release", 3).granted
    d = wit.ask_seq(11.1, "node1", "acquire", 2)
    assert (d.granted, d.holder) == (False, "")
    assert "sent before your latest request" in d.reason
    assert wit.ask_seq(11.2, "node2", "acquire", 1).granted


def test_a_regained_lease_keeps_what_is_left_of_the_earlier_grace() -> None:
    """node1 may need 5 s to stop after its lease expired at 14; it gets the lease back at 15
    asking for no grace: the next holder still waits until 19."""
    wit = Witness()
    assert wit.ask(10.0, "node1", "acquire", 3.0, 0.0).granted
    assert wit.ask(11.0, "node1", "renew", 3.0, 5.0).granted  # expires 14, grace 5
    assert wit.ask(15.0, "node1", "acquire", 1.0, 0.0).granted  # expires 16
    d = wit.ask(17.0, "node2", "acquire", 1.0, 0.5)
    assert not d.granted
    assert "waiting for its grace of 3 s (2.0 s more)" in d.reason
    assert not wit.ask(18.9, "node2", "acquire", 1.0, 0.5).granted
    assert wit.ask(19.0, "node2", "acquire", 1.0, 0.5).granted


def test_expire_reports_expiry_as_time_passes() -> None:
    wit, _ = play([(10.0, "node1", "acquire", 3.0, 0.5)])
    arb, notes = w.expire(wit.arb, 12.9)
    assert notes == ()
    assert arb is wit.arb
    arb, notes = w.expire(arb, 13.0)
    assert [n.kind for n in notes] == ["expired"]
    assert w.state_of(arb.leases[("shop", "db")]) is LeaseState.EXPIRED
    assert w.expire(arb, 20.0)[1] == ()


def test_describe_shows_holder_remaining_and_contenders() -> None:
    wit, _ = play([(10.0, "node1", "acquire", 3.0, 0.5), (11.0, "node2", "acquire", 3.0, 0.2)])
    item = w.describe(wit.arb, 12.0)["shop"]["db"]
    assert item["state"] == "held"
    assert item["holder"] == "node1"
    assert item["remaining"] == 1.0
    assert item["contenders"] == {"node2": {"waiting_for": 1.0, "ttl": 3.0, "grace": 0.2}}


def test_an_op_outside_the_table_raises() -> None:
    wit = Witness()
    bogus = Request("shop", "node1", "db", "steal", 3.0, 1.0, BOOTS["node1"], 1, WALL)  # type: ignore[arg-type]
    with pytest.raises(w.UnexpectedRequest, match="steal by node1"):
        w.decide(wit.arb, bogus, 10.0)


def test_the_table_covers_every_reachable_combination() -> None:
    reachable = [(s, op, Role.OTHER) for s in LeaseState for op in Op]
    reachable += [(LeaseState.HELD, op, Role.HOLDER) for op in Op]
    reachable += [(LeaseState.EXPIRED, op, Role.PREVIOUS) for op in Op]
    assert set(w.TRANSITIONS) == set(reachable)


# --- freshness -------------------------------------------------------------------------------


def req(
    node: str = "node1", seq: int = 1, boot: bytes | None = None, sent: float = WALL
) -> Request:
    return Request("shop", node, "db", Op.QUERY, 3.0, 1.0, boot or BOOTS[node], seq, sent)


def admitted(arb: w.Arbiter, r: Request, now: float = 1.0) -> tuple[w.Arbiter, Reject | None]:
    arb, rejection = w.admit(arb, r, now, WALL)
    return arb, None if rejection is None else rejection.reason


def test_freshness() -> None:
    arb = w.new_arbiter(0.0, Q)
    arb, r = admitted(arb, req(seq=10))
    assert r is None
    assert admitted(arb, req(seq=10))[1] is Reject.DUPLICATE
    arb, r = admitted(arb, req(seq=12))
    assert r is None
    # one late arrival within the window is accepted once (concurrent requests reordered)
    arb, r = admitted(arb, req(seq=11))
    assert r is None
    assert admitted(arb, req(seq=11))[1] is Reject.DUPLICATE
    assert admitted(arb, req(seq=10))[1] is Reject.DUPLICATE
    arb, r = admitted(arb, req(seq=12 + w.SEQ_WINDOW + 5))
    assert r is None
    assert admitted(arb, req(seq=12))[1] is Reject.REPLAYED
    # a new boot starts a new count; an older boot is refused
    newer = make_boot_id(5_000, bytes(8))
    arb, r = admitted(arb, req(seq=1, boot=newer))
    assert r is None
    assert admitted(arb, req(seq=10_000))[1] is Reject.OLD_BOOT
    # other nodes are counted apart
    assert admitted(arb, req(node="node2", seq=1))[1] is None


def test_clock_skew() -> None:
    arb = w.new_arbiter(0.0, Q)
    assert admitted(arb, req(sent=WALL + w.MAX_SKEW + 0.1))[1] is Reject.SKEW
    assert admitted(arb, req(sent=WALL - w.MAX_SKEW - 0.1))[1] is Reject.SKEW
    assert admitted(arb, req(sent=WALL - w.MAX_SKEW + 0.1))[1] is None


def test_a_restarted_witness_refuses_a_captured_release_by_its_age() -> None:
    """The restarted witness remembers no sequence number: the clock is the guard."""
    arb = w.new_arbiter(100.0, Q)
    captured = Request("shop", "node1", "db", Op.RELEASE, 3.0, 1.0, BOOTS["node1"], 5, WALL)
    _, rejection = w.admit(arb, captured, 100.0, WALL + w.MAX_SKEW + 1)
    assert rejection is not None
    assert rejection.reason is Reject.SKEW


def test_node_limit_per_cluster_and_forgetting_silent_nodes() -> None:
    arb = w.new_arbiter(0.0, Q)
    for i in range(w.MAX_NODES_PER_CLUSTER):
        arb, r = admitted(arb, req(node=f"n{i}", boot=BOOTS["node1"]), now=1.0)
        assert r is None
    assert admitted(arb, req(node="late", boot=BOOTS["node1"]), now=2.0)[1] is Reject.LIMIT
    later = 1.0 + w.NODE_MEMORY + 1
    assert admitted(arb, req(node="late", boot=BOOTS["node1"]), now=later)[1] is None


# --- the safety property ---------------------------------------------------------------------

TTLS = (0.3, 0.5, 1.0)
GRACES = (0.0, 0.2, 0.5, 1.5)
DELAYS = (0.0, 0.01, 0.3, 0.9)
TIMEOUT = 1.0  # the client ignores answers that come later
PQ = 2.0  # witness quarantine: some (ttl, grace) pairs exceed it and are refused
NODES = ("node1", "node2")


@dataclass
class SimNode:
    name: str
    boot: int = 1
    seq: int = 0
    memory: LeaseMemory = field(default_factory=LeaseMemory)
    believes: list[list[float]] = field(default_factory=list)  # [from, until]: holds the lease
    runs: list[list[float]] = field(default_factory=list)  # [from, until]: may run the module

    def stop(self, t: float) -> None:
        """The node stops its module at t (before a release, or it crashed)."""
        for interval in (*self.believes, *self.runs):
            interval[1] = min(interval[1], t)


@dataclass
class Sim:
    """Two honest nodes (the real `LeaseMemory`) and the arbiter, over a delaying network."""

    t: float = 0.0
    arb: w.Arbiter = field(default_factory=lambda: w.new_arbiter(-PQ, PQ))  # quarantine over
    nodes: dict[str, SimNode] = field(default_factory=lambda: {n: SimNode(n) for n in NODES})
    pending: list[tuple[float, int, str, Any]] = field(default_factory=list)
    order: itertools.count[int] = field(default_factory=itertools.count)
    grants: int = 0

    def send(self, node: str, op: Op, ttl: float, grace: float, out: float, back: float) -> None:
        n = self.nodes[node]
        sent = n.memory.send(op, "db", self.t)
        if sent.op is Op.RELEASE:
            n.stop(self.t)
        n.seq += 1
        r = Request(
            "shop", node, "db", sent.op, ttl, grace, make_boot_id(n.boot, bytes(8)), n.seq, WALL
        )
        msg = (node, n.boot, sent, r, back)
        heapq.heappush(self.pending, (self.t + out, next(self.order), "request", msg))

    def crash(self, node: str) -> None:
        n = self.nodes[node]
        n.stop(self.t)
        n.boot += 1
        n.seq = 0
        n.memory = LeaseMemory()

    def advance(self, dt: float) -> None:
        end = self.t + dt
        while self.pending and self.pending[0][0] <= end:
            at, _, kind, msg = heapq.heappop(self.pending)
            self.t = at
            (self._at_witness if kind == "request" else self._at_node)(msg)
        self.t = end

    def _at_witness(self, msg: tuple[str, int, Sent, Request, float | None]) -> None:
        node, boot, sent, r, back = msg
        self.arb, rejection = w.admit(self.arb, r, self.t, WALL)
        if rejection is not None:
            return
        self.arb, d = w.decide(self.arb, r, self.t)
        if back is not None:
            answer = (node, boot, sent, r, d)
            heapq.heappush(self.pending, (self.t + back, next(self.order), "reply", answer))

    def _at_node(self, msg: tuple[str, int, Sent, Request, w.Decision]) -> None:
        node, boot, sent, r, d = msg
        n = self.nodes[node]
        if boot != n.boot or self.t - sent.at > TIMEOUT:
            return  # the node restarted since, or gave up waiting
        if not n.memory.trusts(sent, "db", self.t):
            return
        deadline = n.memory.answer(sent, "db", d.granted, d.remaining, r.ttl)
        if deadline > self.t:
            self.grants += 1
            n.believes.append([self.t, deadline])
            if sent.op is not Op.QUERY:  # a query tells the time left, it grants no grace
                n.runs.append([self.t, deadline + r.grace])

    def restart_witness(self) -> None:
        self.arb = w.new_arbiter(self.t, PQ)


def overlaps(a: list[list[float]], b: list[list[float]]) -> list[tuple[list[float], list[float]]]:
    return [
        (x, y) for x in a for y in b if x[0] < x[1] and y[0] < y[1] and x[0] < y[1] and y[0] < x[1]
    ]


def check(sim: Sim) -> None:
    n1, n2 = sim.nodes["node1"], sim.nodes["node2"]
    assert not overlaps(n1.believes, n2.believes), "two nodes believe they hold the lease"
    assert not overlaps(n1.runs, n2.runs), "a node was granted before the other's grace ran out"


send = st.tuples(
    st.just("send"),
    st.sampled_from(NODES),
    st.sampled_from((Op.ACQUIRE, Op.ACQUIRE, Op.RENEW, Op.RENEW, Op.RELEASE, Op.QUERY)),
    st.sampled_from(TTLS),
    st.sampled_from(GRACES),
    st.sampled_from(DELAYS),
    st.sampled_from((*DELAYS, None)),  # None: the answer is lost
)
advance = st.tuples(st.just("advance"), st.sampled_from((0.05, 0.2, 0.5, 1.0, 2.5)))
KINDS = {
    "send": send,
    "advance": advance,
    "restart": st.tuples(st.just("restart")),
    "crash": st.tuples(st.just("crash"), st.sampled_from(NODES)),
}
# Mostly requests and time passing; now and then a witness restart or a node crash.
actions = st.sampled_from(["send"] * 10 + ["advance"] * 5 + ["restart", "crash"]).flatmap(
    KINDS.__getitem__
)


def run(program: list[tuple[Any, ...]]) -> Sim:
    sim = Sim()
    for action in program:
        if action[0] == "send":
            _, node, op, ttl, grace, out, back = action
            sim.send(node, op, ttl, grace, out, back)
        elif action[0] == "advance":
            sim.advance(action[1])
        elif action[0] == "restart":
            sim.restart_witness()
        else:
            sim.crash(action[1])
    sim.advance(100.0)
    return sim


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(actions, min_size=20, max_size=120))
def test_never_two_holders(program: list[tuple[Any, ...]]) -> None:
    check(run(program))


def test_the_simulation_grants_both_nodes_in_turn() -> None:
    """The property above is not vacuous: leases are granted, and move."""
    program: list[tuple[Any, ...]] = [
        ("advance", 2.5),
        ("send", "node1", Op.ACQUIRE, 1.0, 0.5, 0.01, 0.01),
        ("advance", 0.5),
        ("send", "node1", Op.RENEW, 1.0, 0.5, 0.01, 0.01),
        ("advance", 0.5),
        ("send", "node2", Op.ACQUIRE, 1.0, 0.2, 0.01, 0.01),
        ("advance", 1.2),
        ("send", "node2", Op.ACQUIRE, 1.0, 0.2, 0.01, 0.01),
    ]
    sim = run(program)
    assert len(sim.nodes["node1"].believes) == 2
    assert len(sim.nodes["node2"].believes) == 1
    # node2 became holder only after node1's deadline + grace
    assert sim.nodes["node2"].believes[0][0] >= sim.nodes["node1"].runs[-1][1]
    check(sim)


def test_a_query_while_the_own_release_is_on_its_way_grants_nothing() -> None:
    """Found by the property: the witness still counts node1 as holder (its release has not
    arrived) and says so; node1 must not take that for a lease it gave back."""
    sim = run(
        [
            ("send", "node1", Op.ACQUIRE, 0.3, 0.0, 0.0, 0.0),
            ("advance", 0.01),
            ("send", "node1", Op.RELEASE, 0.3, 0.0, 0.2, 0.0),
            ("send", "node1", Op.QUERY, 0.3, 0.0, 0.0, 0.0),
            ("advance", 0.25),
            ("send", "node2", Op.ACQUIRE, 0.3, 0.0, 0.0, 0.0),
        ]
    )
    assert sim.nodes["node1"].believes == [[0.0, 0.01]]  # its grant, cut at its release
    assert len(sim.nodes["node2"].believes) == 1
    check(sim)


def test_the_check_catches_two_holders() -> None:
    sim = Sim()
    sim.nodes["node1"].believes.append([1.0, 3.0])
    sim.nodes["node2"].believes.append([2.0, 4.0])
    with pytest.raises(AssertionError, match="two nodes believe"):
        check(sim)


def test_an_unsafe_rule_is_caught_by_the_property() -> None:
    """Without the client's rule (renew only while its own lease runs), a stale renewal after
    a witness restart gives a second holder: the simulation finds it."""

    class Reckless(LeaseMemory):
        def send(self, asked: Op, module: str, now: float) -> Sent:
            sent = super().send(asked, module, now)
            return Sent(asked, sent.at, float("inf"), sent.epoch)

    sim = Sim()
    sim.nodes["node1"].memory = Reckless()
    for action in [
        ("advance", 2.5),
        ("send", "node2", Op.ACQUIRE, 1.0, 0.0, 0.0, 0.0),
        ("advance", 0.1),
        ("restart",),
        ("send", "node1", Op.RENEW, 1.0, 0.0, 0.0, 0.0),
    ]:
        if action[0] == "send":
            sim.send(*action[1:])  # type: ignore[arg-type]
        elif action[0] == "advance":
            sim.advance(action[1])  # type: ignore[arg-type]
        else:
            sim.restart_witness()
    sim.advance(10.0)
    with pytest.raises(AssertionError, match="two nodes believe"):
        check(sim)


# --- outdated copies: a node granted while it serves alone (issue 12, A) --------------------


def test_a_node_granted_while_alone_makes_the_other_copies_outdated() -> None:
    wit = Witness()
    wit.restart(-Q)  # quarantine over
    assert wit.ask(0.0, "node1", "acquire").granted  # PRIM with a ready secondary
    assert wit.arb.latest == {}
    assert wit.ask(1.0, "node1", "renew", alone=True).granted  # its secondary is gone
    assert wit.arb.latest == {("shop", "db"): "node1"}
    assert any(n.kind == "latest" and "node1 serves alone" in n.message for n in wit.notes)
    # node1 dies: its lease runs out, grace included, and node2 is still refused
    d = wit.ask(10.0, "node2", "acquire")
    assert not d.granted
    assert "the copy on node2 is outdated" in d.reason
    assert "`hakit primforce db` on node2" in d.reason
    wit.restart(11.0)  # a witness restart does not forget it
    assert not wit.ask(11.0 + Q + 1, "node2", "acquire").granted
    # node1 comes back alone, then with node2 as a ready secondary: the mark goes
    assert wit.ask(30.0, "node1", "acquire", alone=True).granted
    assert wit.ask(31.0, "node1", "renew").granted
    assert wit.arb.latest == {}
    assert any("node1 has a current secondary again" in n.message for n in wit.notes)
    assert wit.ask(31.5, "node1", "release").granted
    assert wit.ask(32.0, "node2", "acquire", alone=True).granted


def test_primforce_takes_the_lease_from_an_outdated_copy_and_moves_the_mark() -> None:
    wit = Witness()
    wit.restart(-Q)
    assert wit.ask(0.0, "node1", "acquire", alone=True).granted
    assert not wit.ask(10.0, "node2", "acquire", alone=True).granted
    assert wit.ask(11.5, "node2", "acquire", alone=True, force=True).granted  # own grace: 1 s
    assert wit.arb.latest == {("shop", "db"): "node2"}
    assert not wit.ask(30.0, "node1", "acquire", alone=True).granted  # node1 is outdated now


def test_force_does_not_take_a_lease_that_is_held() -> None:
    wit = Witness()
    wit.restart(-Q)
    assert wit.ask(0.0, "node1", "acquire", alone=True).granted
    d = wit.ask(0.5, "node2", "acquire", alone=True, force=True)
    assert not d.granted
    assert d.holder == "node1"
    assert wit.arb.latest == {("shop", "db"): "node1"}


def test_describe_shows_the_latest_copy() -> None:
    wit = Witness()
    wit.restart(-Q)
    wit.ask(0.0, "node1", "acquire", alone=True)
    wit.ask(0.5, "node1", "release")
    assert w.describe(wit.arb, 1.0)["shop"]["db"]["latest"] == "node1"
