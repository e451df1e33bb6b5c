"""The farm's pure core: bucket assignment, agreement between nodes, the state machine."""

from __future__ import annotations

import random
from collections import Counter
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hakit.core import farm as fm
from hakit.core.outcomes import Accepted, Refused, UnexpectedEvent

NODES = [f"node{i}" for i in range(1, 9)]


def table(weights: dict[str, int], seed: str = "web") -> tuple[tuple[str, ...], ...]:
    return fm.preference_table(list(weights.items()), seed)


def shares(tab: tuple[tuple[str, ...], ...], members: set[str]) -> Counter[str | None]:
    return Counter(fm.owners(tab, frozenset(members)))


# --- assignment -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 32])
def test_equal_weights_split_exactly_with_everyone_and_with_any_one_node_down(n: int) -> None:
    names = [f"n{i}" for i in range(n)]
    tab = table(dict.fromkeys(names, 1))
    c = shares(tab, set(names))
    assert sum(c.values()) == fm.BUCKETS
    assert None not in c
    assert max(c.values()) - min(c.values()) <= 1
    for down in names[: min(n, 6)]:
        rest = set(names) - {down}
        c = shares(tab, rest)
        assert set(c) == rest
        assert max(c.values()) - min(c.values()) <= 2, (down, c)


def test_weights_are_proportional() -> None:
    tab = table({"a": 2, "b": 1, "c": 1})
    c = shares(tab, {"a", "b", "c"})
    assert c["a"] == 128
    assert c["b"] == 64
    assert c["c"] == 64


def test_weight_zero_is_a_standby() -> None:
    tab = table({"a": 1, "b": 1, "s": 0})
    assert shares(tab, {"a", "b", "s"})["s"] == 0
    assert shares(tab, {"a", "s"}) == Counter({"a": 256})
    assert shares(tab, {"s"}) == Counter({"s": 256})
    tab2 = table({"a": 1, "s": 0, "t": 0})
    c = shares(tab2, {"s", "t"})
    assert c["s"] == c["t"] == 128


def test_no_member_no_owner_and_the_table_is_deterministic() -> None:
    w = {"a": 1, "b": 3, "c": 1}
    assert table(w) == table(w)
    assert table(w, "other") != table(w)
    assert set(fm.owners(table(w), frozenset())) == {None}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 4), min_size=8, max_size=8),
    st.sets(st.sampled_from(NODES), max_size=7),
    st.sampled_from(NODES),
)
def test_a_join_or_leave_moves_only_the_buckets_it_must(
    weights: list[int], members: set[str], extra: str
) -> None:
    if all(w == 0 for w in weights):
        weights[0] = 1
    tab = table(dict(zip(NODES, weights, strict=True)))
    members.discard(extra)
    before = fm.owners(tab, frozenset(members))
    after = fm.owners(tab, frozenset(members | {extra}))
    for b, (x, y) in enumerate(zip(before, after, strict=True)):
        assert x == y or y == extra, f"bucket {b} moved {x} -> {y} when {extra} joined"


# --- agreement --------------------------------------------------------------------------------


class Sim:
    """N nodes that all see each other; publications delivered late and in any order."""

    def __init__(self, n: int, rng: random.Random, weights: dict[str, int] | None = None) -> None:
        self.names = NODES[:n]
        self.rng = rng
        self.table = table(weights or dict.fromkeys(self.names, 1))
        self.member = dict.fromkeys(self.names, True)
        self.a = {p: fm.Assignment(inc=f"i{p}") for p in self.names}
        self.acks: dict[str, tuple[tuple[str, str], ...]] = dict.fromkeys(self.names, ())
        # everyone is alive and heard of (publishing nothing yet), as the runner waits for
        self.known: dict[str, dict[str, fm.Published | None]] = {
            p: {q: fm.Published() for q in self.names if q != p} for p in self.names
        }
        self.hold = dict.fromkeys(self.names, 0)  # currently accepted (the kernel's filter)

    def pub(self, p: str) -> fm.Published:
        a = self.a[p]
        return fm.Published(self.member[p], a.inc, a.seq, a.view, a.owned, self.acks[p], digest="d")

    def recompute(self, p: str) -> None:
        new, _, acks = fm.converge(self.a[p], p, self.member[p], "d", self.table, self.known[p])
        self.a[p], self.acks[p] = new, acks
        self.hold[p] = new.owned

    def deliver(self, src: str, dst: str) -> None:
        self.known[dst][src] = self.pub(src)

    def check_no_double_accept(self) -> None:
        for p, q in combinations(self.names, 2):
            both = self.hold[p] & self.hold[q]
            assert not both, f"{p} and {q} both accept buckets {fm.buckets_of(both)[:5]}"

    def random_step(self) -> None:
        r = self.rng.random()
        p = self.rng.choice(self.names)
        if r < 0.45:
            self.recompute(p)
        elif r < 0.95:
            q = self.rng.choice([x for x in self.names if x != p])
            self.deliver(p, q)
        else:
            self.member[p] = not self.member[p]

    def settle(self, rounds: int = 12, check: bool = True) -> None:
        for _ in range(rounds):
            for p in self.names:
                for q in self.names:
                    if p != q:
                        self.deliver(p, q)
            for p in self.names:
                self.recompute(p)
                if check:
                    self.check_no_double_accept()


