"""The etcd witness in a real lab: a 3-member etcd (Debian's etcd 3.4) on client1, TLS both ways,
two mirror nodes whose `cluster.yaml` points at it, real daemons and real partitions.

The same observer as the hakit witness's lab test samples, every 100 ms, which nodes hold the
module's VIP and which say they are primary: no sample may show two.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hakit.lab.lab import Lab
from hakit.tls import identity
from hakit.waiting import wait_until
from tests.etcd.cluster import EtcdCluster, etcd_argv
from tests.lab.modules import lab_up, removed_after, sh
from tests.lab.test_mirror_lab import Module
from tests.lab.test_witness_lab import Observer, _zombie

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
    pytest.mark.skipif(not EtcdCluster.available(), reason="Debian's etcd-server is not installed"),
]

LAB = "tetcd"
ETCD_HOST = "10.100.1.101"  # client1
MEMBERS = {f"etcd{i}": (2379 + 100 * i, 2380 + 100 * i) for i in (1, 2, 3)}  # client, peer
CA_NAME = "etcd-lab"


def _data(name: str) -> Path:
    return Path(f"/tmp/etcdw-{LAB}-{name}")


class Etcd:
    """Three etcd members in client1 (own ports, own data folder), killed by PID at the end."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.dir = lab.host_path("client1", "/srv/etcd")
        self.dir.mkdir(parents=True, exist_ok=True)
        secret = os.urandom(32)
        for name in MEMBERS:
            ident = identity(secret, CA_NAME, name, (ETCD_HOST,))
            (self.dir / f"{name}.crt").write_bytes(ident.cert_pem)
            (self.dir / f"{name}.key").write_bytes(ident.key_pem)
            (self.dir / f"{name}.key").chmod(0o600)
        (self.dir / "ca.crt").write_text(ident.ca_pem)
        for node in ("node1", "node2"):
            mine = identity(secret, CA_NAME, node)
            d = lab.host_path(node, "/etc/hakit/etcd")
            d.mkdir(parents=True, exist_ok=True)
            (d / "ca.crt").write_text(mine.ca_pem)
            (d / "node.crt").write_bytes(mine.cert_pem)
            (d / "node.key").write_bytes(mine.key_pem)
            (d / "node.key").chmod(0o600)
        self.pids: list[int] = []
        peers = {name: (ETCD_HOST, peer) for name, (_, peer) in MEMBERS.items()}
        for name, (client, _) in MEMBERS.items():
            shutil.rmtree(_data(name), ignore_errors=True)
            files = ("/srv/etcd/ca.crt", f"/srv/etcd/{name}.crt", f"/srv/etcd/{name}.key")
            argv = etcd_argv(name, (ETCD_HOST, client), peers, _data(name), files)
            self.pids.append(lab.spawn("client1", argv, log=self.dir / f"{name}.log"))
        wait_until(self.healthy, 30, "a healthy etcd in client1")

    @property
    def endpoints(self) -> list[str]:
        return [f"https://{ETCD_HOST}:{c}" for c, _ in MEMBERS.values()]

    def healthy(self) -> bool:
        d = "/srv/etcd"
        out = sh(
            self.lab,
            "client1",
            f"etcdctl --endpoints={','.join(self.endpoints)} --cacert={d}/ca.crt "
            f"--cert={d}/etcd1.crt --key={d}/etcd1.key endpoint health 2>&1",
            check=False,
        )
        return out.count("is healthy") == len(MEMBERS)

    def stop(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in self.pids:
            wait_until(lambda pid=pid: _zombie(pid), 10, "etcd killed")  # type: ignore[misc]
        for name in MEMBERS:
            shutil.rmtree(_data(name), ignore_errors=True)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """The cluster's `etcd:` section is written before the daemons start."""
    with lab_up(LAB, 2, 2, 1, daemon=False) as lab:
        etcd = Etcd(lab)
        try:
            section = (
                "etcd:\n"
                f"  endpoints: [{', '.join(etcd.endpoints)}]\n"
                "  ca: etcd/ca.crt\n  cert: etcd/node.crt\n  key: etcd/node.key\n"
            )
            for node in ("node1", "node2"):
                path = lab.host_path(node, "/etc/hakit/cluster.yaml")
                path.write_text(path.read_text() + section)
            lab.start_daemons(("node1", "node2"))
            yield lab
        finally:
            etcd.stop()


@pytest.fixture
def watched(lab: Lab, tmp_path: Path) -> Iterator[Module]:
    with removed_after(lambda **options: Module(lab, tmp_path, **options)) as make:
        m = make(extra="split_brain:\n  etcd: {{ttl: 1.0, grace: 0.5}}\n")
        try:
            m.first_start()
            obs = Observer(m)
            try:
                yield m
            finally:
                obs.stop()
        finally:
            for c in lab.cuts():
                lab.heal(c.a, c.b, c.network)
    assert obs.samples > 20
    assert obs.both == [], obs.both


def test_a_split_between_the_nodes_keeps_the_primary_holding_the_etcd_lease(
    watched: Any,
) -> None:
    m = watched
    m.lab.cut("node1", "node2")
    m.wait("node1", "ALONE ready", 15)
    wait_until(
        lambda: "grants the role to node1" in str(m.state("node2")["modules"][m.name]),
        15,
        "node2 refused by etcd",
    )
    assert m.me("node2") == "SECOND transient"
    assert m.served_by() == "node1"
    m.lab.heal("node1", "node2")
    m.pair("PRIM ready", "SECOND ready", 60)


def test_a_primary_cut_from_etcd_and_its_peer_steps_down_and_the_other_takes_over(
    watched: Any,
) -> None:
    m = watched
    m.lab.cut("node1", "node2")
    m.lab.cut("node1", "client1")  # node1 reaches neither its peer nor etcd
    m.pair("WAIT not-ready", "ALONE ready", 20)
    assert m.served_by() == "node2"
    m.lab.heal("node1")
    m.pair("SECOND ready", "PRIM ready", 60)


def test_asymmetric_the_primary_loses_etcd_first(watched: Any) -> None:
    m = watched
    m.lab.cut("node1", "client1")  # the primary still sees node2: nothing happens
    wait_until(lambda: "still primary while node2 vouches" in m.log("node1"), 15, "warning")
    assert (m.me("node1"), m.me("node2")) == ("PRIM ready", "SECOND ready")
    m.lab.cut("node1", "node2")  # now node2 sees only etcd: it takes over, node1 stops
    m.pair("WAIT not-ready", "ALONE ready", 20)
    m.lab.heal("node1")
    m.pair("SECOND ready", "PRIM ready", 60)
