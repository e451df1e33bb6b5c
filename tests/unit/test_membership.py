"""Membership machine: table completeness, loss only when silent everywhere, replay safety."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hakit.core import membership as m
from hakit.wire.heartbeat import Reject

T = 1.0  # timeout
NETS = ("net1", "net2")
BOOT1 = (1).to_bytes(8, "big") + b"aaaaaaaa"
BOOT2 = (2).to_bytes(8, "big") + b"bbbbbbbb"


def rx(net: str, seq: int, boot: bytes = BOOT1, echo_ok: bool = True) -> m.Received:
    return m.Received(net, boot, seq, echo_ok, sent_at=0.0, wall_now=0.0)


def run(p: m.Peer, *evs: tuple[float, m.Event]) -> tuple[m.Peer, list[m.Action]]:
    out: list[m.Action] = []
    for now, ev in evs:
        p, acts = m.step(p, ev, now, T)
        out.extend(acts)
    return p, out


def kinds(actions: list[m.Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def fresh() -> m.Peer:
    return m.new_peer("node2", NETS, 0.0)


def test_first_heartbeat_makes_peer_alive() -> None:
    p, acts = run(fresh(), (0.1, rx("net1", 1)))
    assert p.state is m.PeerState.ALIVE
    assert kinds(acts) == ["PeerUp"]
    assert acts[0].reason == "node2 alive: first heartbeat, on net1"
    assert p.up_networks() == ["net1"]


def test_never_heard_is_lost_after_timeout() -> None:
    p, acts = run(fresh(), (0.5, m.Tick()))
    assert p.state is m.PeerState.UNKNOWN
    p, acts = run(p, (1.0, m.Tick()))
    assert p.state is m.PeerState.LOST
    assert "since start" in acts[0].reason


def test_losing_one_network_keeps_peer_alive() -> None:
    p, _ = run(fresh(), (0.0, rx("net1", 1)), (0.0, rx("net2", 1)))
    # net1 goes silent; net2 keeps beating
    evs: list[tuple[float, m.Event]] = []
    for i in range(2, 20):
        evs += [(i * 0.2, rx("net2", i)), (i * 0.2, m.Tick())]
    p, acts = run(p, *evs)
    assert p.state is m.PeerState.ALIVE
    assert kinds(acts) == ["LinkDown"]
    assert acts[0].reason.startswith("no heartbeat from node2 on net1 for 1.00 s")
    p, acts = run(p, (4.0, rx("net1", 21)))
    assert kinds(acts) == ["LinkUp"]


def test_lost_only_when_silent_on_every_network_for_timeout() -> None:
    p, _ = run(fresh(), (0.0, rx("net1", 1)), (0.5, rx("net2", 2)))
    p, acts = run(p, (1.0, m.Tick()))
    assert p.state is m.PeerState.ALIVE  # net2 heard 0.5 s ago
    p, acts = run(p, (1.49, m.Tick()))
    assert p.state is m.PeerState.ALIVE
    p, acts = run(p, (1.5, m.Tick()))
    assert p.state is m.PeerState.LOST
    assert kinds(acts) == ["LinkDown", "PeerLost"]
    assert "no heartbeat on net1, net2 for 1.00 s" in acts[-1].reason


def test_replayed_sequence_is_dropped() -> None:
    p, _ = run(fresh(), (0.0, rx("net1", 5)))
    p2, acts = run(p, (0.1, rx("net1", 5)), (0.2, rx("net1", 3)))
    assert [a.reason for a in acts] == [Reject.REPLAYED, Reject.REPLAYED]
    assert p2.link("net1").last_heard == 0.0  # replays did not refresh the link


def test_fresh_heartbeats_are_counted_per_link_across_boots() -> None:
    """The metrics' count (hakit_peer_heartbeats_total): fresh ones only, kept when the peer
    restarts."""
    p, _ = run(fresh(), (0.0, rx("net1", 1)), (0.1, rx("net1", 1)), (0.2, rx("net2", 2)))
    assert (p.link("net1").heard, p.link("net2").heard) == (1, 1)  # the replay is not counted
    p, _ = run(p, (0.3, rx("net1", 3)), (0.4, rx("net1", 1, BOOT2)))
    assert p.boot == BOOT2
    assert (p.link("net1").heard, p.link("net2").heard) == (3, 1)


def test_replays_never_keep_a_dead_peer_alive() -> None:
    p, _ = run(fresh(), (0.0, rx("net1", 1)), (0.2, rx("net1", 2)))
    p, _ = run(p, (1.2, rx("net1", 2)), (1.21, m.Tick()))
    assert p.state is m.PeerState.LOST


def test_unconfirmed_boot_is_not_alive_until_it_echoes_us() -> None:
    # A receiver that just restarted: a recorded heartbeat (echoing our *previous* boot) is
    # authentic but must not make the peer alive.
    p, acts = run(fresh(), (0.0, rx("net1", 100, echo_ok=False)))
    assert p.state is m.PeerState.UNKNOWN
    assert acts == []
    assert p.heard_boot == BOOT1  # we now echo it; the live peer will confirm
    p, acts = run(p, (0.2, rx("net1", 101)))
    assert p.state is m.PeerState.ALIVE


def test_restart_of_peer_is_reported() -> None:
    p, _ = run(fresh(), (0.0, rx("net1", 10)))
    p, acts = run(p, (0.3, rx("net1", 1, boot=BOOT2)))
    assert kinds(acts) == ["PeerRestarted"]
    assert p.boot == BOOT2
    assert BOOT1 in p.retired
    # the previous life can never come back
    p, acts = run(p, (0.4, rx("net1", 11, boot=BOOT1)))
    assert [a.reason for a in acts] == [Reject.OLD_BOOT]


def test_older_boot_is_refused_while_current_boot_alive() -> None:
    p, _ = run(fresh(), (0.0, rx("net1", 1, boot=BOOT2)))
    p, acts = run(p, (0.1, rx("net1", 50, boot=BOOT1)))
    assert [a.reason for a in acts] == [Reject.OLD_BOOT]
    assert p.boot == BOOT2


def test_lost_peer_comes_back() -> None:
    p, _ = run(fresh(), (0.0, rx("net1", 1)), (1.0, m.Tick()))
    assert p.state is m.PeerState.LOST
    p, acts = run(p, (5.0, rx("net2", 30)))
    assert p.state is m.PeerState.ALIVE
    assert acts[0].reason == "node2 alive again after 4.00 s lost: heartbeats resumed, on net2"


@pytest.mark.parametrize("state", list(m.PeerState))
@pytest.mark.parametrize("kind", list(m.Kind))
def test_table_is_complete_or_raises(state: m.PeerState, kind: m.Kind) -> None:
    """Every (state, kind) pair is either in the table or impossible and raises."""
    impossible = {
        (m.PeerState.UNKNOWN, m.Kind.REBOOTED),  # a first boot is never a "re" boot
        (m.PeerState.UNKNOWN, m.Kind.LINK_SILENT),  # no link was ever up
        (m.PeerState.LOST, m.Kind.LINK_SILENT),  # every link is already down
        (m.PeerState.LOST, m.Kind.ALL_SILENT),
    }
    assert ((state, kind) in m.TRANSITIONS) != ((state, kind) in impossible)


def test_unexpected_event_raises() -> None:
    # Force an impossible classification: a LOST peer with a link still marked up.
    p = replace(
        fresh(),
        state=m.PeerState.LOST,
        links={"net1": m.Link(up=True, last_heard=0.0, seq=1), "net2": m.Link()},
    )
    with pytest.raises(m.UnexpectedEvent):
        m.step(p, m.Tick(), 5.0, T)


events = st.lists(
    st.tuples(
        st.floats(0.0, 0.7),  # time advance
        st.one_of(
            st.just(None),  # tick
            st.tuples(
                st.sampled_from(NETS),
                st.integers(0, 30),
                st.sampled_from([BOOT1, BOOT2]),
                st.booleans(),
            ),
        ),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(events)
def test_invariants(seq: list[tuple[float, object]]) -> None:
    """Whatever arrives: alive implies some link heard within the timeout (as of the last tick),
    lost implies every link down, and the state always matches the links."""
    p, now = fresh(), 0.0
    for adv, what in seq:
        now += adv
        if what is None:
            p, _ = m.step(p, m.Tick(), now, T)
            if p.state is m.PeerState.ALIVE:
                assert any(p.link(n).up and now - (p.link(n).last_heard or 0) < T for n in NETS)
        else:
            assert isinstance(what, tuple)
            net, s, boot, echo = what
            p, _ = m.step(p, rx(str(net), int(s), bytes(boot), bool(echo)), now, T)
        if p.state is not m.PeerState.ALIVE:
            assert not p.up_networks()
        else:
            assert p.up_networks()
