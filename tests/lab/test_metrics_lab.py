"""A real Prometheus (Debian's `prometheus`) scrapes two lab nodes' `/metrics` over HTTPS, as an
operator would configure it (docs/metrics.md: `scheme: https`, the cluster CA as `ca_file`, no
client certificate, no token), with the shipped alert rules loaded.

Prometheus runs inside client1 (its own loopback for its HTTP API, the lab's networks to the
nodes), with its own storage folder; it is started and killed by PID. The test asks its HTTP API
what it stored: a mirror module's states, replication connected, then after a power cut of the
primary the failover counted by the node that took over, the lost peer, and the alerts pending.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hakit.lab.lab import Lab, alive_pid
from hakit.waiting import wait_until
from tests.lab.modules import lab_up
from tests.lab.test_mirror_lab import Module

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
    pytest.mark.skipif(
        not shutil.which("prometheus"), reason="needs Prometheus (Debian package prometheus)"
    ),
]

LAB = "mx1"
ALERTS = Path(__file__).resolve().parents[2] / "docs" / "prometheus" / "hakit-alerts.yml"
API = "http://127.0.0.1:9090/api/v1/query"


class Prometheus:
    """`prometheus` in client1, scraping every node every second."""

    def __init__(self, lab: Lab, nodes: tuple[str, ...]) -> None:
        self.lab = lab
        self.dir = lab.host_path("client1", "/srv/prometheus")
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "data").mkdir(parents=True)
        # the cluster CA, as a user gives it to Prometheus
        r = lab.exec("node1", ["hakit", "cluster", "ca"], capture=True)
        assert r.stdout.startswith("-----BEGIN CERTIFICATE-----"), r.stderr
        (self.dir / "ca.pem").write_text(r.stdout)
        shutil.copy(ALERTS, self.dir / "hakit-alerts.yml")
        targets = [f"{lab.address(n, 1)}:7351" for n in nodes]
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"}
            | {"evaluation_interval": "1s"},
            "rule_files": ["/srv/prometheus/hakit-alerts.yml"],
            "scrape_configs": [
                {
                    "job_name": "hakit",
                    "scheme": "https",
                    "tls_config": {"ca_file": "/srv/prometheus/ca.pem"},
                    "static_configs": [{"targets": targets}],
                }
            ],
        }
        (self.dir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        argv = [
            "prometheus",
            "--config.file=/srv/prometheus/prometheus.yml",
            "--storage.tsdb.path=/srv/prometheus/data",
            "--web.listen-address=127.0.0.1:9090",
        ]
        self.pid: int | None = lab.spawn("client1", argv, log=self.dir / "prometheus.log")
        wait_until(self.ready, 20, "Prometheus to answer")

    curl_unix = ("curl", "-sf", "--max-time", "5", "--unix-socket", "/var/lib/hakit/hakit.sock")

    def ready(self) -> bool:
        assert self.pid is not None
        assert alive_pid(self.pid), f"Prometheus exited: {self.log()}"
        r = self.lab.exec(
            "client1",
            ["curl", "-sf", "--max-time", "2", "http://127.0.0.1:9090/-/ready"],
            check=False,
            capture=True,
        )
        return r.returncode == 0

    def query(self, q: str) -> list[dict[str, Any]]:
        r = self.lab.exec(
            "client1",
            ["curl", "-sf", "--max-time", "5", "--get", "--data-urlencode", f"query={q}", API],
            capture=True,
        )
        answer = json.loads(r.stdout)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]  # type: ignore[no-any-return]

    def values(self, q: str, by: str = "node") -> dict[str, float]:
        return {s["metric"].get(by, ""): float(s["value"][1]) for s in self.query(q)}

    def log(self) -> str:
        p = self.dir / "prometheus.log"
        return p.read_text()[-3000:] if p.exists() else ""

    def stop(self) -> None:
        pid, self.pid = self.pid, None
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not alive_pid(pid), 10, "Prometheus killed")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with lab_up(LAB, 2, 2, 1) as lab:
        yield lab


@pytest.fixture
def prometheus(lab: Lab) -> Iterator[Prometheus]:
    p = Prometheus(lab, lab.nodes)
    try:
        yield p
    finally:
        p.stop()


def test_prometheus_scrapes_the_nodes_and_sees_a_failover(
    lab: Lab, prometheus: Prometheus, tmp_path: Path
) -> None:
    m = Module(
        lab,
        tmp_path,
        extra="replication:\n  port: {m.port_repl}\n  dirs:\n    - path: {m.root}/data",
        mkdirs=["data"],
    )
    m.first_start()
    p, mod = prometheus, f'module="{m.name}"'

    def scraped() -> bool:
        return p.values('up{job="hakit"}', "instance") == {
            f"{lab.address(n, 1)}:7351": 1.0 for n in lab.nodes
        }

    wait_until(scraped, 15, f"Prometheus to scrape both nodes over HTTPS: {p.log()}")
    states = f"hakit_module_state{{{mod}}} == 1"
    wait_until(
        lambda: p.values(states, "state") == {"PRIM": 1.0, "SECOND": 1.0}, 15, "states scraped"
    )
    assert {s["metric"]["node"]: s["metric"]["state"] for s in p.query(states)} == {
        "node1": "PRIM",
        "node2": "SECOND",
    }
    wait_until(
        lambda: p.values(f"hakit_replication_connected{{{mod}}}") == {"node1": 1.0, "node2": 1.0},
        15,
        "replication connected on both",
    )
    assert p.values(f'hakit_peer_up{{cluster="{LAB}"}}') == {"node1": 1.0, "node2": 1.0}

    lab.poweroff("node1")
    m.wait("node2", "ALONE ready", 10)
    failovers = f'hakit_module_failovers_total{{{mod}, reason="peer-lost"}}'
    wait_until(lambda: p.values(failovers) == {"node2": 1.0}, 15, "the failover counted")
    assert p.values('hakit_peer_up{node="node2", peer="node1"}') == {"node2": 0.0}
    # the shipped rules see it too: node2 serves alone, node1 is down (pending: `for:` runs)
    alerts = 'ALERTS{alertname=~"HakitSecondaryLost|HakitNodeDown"}'
    wait_until(
        lambda: set(p.values(alerts, "alertname")) == {"HakitSecondaryLost", "HakitNodeDown"},
        15,
        "the alerts pending",
    )
