"""The lab's plan, computed without touching the machine (no root needed)."""

from __future__ import annotations

import pytest

from hakit.lab import netfilter
from hakit.lab.errors import LabError
from hakit.lab.record import HostState, LabRecord
from hakit.lab.topology import (
    Cut,
    Topology,
    cut_elements,
    is_volatile,
    isolating,
    lab_of_netns,
    normalize_private,
    parse_network,
    validate_lab_name,
    with_cut,
    without_cut,
)


def test_names_and_addresses_follow_the_documented_plan():
    t = Topology("demo", nodes=3, networks=2, clients=2)
    assert t.node_names == ("node1", "node2", "node3")
    assert t.client_names == ("client1", "client2")
    assert t.network_names == ("net1", "net2")
    assert t.switch_netns == "hk.demo.sw"
    assert t.host("node2").netns == "hk.demo.node2"
    assert t.address("node1", 1) == "10.100.1.11"
    assert t.address("node3", "net2") == "10.100.2.13"
    assert t.address("client2", "2") == "10.100.2.102"
    eth1 = t.host("node2").interface(2)
    assert (eth1.name, eth1.port, eth1.mac) == ("eth1", "node2-net2", "02:00:0a:64:02:0c")
    assert t.cluster_nodes() == {
        "node1": {"net1": "10.100.1.11", "net2": "10.100.2.11"},
        "node2": {"net1": "10.100.1.12", "net2": "10.100.2.12"},
        "node3": {"net1": "10.100.1.13", "net2": "10.100.2.13"},
    }


def test_interface_names_fit_the_kernel_limit_at_the_largest_lab():
    t = Topology("abcdefghijklmnop", nodes=32, networks=8, clients=32)
    names = [i.port for h in t.hosts for i in h.interfaces] + [h.netns for h in t.hosts]
    assert all(len(i.port) <= 15 for h in t.hosts for i in h.interfaces)
    assert len(set(names)) == len(names)
    assert len({i.address for h in t.hosts for i in h.interfaces}) == 64 * 8


@pytest.mark.parametrize("name", ["demo", "a", "pg-test", "x123456789012345"])
def test_good_lab_names(name):
    assert validate_lab_name(name) == name
    assert lab_of_netns(f"hk.{name}.node1") == name


@pytest.mark.parametrize("name", ["", "Demo", "1lab", "a.b", "a_b", "x1234567890123456", "-a"])
def test_bad_lab_names_are_refused_with_the_rule(name):
    with pytest.raises(LabError, match="lowercase letter"):
        validate_lab_name(name)


@pytest.mark.parametrize(
    ("nodes", "networks", "clients"), [(0, 1, 0), (33, 1, 0), (2, 0, 0), (2, 9, 0), (2, 1, -1)]
)
def test_sizes_out_of_range_are_refused(nodes, networks, clients):
    with pytest.raises(LabError, match="expected"):
        Topology("demo", nodes, networks, clients)


def test_networks_are_named_k_or_netk():
    assert parse_network("2", 2) == 2
    assert parse_network("net1", 2) == 1
    assert parse_network(2, 2) == 2
    with pytest.raises(LabError, match="it has net1, net2"):
        parse_network("net3", 2)
    with pytest.raises(LabError, match="netK"):
        parse_network("lan", 2)


def test_unknown_hosts_are_refused_with_the_list():
    t = Topology("demo", 2, 1, 1)
    with pytest.raises(LabError, match="it has node1, node2, client1"):
        t.host("node3")
    with pytest.raises(LabError, match="client"):
        t.node("client1")


def test_private_paths_add_to_the_defaults_and_are_checked():
    got = normalize_private(["/var/lib/postgresql", "/run/postgresql/", "/srv"])
    assert set(got) == {
        "/etc/hakit",
        "/var/lib/hakit",
        "/var/log/hakit",
        "/srv",
        "/var/lib/postgresql",
        "/run/postgresql",
    }
    assert got.index("/srv") < got.index("/var/lib/postgresql")  # parents before children
    for bad in ("relative/path", "/", "/etc", "/proc/x", "/run/netns", "/a/../b"):
        with pytest.raises(LabError, match="--private"):
            normalize_private([bad])
    with pytest.raises(LabError, match="contains /var/lib/hakit-lab"):
        normalize_private(["/var/lib"], protected=["/var/lib/hakit-lab"])
    assert is_volatile("/run/postgresql")
    assert is_volatile("/tmp/x")
    assert not is_volatile("/var/lib/postgresql")


