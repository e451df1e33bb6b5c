"""The health probe of a module served by real daemons on loopback: what a cloud load balancer
sees through a failover, and a flood of bad probes that changes nothing for the daemon."""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from hakit.waiting import wait_until
from tests.daemon.conftest import Cluster, free_tcp_port


def probe(address: str, port: int) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/health", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return 0, {}


def test_the_probe_says_which_node_serves_through_a_switch(
    loopback_cluster: Callable[[int], Cluster], tmp_path: Path
) -> None:
    c = loopback_cluster(2)
    port = free_tcp_port()
    folder = tmp_path / "web"
    folder.mkdir()
    (folder / "module.yaml").write_text(
        "kind: mirror\nnodes: [node1, node2]\nscripts: {start_timeout: 10, stop_timeout: 10}\n"
        f"health_probe: {{port: {port}, network: lo}}\n"
    )
    n1, n2 = c["node1"], c["node2"]
    assert n1.hakit("module", "install", str(folder), "--all").returncode == 0
    a1, a2 = "127.0.0.11", "127.0.0.12"
    wait_until(lambda: probe(a1, port)[0] == 503 and probe(a2, port)[0] == 503, 15, "listening")
    assert probe(a1, port) == (
        503,
        {"module": "web", "node": "node1", "state": "STOP", "status": "not-ready"},
    )
    assert n1.hakit("prim", "web").returncode == 0
    assert n2.hakit("second", "web").returncode == 0
    wait_until(lambda: probe(a1, port)[0] == 200, 15, "node1 serving")
    wait_until(lambda: probe(a2, port)[1].get("state") == "SECOND", 15, "node2 secondary")
    assert probe(a2, port)[0] == 503

    # a flood of garbage, idle and oversized connections: the daemon does not notice
    held = []
    for i in range(40):
        s = socket.create_connection((a1, port), timeout=5)
        held.append(s)
        with contextlib.suppress(OSError):  # the probe may close it at once (limits)
            s.sendall(b"\x00" * 100 if i % 2 else b"GET /health HTTP/1.1\r\nX: " + b"a" * 9000)
    assert n1.hakit("state", "--json").returncode == 0
    for s in held:
        s.close()

    assert n1.hakit("swap", "web").returncode == 0
    wait_until(lambda: probe(a2, port)[0] == 200, 30, "node2 serving after the swap")
    wait_until(lambda: probe(a1, port)[0] == 503, 15, "node1 no longer serving")
    wait_until(lambda: probe(a1, port)[1].get("state") == "SECOND", 15, "node1 secondary")
    events = [e for e in n1.events() if e.get("module") == "web"]
    assert any("health probe listening on 127.0.0.11 port" in e["message"] for e in events)