@pytest.mark.parametrize("seed", range(60))
def test_no_bucket_is_ever_accepted_twice_and_every_bucket_ends_owned(seed: int) -> None:
    rng = random.Random(seed)
    sim = Sim(rng.choice([2, 3, 4, 5]), rng)
    for _ in range(600):
        sim.random_step()
        sim.check_no_double_accept()
    for p in sim.names:
        sim.member[p] = True
    sim.settle()
    total = 0
    for p in sim.names:
        assert sim.a[p].settled, (p, sim.a[p])
        total |= sim.hold[p]
    assert total == fm.ALL
    assert len({sim.a[p].view for p in sim.names}) == 1


def test_a_node_that_leaves_releases_at_once_and_the_others_take_its_share() -> None:
    sim = Sim(3, random.Random(1))
    sim.settle()
    assert sorted(fm.count(sim.hold[p]) for p in sim.names) == [85, 85, 86]
    sim.member["node3"] = False
    sim.recompute("node3")
    assert sim.hold["node3"] == 0
    sim.settle()
    one, two = (fm.count(sim.hold[p]) for p in ("node1", "node2"))
    assert one + two == fm.BUCKETS
    assert abs(one - two) <= 2


def test_a_lost_node_is_not_waited_for() -> None:
    sim = Sim(3, random.Random(2))
    sim.settle()
    for p in ("node1", "node2"):
        sim.known[p]["node3"] = None  # membership: lost
    for _ in range(3):
        for p, q in (("node1", "node2"), ("node2", "node1")):
            sim.deliver(p, q)
        sim.recompute("node1")
        sim.recompute("node2")
    assert sim.hold["node1"] | sim.hold["node2"] == fm.ALL


def test_a_split_heals_into_one_assignment() -> None:
    sim = Sim(3, random.Random(3))
    sim.settle()
    # node1 alone on one side, node2 + node3 on the other: each side takes everything
    for p, q in (("node1", "node2"), ("node1", "node3")):
        sim.known[p][q] = None
        sim.known[q][p] = None
    for _ in range(4):
        sim.deliver("node2", "node3")
        sim.deliver("node3", "node2")
        for p in sim.names:
            sim.recompute(p)
    assert sim.hold["node1"] == fm.ALL
    assert sim.hold["node2"] | sim.hold["node3"] == fm.ALL
    sim.settle(check=False)  # healed: the overlap of the split is resolved
    sim.check_no_double_accept()
    assert sorted(fm.count(sim.hold[p]) for p in sim.names) == [85, 85, 86]


def test_a_node_with_another_configuration_is_left_out_but_its_buckets_respected() -> None:
    a = fm.Assignment(inc="x", seq=1, view=("a",))
    tab = table({"a": 1, "b": 1})
    other = fm.Published(True, "y", 1, ("b",), 0, (("a", "x:1"),), digest="other")
    new, _, _ = fm.converge(a, "a", True, "d", tab, {"b": other})
    assert new.view == ("a",)
    assert new.agreed
    assert new.owned == fm.ALL
    claiming = fm.Published(True, "y", 1, ("b",), fm.ALL, (("a", "x:1"),), digest="other")
    new, _, _ = fm.converge(a, "a", True, "d", tab, {"b": claiming})
    assert new.owned == 0  # never accept what another live node accepts


