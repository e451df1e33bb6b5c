"""The real daemon, real heartbeats over UDP on loopback: forming, loss, restarts, CLI errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hakit.waiting import wait_until
from tests.daemon.conftest import Cluster, Node


def all_alive(node: Node, n: int) -> bool:
    st = node.state()
    return sum(1 for v in st["nodes"].values() if v["alive"]) == n


def test_cluster_forms_and_state_follows_contract(
    loopback_cluster: Callable[[int], Cluster],
) -> None:
    c = loopback_cluster(3)
    for node in c.nodes.values():
        wait_until(lambda node=node: all_alive(node, 3), 10, f"{node.name} to see 3 alive")  # type: ignore[misc]
    st = c["node1"].state()
    assert st["cluster"] == "loop"
    assert st["node"] == "node1"
    assert st["modules"] == {}
    assert st["nodes"]["node2"]["networks"] == {"lo": True}
    text = c["node1"].hakit("state")
    assert text.returncode == 0
    assert "node3" in text.stdout
    assert "alive" in text.stdout


def test_killed_node_is_lost_within_timeout_plus_one_pulse(
    loopback_cluster: Callable[[int], Cluster],
) -> None:
    c = loopback_cluster(3)
    for node in c.nodes.values():
        wait_until(lambda node=node: all_alive(node, 3), 10, "cluster to form")  # type: ignore[misc]
    killed_at = time.time()
    c["node3"].kill()
    for name in ("node1", "node2"):
        node = c[name]
        wait_until(lambda node=node: not node.state()["nodes"]["node3"]["alive"], 5, "loss")  # type: ignore[misc]
        lost = [e for e in node.events() if e["kind"] == "peer-lost" and e["peer"] == "node3"]
        assert lost, node.events()
        assert lost[-1]["at"] - killed_at <= c.timeout + c.interval
        assert "node3 lost: no heartbeat on lo for" in lost[-1]["message"]


def test_heartbeat_process_is_restarted_without_peers_noticing(
    loopback_cluster: Callable[[int], Cluster],
) -> None:
    c = loopback_cluster(2)
    wait_until(lambda: all_alive(c["node2"], 2), 10, "cluster to form")
    hb_pid = c["node1"].state()["daemon"]["heartbeat_pid"]
    os.kill(hb_pid, signal.SIGKILL)
    wait_until(
        lambda: c["node1"].state()["daemon"]["heartbeat_pid"] not in (None, hb_pid), 5, "restart"
    )
    wait_until(lambda: all_alive(c["node1"], 2), 5, "node1 to see node2 again")
    time.sleep(c.timeout + c.interval)  # observation window: node2 must not have lost node1
    assert not [e for e in c["node2"].events() if e["kind"] == "peer-lost"]
    kinds = [e["kind"] for e in c["node1"].events()]
    assert "heartbeat-restart" in kinds


def test_sigterm_stops_cleanly(loopback_cluster: Callable[[int], Cluster]) -> None:
    c = loopback_cluster(2)
    node = c["node1"]
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(10) == 0
    assert not (node.root / "var" / "hakit.sock").exists()
    r = node.hakit("state")
    assert r.returncode == 3
    assert "the hakit daemon is not running on this node" in r.stderr


def test_second_daemon_on_same_node_is_refused(loopback_cluster: Callable[[int], Cluster]) -> None:
    c = loopback_cluster(2)
    r = c["node1"].hakit("daemon", "--node", "node1")
    assert r.returncode == 1
    assert "another hakit daemon is already running on this node" in r.stderr


def test_daemon_refuses_bad_config(tmp_path: Path) -> None:
    node = Node("node1", tmp_path)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "cluster.yaml").write_text("cluster: x\nnodes: {}\n")
    r = node.hakit("daemon")
    assert r.returncode == 2
    assert "networks: required key is missing" in r.stderr
    assert not (tmp_path / "var" / "hakit.sock").exists()


def test_config_check_and_cluster_init(tmp_path: Path) -> None:
    node = Node("n", tmp_path)
    r = node.hakit(
        "cluster",
        "init",
        "--name",
        "shop",
        "--node",
        "alpha:lan=192.168.1.10,repl=10.0.0.10",
        "--node",
        "beta:lan=192.168.1.11,repl=10.0.0.11",
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "etc" / "cluster.key").stat().st_mode & 0o777 == 0o600
    ok = node.hakit("config", "check")
    assert ok.returncode == 0, ok.stderr
    assert "OK — cluster shop, 2 nodes (alpha, beta), 2 network(s)" in ok.stdout
    again = node.hakit(
        "cluster", "init", "--name", "x", "--node", "a:n=1.1.1.1", "--node", "b:n=1.1.1.2"
    )
    assert again.returncode == 1
    assert "already exists; use --force" in again.stderr
    cfg = tmp_path / "etc" / "cluster.yaml"
    cfg.write_text(cfg.read_text().replace("timeout: 1.0", "timeout: 0.1"))
    bad = node.hakit("config", "check")
    assert bad.returncode == 2
    assert "heartbeat.timeout = 0.1: must be at least 3 × heartbeat.interval" in bad.stderr
    assert sys.executable


def test_a_frozen_daemon_does_not_look_dead(loopback_cluster: Callable[[int], Cluster]) -> None:
    """Timing isolation: the daemon's main process stalls (SIGSTOP) for 3 timeouts; its
    heartbeat process keeps the node alive for its peers."""
    c = loopback_cluster(2)
    wait_until(lambda: all_alive(c["node2"], 2), 10, "cluster to form")
    main = c["node1"].proc
    assert main is not None
    os.kill(main.pid, signal.SIGSTOP)
    try:
        time.sleep(3 * c.timeout)
    finally:
        os.kill(main.pid, signal.SIGCONT)
    assert not [e for e in c["node2"].events() if e["kind"] == "peer-lost"]
    assert c["node2"].state()["nodes"]["node1"]["alive"] is True
    wait_until(lambda: all_alive(c["node1"], 2), 5, "node1 answering again")


def test_cpu_saturation_causes_no_false_loss(loopback_cluster: Callable[[int], Cluster]) -> None:
    """Four CPU hogs (twice the cores) for 4 s: no peer is lost."""
    c = loopback_cluster(3)
    for name in c.nodes:
        wait_until(lambda name=name: all_alive(c[name], 3), 10, "cluster to form")  # type: ignore[misc]
    formed = time.time()
    hog = "import time\nend = time.monotonic() + 4\nwhile time.monotonic() < end: pass\n"
    hogs = [subprocess.Popen([sys.executable, "-c", hog]) for _ in range(4)]
    try:
        for h in hogs:
            h.wait(30)
    finally:
        for h in hogs:
            if h.poll() is None:
                h.kill()
                h.wait()
    for node in c.nodes.values():
        lost = [e for e in node.events() if e["kind"] == "peer-lost" and e["at"] > formed]
        assert not lost, node.name
