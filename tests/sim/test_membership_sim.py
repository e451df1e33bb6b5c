"""Simulated clusters: membership forms, detects loss in time, survives partial faults."""

from __future__ import annotations

from hakit.core import membership as m
from hakit.core.heartbeat import NetworkHeard, NetworkSilent
from hakit.testing.sim import FakeNetwork, SimCluster

ALIVE, LOST = m.PeerState.ALIVE, m.PeerState.LOST
NODES = ["node1", "node2", "node3"]


def test_cluster_forms_within_one_interval_or_two() -> None:
    sim = SimCluster(NODES, ["net1", "net2"])
    sim.run_until(0.5)
    for n in NODES:
        assert set(sim.view(n).values()) == {ALIVE}


def test_poweroff_detected_within_timeout_plus_one_pulse_by_every_survivor() -> None:
    sim = SimCluster(NODES, ["net1", "net2"])
    sim.run_until(3.0)
    sim.power_off("node3")
    sim.run_until(6.0)
    for n in ("node1", "node2"):
        t = sim.first(n, m.PeerLost, "node3")
        assert t is not None
        assert 3.0 + sim.timeout - sim.interval <= t <= 3.0 + sim.timeout + sim.interval
        assert sim.view(n) == {"node3": LOST, ("node2" if n == "node1" else "node1"): ALIVE}


def test_cutting_one_network_never_loses_a_peer() -> None:
    sim = SimCluster(NODES, ["net1", "net2"])
    sim.run_until(1.0)
    for a in NODES:
        for b in NODES:
            if a < b:
                sim.net.cut(a, b, "net1")
    sim.run_until(10.0)
    assert not any(isinstance(a, m.PeerLost) for _, _, a in sim.log)
    assert sim.engines["node1"].peers["node2"].up_networks() == ["net2"]


def test_heavy_loss_causes_no_false_loss() -> None:
    # 30 % loss on both networks: losing a peer needs 10 losses in a row (5 pulses × 2 nets).
    sim = SimCluster(NODES, ["net1", "net2"], net=FakeNetwork(seed=7, loss=0.3))
    sim.run_until(120.0)
    assert not any(isinstance(a, m.PeerLost) for _, _, a in sim.log)


def test_partition_is_seen_by_both_sides_and_heals() -> None:
    sim = SimCluster(NODES, ["net1"])
    sim.run_until(1.0)
    for other in ("node1", "node2"):
        sim.net.cut("node3", other, "net1")
    sim.run_until(3.0)
    assert sim.view("node3") == {"node1": LOST, "node2": LOST}
    assert sim.view("node1")["node3"] is LOST
    for other in ("node1", "node2"):
        sim.net.heal("node3", other, "net1")
    sim.run_until(4.0)
    for n in NODES:
        assert set(sim.view(n).values()) == {ALIVE}


def test_restarted_node_is_reported_and_rejoins() -> None:
    sim = SimCluster(NODES, ["net1"])
    sim.run_until(1.0)
    sim.power_off("node2")
    sim.run_until(1.3)
    sim.power_on("node2")  # back before the timeout: a restart, not a loss
    sim.run_until(2.5)
    assert sim.first("node1", m.PeerRestarted, "node2") is not None
    assert sim.first("node1", m.PeerLost, "node2") is None
    assert set(sim.view("node2").values()) == {ALIVE}


def test_a_new_peer_payload_is_flagged_for_immediate_report() -> None:
    sim = SimCluster(["node1", "node2"], ["net1"])
    sim.run_until(1.0)
    receiver = sim.engines["node2"]
    receiver.payload_changed = False
    sim.engines["node1"].payload = b'{"m": {"web": {"p": "alone"}}}'
    sim.run_until(1.3)
    assert receiver.payload_changed
    assert receiver.peers["node1"].payload == b'{"m": {"web": {"p": "alone"}}}'


def test_a_network_silent_from_every_peer_while_another_works_is_reported_once() -> None:
    sim = SimCluster(NODES, ["net1", "net2"])
    sim.run_until(1.0)
    sim.net.cut("node1", "node2", "net1")
    sim.net.cut("node1", "node3", "net1")
    sim.run_until(5.0)
    silent = [(t, a) for t, n, a in sim.network_log if n == "node1"]
    assert [type(a) for _, a in silent] == [NetworkSilent]
    assert silent[0][1].network == "net1"
    assert "no heartbeat received on net1 from any peer for" in silent[0][1].reason
    assert "while net2 works: check the interface/firewall" in silent[0][1].reason
    assert sim.engines["node1"].silent_networks.keys() == {"net1"}
    # node2 still hears node3 on net1: not a problem of node2's net1
    assert not [a for _, n, a in sim.network_log if n == "node2"]
    sim.net.heal("node1", "node3", "net1")
    sim.run_until(6.0)
    assert [type(a) for t, n, a in sim.network_log if n == "node1"] == [
        NetworkSilent,
        NetworkHeard,
    ]
    assert sim.engines["node1"].silent_networks == {}


def test_a_dead_peer_is_not_a_silent_network() -> None:
    sim = SimCluster(["node1", "node2"], ["net1", "net2"])
    sim.run_until(1.0)
    sim.power_off("node2")
    sim.run_until(5.0)
    assert sim.network_log == []


def test_a_peer_on_networks_this_node_cannot_hear_on_stays_unknown_not_lost() -> None:
    sim = SimCluster(["node1", "node2"], ["net1", "net2"])
    sim.engines["node1"].deaf.update({"net1", "net2"})  # both ports taken: no socket
    sim.net.cut("node1", "node2", "net1")
    sim.net.cut("node1", "node2", "net2")
    sim.run_until(10.0)
    assert sim.view("node1") == {"node2": m.PeerState.UNKNOWN}
    assert sim.first("node1", m.PeerLost, "node2") is None
    assert sim.view("node2") == {"node1": LOST}