def test_wire_round_trip() -> None:
    p = fm.Published(True, "abc", 7, ("n1", "n2"), 0b1011 << 200, (("n2", "q:3"),), "dd", "UP")
    assert fm.from_wire(fm.to_wire(p)) == p
    assert fm.from_wire({"k": "farm", "m": True}) is None
    assert fm.from_wire({"phase": "prim"}) is None


# --- the state machine ------------------------------------------------------------------------


def farm(gated: bool = False, **kw: object) -> fm.Farm:
    return fm.Farm("web", "node1", gated=gated, **kw)  # type: ignore[arg-type]


def ops(actions: tuple[fm.Action, ...]) -> list[fm.Op]:
    return [a.op for a in actions if isinstance(a, fm.RunOp)]


def test_start_joins_when_started_and_healthy() -> None:
    f, acts = fm.step(farm(True), fm.Command(fm.Cmd.START), 1.0)
    assert f.phase is fm.Phase.STARTING
    assert ops(acts) == [fm.Op.START]
    assert f.display(False) == ("WAIT", "transient")
    f, _ = fm.step(f, fm.OpDone(fm.Op.START, True), 2.0)
    assert f.phase is fm.Phase.UP
    assert not f.member
    assert f.display(False) == ("UP", "not-ready")
    f, _ = fm.step(f, fm.Health(True, "ok"), 3.0)
    assert f.member
    assert f.display(False) == ("UP", "transient")
    assert f.display(True) == ("UP", "ready")


def test_without_a_check_a_started_node_is_a_member() -> None:
    f, _ = fm.step(farm(), fm.Command(fm.Cmd.START), 1.0)
    f, _ = fm.step(f, fm.OpDone(fm.Op.START, True), 2.0)
    assert f.member


def test_membership_follows_the_checkers_and_recoveries_come_as_events() -> None:
    f = farm(True, phase=fm.Phase.UP, healthy=True)
    f, acts = fm.step(f, fm.Health(False, "tcp checker web failed 3 times"), 10.0)
    assert f.phase is fm.Phase.UP
    assert not f.member
    assert ops(acts) == []
    f, acts = fm.step(f, fm.Recover("restart", "restart of web: tcp checker web failed"), 10.1)
    assert f.phase is fm.Phase.RESTARTING
    assert ops(acts) == [fm.Op.RESTART]
    f, _ = fm.step(f, fm.OpDone(fm.Op.RESTART, True), 11.0)
    assert f.phase is fm.Phase.UP
    assert not f.member  # until its checkers pass again
    f, _ = fm.step(f, fm.Health(True, "ok"), 12.0)
    assert f.member
    f, acts = fm.step(f, fm.Recover("stop", "stop of web: loop protection"), 20.0)
    assert f.phase is fm.Phase.STOPPING
    f, _ = fm.step(f, fm.OpDone(fm.Op.STOP, True), 21.0)
    assert f.phase is fm.Phase.STOPPED
    assert "loop protection" in f.failed
    g = farm(True, phase=fm.Phase.UP, healthy=True)
    g, acts = fm.step(g, fm.Recover("stopstart", "stopstart of web"), 1.0)
    g, acts = fm.step(g, fm.OpDone(fm.Op.STOP, True), 2.0)
    assert g.phase is fm.Phase.STARTING


def test_a_wait_checker_holds_the_node_and_it_resumes_by_itself() -> None:
    f = farm(True, phase=fm.Phase.UP, healthy=True)
    f, acts = fm.step(f, fm.Holds(("interface checker nic down (eth0 has no link)",)), 1.0)
    assert f.phase is fm.Phase.STOPPING
    assert not f.member
    f, _ = fm.step(f, fm.OpDone(fm.Op.STOP, True), 2.0)
    assert f.phase is fm.Phase.HELD
    assert f.display(False) == ("WAIT", "not-ready")
    assert "eth0 has no link" in f.reason
    f, acts = fm.step(f, fm.Holds(()), 3.0)
    assert f.phase is fm.Phase.STARTING
    assert ops(acts) == [fm.Op.START]
    # a checker that comes back while the application stops: it starts again
    g = farm(True, phase=fm.Phase.UP, healthy=True)
    g, _ = fm.step(g, fm.Holds(("x",)), 1.0)
    g, _ = fm.step(g, fm.Holds(()), 1.5)
    g, _ = fm.step(g, fm.OpDone(fm.Op.STOP, True), 2.0)
    assert g.phase is fm.Phase.STARTING


