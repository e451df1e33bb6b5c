"""A new cluster.yaml for a running node (pure): what changes and whether it is taken live, the
edits of add-node/remove-node keeping comments, heartbeat peers reconfigured in place, the
ports of the cluster and their firewall rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from hakit.config.changes import compare
from hakit.config.edit import EditError, add_node, remove_node
from hakit.config.load import load_cluster_text
from hakit.config.model import Cluster
from hakit.config.module import ModuleFile, load_module
from hakit.config.ports import cluster_ports, firewalld, nftables
from hakit.config.starter import new_secret, render_cluster_yaml
from hakit.core import membership as m
from hakit.core.heartbeat import Engine, Settings

NODES = {
    "node1": {"lan": "10.0.1.1", "repl": "10.0.2.1"},
    "node2": {"lan": "10.0.1.2", "repl": "10.0.2.2"},
}


def cluster(text: str) -> Cluster:
    return Cluster.model_validate(__import__("yaml").safe_load(text))


BASE = render_cluster_yaml("shop", NODES)


def test_other_nodes_change_live_own_settings_at_restart() -> None:
    old = cluster(BASE)
    added = cluster(add_node(BASE, "f", "node3", {"lan": "10.0.1.3"}))
    ch = compare(old, added, "node1")
    assert (ch.added, ch.live, ch.summary()) == (("node3",), True, "node3 added")
    assert compare(added, old, "node2").removed == ("node3",)
    assert compare(old, old, "node1").empty
    moved = cluster(BASE.replace("10.0.2.2", "10.0.2.9"))
    assert compare(old, moved, "node1").readdressed == ("node2",)
    assert compare(old, moved, "node1").live
    # node2's own address: node2 takes it at its restart; node1 live
    assert compare(old, moved, "node2").restart == ("nodes.node2.addresses",)
    slower = cluster(BASE.replace("timeout: 1.0", "timeout: 3.0"))
    ch = compare(old, slower, "node1")
    assert (ch.live, ch.restart) == (False, ("heartbeat.timeout",))
    assert "heartbeat.timeout changed" in ch.summary()


def test_the_etcd_witness_changes_at_restart() -> None:
    old = cluster(BASE)
    etcd = {"endpoints": ["https://10.0.9.1:2379"], "ca": "ca", "cert": "c", "key": "k"}
    with_etcd = Cluster.model_validate(old.model_dump(mode="json") | {"etcd": etcd})
    assert compare(old, with_etcd, "node1").restart == ("etcd",)
    moved = Cluster.model_validate(
        old.model_dump(mode="json") | {"etcd": etcd | {"endpoints": ["https://10.0.9.2:2379"]}}
    )
    ch = compare(with_etcd, moved, "node1")
    assert (ch.live, ch.restart) == (False, ("etcd.endpoints",))


def test_a_renamed_cluster_or_a_node_removing_itself_is_refused() -> None:
    old = cluster(BASE)
    ch = compare(old, cluster(BASE.replace("cluster: shop", "cluster: other")), "node1")
    assert "that is another cluster" in ch.refused[0]
    ch = compare(old, cluster(remove_node(BASE, "f", "node1")), "node1")
    assert "node1 is not in it: a node cannot remove itself" in ch.refused[0]


def test_edits_keep_the_operators_comments_and_are_checked_by_the_loader(tmp_path: Path) -> None:
    text = BASE.replace("nodes:\n", "nodes:  # our two servers\n")
    grown = add_node(text, "f", "node3", {"lan": "10.0.1.3", "repl": "10.0.2.3"})
    assert "nodes:  # our two servers" in grown
    assert "# Shared secret authenticating heartbeats" in grown
    (tmp_path / "cluster.key").write_text(new_secret())
    (tmp_path / "cluster.key").chmod(0o600)
    cf = load_cluster_text(grown, tmp_path / "cluster.yaml")
    assert list(cf.config.nodes) == ["node1", "node2", "node3"]
    assert remove_node(grown, "f", "node3").replace("nodes:  # our two servers", "") == (
        text.replace("nodes:  # our two servers", "")
    )
    flow = "cluster: x\nnetworks: {n: {}}\nnodes: {a: {addresses: {n: 1.1.1.1}}}\n"
    assert "b: {addresses: {n: 1.1.1.2}}" in add_node(flow, "f", "b", {"n": "1.1.1.2"})
    with pytest.raises(EditError, match="node node2 is already in the cluster"):
        add_node(BASE, "f", "node2", {"lan": "10.0.1.9"})
    with pytest.raises(EditError, match="no node node9 in the cluster; nodes: node1, node2"):
        remove_node(BASE, "f", "node9")
    with pytest.raises(EditError, match="no `nodes:` mapping"):
        add_node("- a\n", "f", "b", {})


def test_heartbeat_peers_are_reconfigured_in_place() -> None:
    settings = Settings(
        "shop", b"k" * 32, "node1", 0.2, 1.0, {"node2": {"lan": "10.0.1.2"}}, ("lan",)
    )
    e = Engine(settings, boot=b"b" * 8, seq=0, now=0.0)
    alive = m.Peer(
        "node2", ("lan",), m.PeerState.ALIVE, since=5.0, links={"lan": m.Link(True, 9.0, 7)}
    )
    e.peers["node2"] = alive
    e.reconfigure({"node2": {"lan": "10.0.1.2"}, "node3": {"lan": "10.0.1.3"}}, now=10.0)
    assert e.peers["node2"] is alive  # kept as it is: never lost, never re-learnt
    assert e.peers["node3"].state is m.PeerState.UNKNOWN
    assert {o.address for o in e.outgoing(10.0)} == {"10.0.1.2", "10.0.1.3"}
    e.reconfigure({"node3": {"lan": "10.0.1.3"}}, now=11.0)
    assert list(e.peers) == ["node3"]
    assert {o.peer for o in e.outgoing(11.0)} == {"node3"}


MIRROR = """kind: mirror
nodes: [node1, node2]
replication:
  dirs: [{path: /srv/web}]
  port: 7400
