"""`hakit config apply --all` between real daemons on loopback: checked on every node before
anything changes, applied live or left for the next restart, SIGHUP; `remove-node` refused
while a module lists the node."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from hakit.waiting import wait_until
from tests.daemon.conftest import Cluster, Node
from tests.daemon.test_operator_commands import MODULE, installed, module_folder


def config_file(node: Node) -> Path:
    return node.root / "etc" / "cluster.yaml"


def edit(node: Node, old: str, new: str) -> str:
    path = config_file(node)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return text


def test_nothing_changes_anywhere_when_one_node_fails_its_check(
    loopback_cluster: Callable[[int], Cluster], tmp_path: Path
) -> None:
    c = loopback_cluster(2)
    folder = module_folder(tmp_path)
    (folder / "module.yaml").write_text(
        MODULE + "replication: {dirs: [{path: /srv/apply-test}], port: 7399}\n"
    )
    r = c["node2"].hakit("module", "install", str(folder))  # on node2 only
    assert r.returncode == 0, r.stderr
    join_port = next(
        line.split(":")[1].split()[0]
        for line in config_file(c["node1"]).read_text().splitlines()
        if "join_port:" in line
    )
    before2 = config_file(c["node2"]).read_text()
    edit(c["node1"], f"join_port: {join_port}", "join_port: 7399")
    r = c["node1"].hakit("config", "apply", "--all")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "nothing was changed on any node: the check failed on node2:" in r.stderr
    assert "node2: module web:" in r.stderr
    assert "replication.port = 7399: is the cluster's join port" in r.stderr
    assert "FAILED" in r.stdout
    assert config_file(c["node2"]).read_text() == before2
    assert c["node1"].state()["daemon"]["config_pending_restart"] == []


def test_own_settings_are_written_and_taken_at_the_next_restart(
    loopback_cluster: Callable[[int], Cluster],
) -> None:
    c = loopback_cluster(2)
    edit(c["node1"], "timeout: 1.0", "timeout: 2.0")
    r = c["node1"].hakit("config", "apply", "--all")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("written; takes heartbeat.timeout when its daemon restarts") == 2
    assert "timeout: 2.0" in config_file(c["node2"]).read_text()
    for node in c.nodes.values():
        st = node.state()
        assert st["daemon"]["config_pending_restart"] == ["heartbeat.timeout"]
        assert st["heartbeat"]["timeout"] == 1.0  # still running with the old one
    shown = c["node2"].hakit("state").stdout
    assert "cluster.yaml changed heartbeat.timeout: taken when this daemon restarts" in shown


def test_sighup_takes_cluster_yaml_as_it_is_and_refuses_a_broken_one(
    loopback_cluster: Callable[[int], Cluster],
) -> None:
    c = loopback_cluster(2)
    node = c["node1"]
    assert node.proc is not None
    text = config_file(node).read_text()
    config_file(node).write_text(text + "  node3:\n    addresses:\n      lo: 127.0.0.13\n")
    os.kill(node.proc.pid, signal.SIGHUP)
    wait_until(lambda: "node3" in node.state()["nodes"], 10, "node3 taken on SIGHUP")
    assert node.state()["nodes"]["node2"]["alive"]
    config_file(node).write_text(text + "  node3: {}\n")
    os.kill(node.proc.pid, signal.SIGHUP)
    wait_until(lambda: any(e["kind"] == "config-error" for e in node.events()), 10, "the refusal")
    [err] = [e for e in node.events() if e["kind"] == "config-error"]
    assert "not reloaded, the daemon keeps its configuration" in err["message"]
    assert "nodes.node3" in err["message"]
    assert "node3" in node.state()["nodes"]


def test_remove_node_is_refused_while_a_module_lists_it(
    loopback_cluster: Callable[[int], Cluster], tmp_path: Path
) -> None:
    c = loopback_cluster(3)
    installed(c, tmp_path)  # web on node1 and node2, installed on all three
    before = config_file(c["node3"]).read_text()
    r = c["node3"].hakit("cluster", "remove-node", "node2")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "node2 is still a node of module web (installed on node1, node3)" in r.stderr
    assert "nothing was changed" in r.stderr
    assert config_file(c["node3"]).read_text() == before
    r = c["node3"].hakit("cluster", "remove-node", "node3")
    assert "node3 is this node: run `hakit cluster remove-node node3` on another member" in (
        r.stderr
    )