def test_before_start_checkers_hold_the_start_and_stop_is_immediate_while_held() -> None:
    f = fm.Farm(module="web", local="a", gated=True, waits_first=True)
    f, acts = fm.step(f, fm.Command(fm.Cmd.START), 1.0)
    assert f.phase is fm.Phase.HELD
    assert ops(acts) == []
    assert any(isinstance(a, Accepted) for a in acts)
    f, _ = fm.step(f, fm.Holds(("module checker db: waiting for module db to be up",)), 1.1)
    assert f.phase is fm.Phase.HELD
    f, acts = fm.step(f, fm.Command(fm.Cmd.STOP), 2.0)
    assert f.phase is fm.Phase.STOPPED
    f, _ = fm.step(f, fm.Command(fm.Cmd.START), 3.0)
    f, acts = fm.step(f, fm.Holds(()), 4.0)
    assert f.phase is fm.Phase.STARTING


def test_stop_during_start_happens_after_it() -> None:
    f, _ = fm.step(farm(), fm.Command(fm.Cmd.START), 1.0)
    f, acts = fm.step(f, fm.Command(fm.Cmd.STOP), 1.1)
    assert any(isinstance(a, Accepted) for a in acts)
    assert f.then is fm.Then.STOP
    f, acts = fm.step(f, fm.OpDone(fm.Op.START, True), 2.0)
    assert f.phase is fm.Phase.STOPPING
    assert ops(acts) == [fm.Op.STOP]


def test_a_failed_start_cleans_up_and_says_why() -> None:
    f, _ = fm.step(farm(), fm.Command(fm.Cmd.START), 1.0)
    f, acts = fm.step(f, fm.OpDone(fm.Op.START, False, "start_both exited 1"), 2.0)
    assert f.phase is fm.Phase.STOPPING
    assert ops(acts) == [fm.Op.STOP]
    f, _ = fm.step(f, fm.OpDone(fm.Op.STOP, True), 3.0)
    assert f.phase is fm.Phase.STOPPED
    assert "start_both exited 1" in f.reason


def test_stopstart_starts_again() -> None:
    f = farm(phase=fm.Phase.UP, healthy=True)
    f, _ = fm.step(f, fm.Command(fm.Cmd.STOPSTART), 1.0)
    f, acts = fm.step(f, fm.OpDone(fm.Op.STOP, True), 2.0)
    assert f.phase is fm.Phase.STARTING
    assert ops(acts) == [fm.Op.START]


def test_refusals_say_what_to_do() -> None:
    _, acts = fm.step(farm(), fm.Command(fm.Cmd.RESTART), 1.0)
    assert isinstance(acts[0], Refused)
    assert "hakit start web" in acts[0].message
    _, acts = fm.step(farm(phase=fm.Phase.UP), fm.Command(fm.Cmd.START), 1.0)
    assert isinstance(acts[0], Refused)
    assert "already started" in acts[0].message


def test_unexpected_events_are_errors() -> None:
    with pytest.raises(UnexpectedEvent):
        fm.step(farm(phase=fm.Phase.UP), fm.OpDone(fm.Op.STOP, True), 1.0)
    with pytest.raises(UnexpectedEvent):
        fm.step(farm(), fm.OpDone(fm.Op.START, True), 1.0)


def test_a_start_held_for_checkers_that_hold_nothing_starts_at_the_first_holds_event() -> None:
    """A before-start `wait` checker switched off holds nothing: the start goes on as soon as
    the runner says so (it always sends the holds when the module starts)."""
    f = fm.Farm(module="web", local="a", waits_first=True)
    f, _ = fm.step(f, fm.Command(fm.Cmd.START), 1.0)
    assert f.phase is fm.Phase.HELD
    f, acts = fm.step(f, fm.Holds(()), 1.1)
    assert f.phase is fm.Phase.STARTING
    assert ops(acts) == [fm.Op.START]