split_brain:
  witness: {addresses: [10.0.1.9]}
health_probe: {port: 9010}
"""


def mirror(tmp_path: Path, cfg: Cluster) -> ModuleFile:
    d = tmp_path / "web"
    d.mkdir()
    (d / "module.yaml").write_text(MIRROR)
    return load_module(d, cfg)


def test_every_port_with_who_listens_who_reaches_it_and_its_rules(tmp_path: Path) -> None:
    cfg = cluster(BASE)
    uses = {u.what: u for u in cluster_ports(cfg, [mirror(tmp_path, cfg)])}
    assert list(uses) == [
        "heartbeats",
        "node API",
        "join",
        "health probe of module web",
        "replication of module web",
        "witness of module web",
    ]
    assert (uses["heartbeats"].protocol, uses["heartbeats"].port) == ("udp", 7350)
    assert (uses["node API"].protocol, uses["node API"].port) == ("tcp", 7351)
    repl = uses["replication of module web"]
    assert repl.listen == (("node1", "10.0.1.1"), ("node2", "10.0.1.2"))
    assert "mutual TLS" in repl.auth
    assert uses["witness of module web"].listen == (("witness", "10.0.1.9"),)
    rules = nftables(list(uses.values()), "node2", "shop")
    assert "table inet hakit_ports {" in rules
    assert (
        "ip daddr { 10.0.1.2 } ip saddr { 10.0.1.1, 10.0.2.1 } tcp dport 7400 accept "
        'comment "replication of module web"'
    ) in rules
    assert "udp dport { 7350 } drop" in rules
    assert "tcp dport { 7351, 7352, 7400 } drop" in rules  # not the health probe's 9010
    assert 'tcp dport 9010 accept comment "health probe of module web"' in rules
    assert uses["health probe of module web"].listen == (("node1", "0.0.0.0"), ("node2", "0.0.0.0"))
    fw = firewalld(list(uses.values()), "node2", "shop", "internal")
    assert (
        'firewall-cmd --permanent --zone=internal --add-rich-rule=\'rule family="ipv4" source '
        'address="10.0.1.1" port port="7400" protocol="tcp" accept\''
    ) in fw
    assert "firewall-cmd --permanent --zone=internal --add-port=9010/tcp" in fw
    assert fw.endswith("firewall-cmd --reload\n")


def test_the_etcd_witness_is_reached_on_its_endpoints_and_opens_no_port(tmp_path: Path) -> None:
    cfg = Cluster.model_validate(
        cluster(BASE).model_dump(mode="json")
        | {
            "etcd": {
                "endpoints": ["https://10.0.9.1:2379", "https://10.0.9.2:2379", "https://e3:2479"],
                "ca": "ca",
                "cert": "c",
                "key": "k",
            }
        }
    )
    d = tmp_path / "db"
    d.mkdir()
    (d / "module.yaml").write_text("kind: mirror\nnodes: [node1, node2]\nsplit_brain: {etcd: {}}\n")
    uses = [u for u in cluster_ports(cfg, [load_module(d, cfg)]) if u.what.startswith("etcd")]
    assert [(u.protocol, u.port, u.listen) for u in uses] == [
        ("tcp", 2379, (("etcd", "10.0.9.1"), ("etcd", "10.0.9.2"))),
        ("tcp", 2479, (("etcd", "e3"),)),
    ]
    assert "2379" not in nftables(uses, "node1", "shop")  # nothing listens on a node
