"""A lab's hosts: their networks, names, private files, and network cuts (one lab, no daemons)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

import hakit
from hakit.lab import netfilter
from hakit.lab.errors import LabError
from hakit.lab.lab import Lab
from hakit.lab.testing import can_ping, unavailable_reason, unique_name, wait_until
from hakit.lab.topology import cut_elements

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(unique_name(), root=tmp_path_factory.mktemp("labroot"))
    try:
        lab.up(nodes=3, networks=2, clients=1, daemon=False)
        yield lab
    finally:
        lab.down(missing_ok=True)


@pytest.fixture
def healed(lab: Lab) -> Iterator[Lab]:
    """The shared lab, with every cut removed afterwards whatever the test did."""
    yield lab
    for host in lab.topology.hosts:
        lab.heal(host.name)


def test_nodes_reach_each_other_on_every_network(lab: Lab) -> None:
    for net in (1, 2):
        assert can_ping(lab, "node1", "node2", net)
        assert can_ping(lab, "node2", "node3", net)
        assert can_ping(lab, "node3", "node1", net)


def test_a_client_reaches_every_node(lab: Lab) -> None:
    for node in lab.nodes:
        assert can_ping(lab, "client1", node, 1)
        assert can_ping(lab, "client1", node, 2)


def test_hosts_know_each_other_by_name(lab: Lab) -> None:
    out = lab.exec("node1", ["getent", "hosts", "node2", "node3-net2"], capture=True).stdout
    assert out.split() == ["10.100.1.12", "node2", "node2-net1", "10.100.2.13", "node3-net2"]


def test_every_host_has_its_own_hostname(lab: Lab) -> None:
    for host in ("node1", "node2", "client1"):
        assert lab.exec(host, ["hostname"], capture=True).stdout.strip() == host
    assert os.uname().nodename not in lab.topology.node_names


def test_each_host_sees_only_its_own_interfaces(lab: Lab) -> None:
    links = json.loads(lab.exec("node2", ["ip", "-j", "addr"], capture=True).stdout)
    addrs = {
        link["ifname"]: [a["local"] for a in link["addr_info"] if a["family"] == "inet"]
        for link in links
    }
    assert addrs == {"lo": ["127.0.0.1"], "eth0": ["10.100.1.12"], "eth1": ["10.100.2.12"]}
    # /sys is the host's own too (what `ip netns exec` gives), so interface checkers see eth0.
    sys_net = lab.exec("node2", ["ls", "/sys/class/net"], capture=True).stdout.split()
    assert sorted(sys_net) == ["eth0", "eth1", "lo"]


def test_nothing_of_the_lab_is_in_the_root_namespace(lab: Lab) -> None:
    root = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True)
    links = json.loads(root.stdout)
    ports = {i.port for h in lab.topology.hosts for i in h.interfaces}
    assert not {link["ifname"] for link in links} & (ports | set(lab.networks))
    local = [a["local"] for link in links for a in link.get("addr_info", [])]
    assert not [a for a in local if a.startswith("10.100.")]


def test_etc_hakit_is_private_to_each_node(lab: Lab) -> None:
    lab.exec("node1", ["sh", "-c", "echo only-node1 > /etc/hakit/private-test"])
    assert lab.exec("node1", ["cat", "/etc/hakit/private-test"], capture=True).stdout == (
        "only-node1\n"
    )
    assert lab.exec("node2", ["test", "-e", "/etc/hakit/private-test"], check=False).returncode
    assert not os.path.exists("/etc/hakit/private-test")
    assert lab.host_path("node1", "/etc/hakit/private-test").read_text() == "only-node1\n"
    for path in ("/var/lib/hakit", "/var/log/hakit", "/srv"):
        assert lab.host_path("node2", path) != lab.host_path("node3", path)


def test_every_node_has_the_cluster_config_and_the_same_secret(lab: Lab) -> None:
    secrets = set()
    for node in lab.nodes:
        conf = lab.exec(node, ["cat", "/etc/hakit/cluster.yaml"], capture=True).stdout
        assert f"cluster: {lab.name}" in conf
        assert "10.100.2.13" in conf
        key = lab.host_path(node, "/etc/hakit/cluster.key")
        assert (key.stat().st_mode & 0o777) == 0o600
        secrets.add(key.read_text())
    assert len(secrets) == 1
    assert lab.exec("client1", ["ls", "/etc/hakit"], capture=True).stdout == ""


def test_exec_passes_the_exit_code_and_stdin(lab: Lab) -> None:
    assert lab.exec("node1", ["sh", "-c", "exit 7"], check=False).returncode == 7
    r = lab.exec("node2", ["sh", "-c", "cat; hostname"], input="hello\n", capture=True)
    assert r.stdout == "hello\nnode2\n"
    with pytest.raises(LabError, match=r"node1: `false` exited with 1"):
        lab.exec("node1", ["false"])
    with pytest.raises(LabError, match="no host 'node9'"):
        lab.exec("node9", ["true"])


def test_exec_runs_this_hakit(lab: Lab) -> None:
    out = lab.exec("node3", ["hakit", "--version"], capture=True).stdout.strip()
    assert out == hakit.__version__


def test_a_cut_on_one_network_stops_traffic_there_only(healed: Lab) -> None:
    lab = healed
    lab.cut("node1", "node2", network=1)
    assert not can_ping(lab, "node1", "node2", 1, wait=0.5)
    assert not can_ping(lab, "node2", "node1", 1, wait=0.5)
    assert can_ping(lab, "node1", "node2", 2)
    assert can_ping(lab, "node1", "node3", 1)
    assert lab.describe()["cuts"] == [{"hosts": ["node1", "node2"], "network": "net1"}]
    lab.heal("node2", "node1", network="net1")
    wait_until(lambda: can_ping(lab, "node1", "node2", 1), 5, "net1 to work again after heal")
    assert lab.cuts() == ()


def test_isolate_cuts_a_node_from_everyone(healed: Lab) -> None:
    lab = healed
    lab.isolate("node3")
    for other in ("node1", "node2", "client1"):
        for net in (1, 2):
            assert not can_ping(lab, other, "node3", net, wait=0.3)
    assert can_ping(lab, "node1", "node2", 1)
    lab.heal("node3")
    wait_until(lambda: can_ping(lab, "client1", "node3", 2), 5, "node3 to be reachable again")


def test_the_switch_filter_matches_the_record(healed: Lab) -> None:
    lab = healed
    lab.cut("node1", "client1")
    lab.cut("node2", "node3", network=2)
    expected = cut_elements(lab.topology, lab.cuts())
    assert sorted(netfilter.current(lab.topology.switch_netns)) == sorted(expected)
    assert len(expected) == 6