def test_cut_heal_isolate_compute_the_set_of_cuts():
    t = Topology("demo", nodes=3, networks=2, clients=1)
    cuts = with_cut(t, (), "node2", "node1", network="net1")
    assert cuts == (Cut("node1", "node2", "net1"),)
    assert with_cut(t, cuts, "node1", "node2", 1) == cuts  # idempotent
    both = with_cut(t, cuts, "node1", "node3")
    assert len(both) == 3
    assert without_cut(t, both, "node1", "node3") == cuts
    assert without_cut(t, both, "node1") == ()
    assert without_cut(t, both, "node1", network=2) == (
        Cut("node1", "node2", "net1"),
        Cut("node1", "node3", "net1"),
    )
    iso = isolating(t, (), "node2")
    assert len(iso) == 3 * 2  # node1, node3, client1 on two networks
    assert all(c.involves("node2") for c in iso)
    assert without_cut(t, iso, "node2") == ()
    with pytest.raises(LabError, match="itself"):
        with_cut(t, (), "node1", "node1")
    with pytest.raises(LabError, match="no host"):
        with_cut(t, (), "node1", "node9")


def test_a_cut_drops_both_directions_on_its_network_only():
    t = Topology("demo", nodes=2, networks=2, clients=0)
    pairs = cut_elements(t, [Cut("node1", "node2", "net2")])
    assert pairs == [("node1-net2", "node2-net2"), ("node2-net2", "node1-net2")]
    script = netfilter.set_script(pairs)
    assert script.splitlines() == [
        "flush set bridge hakit_lab cuts",
        'add element bridge hakit_lab cuts { "node1-net2" . "node2-net2", '
        '"node2-net2" . "node1-net2" }',
    ]
    assert netfilter.set_script([]) == "flush set bridge hakit_lab cuts\n"


def test_the_switch_plan_creates_host_ends_directly_in_their_namespaces():
    t = Topology("demo", nodes=1, networks=2, clients=0)
    lines = t.switch_commands()
    assert "link add net1 type bridge stp_state 0 mcast_snooping 0" in lines
    assert (
        "link add node1-net2 type veth peer name eth1 address 02:00:0a:64:02:0b netns hk.demo.node1"
        in lines
    )
    assert "link set node1-net2 master net2" in lines
    assert t.host_commands("node1") == [
        "link set lo up",
        "addr add 10.100.1.11/24 broadcast + dev eth0",
        "link set eth0 up",
        "addr add 10.100.2.11/24 broadcast + dev eth1",
        "link set eth1 up",
    ]
    assert t.link_commands("node1", "down") == (
        ["link set eth0 down", "link set eth1 down"],
        ["link set node1-net1 down", "link set node1-net2 down"],
    )


def test_hosts_file_names_every_host_by_its_net1_address():
    text = Topology("demo", nodes=2, networks=2, clients=1).hosts_file()
    assert "10.100.1.12\tnode2 node2-net1" in text.splitlines()
    assert "10.100.2.12\tnode2-net2" in text.splitlines()
    assert "10.100.1.101\tclient1 client1-net1" in text.splitlines()


def test_the_record_round_trips_through_json():
    rec = LabRecord(
        name="demo",
        nodes=2,
        networks=2,
        clients=1,
        private=normalize_private([]),
        daemon=True,
        root="/var/lib/hakit-lab/demo",
        state="up",
        creator_pid=42,
        hosts={
            "node1": HostState("off"),
            "node2": HostState("on", 1234, 99),
            "client1": HostState(),
        },
        cuts=(Cut("node1", "node2", "net1"),),
    )
    data = rec.to_json()
    assert data["hosts"]["node1"]["addresses"] == {"net1": "10.100.1.11", "net2": "10.100.2.11"}
    assert LabRecord.from_json(data) == rec
