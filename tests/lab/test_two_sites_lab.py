"""Two sites: a mirror module in sync mode fails over and resynchronises across a link with
20 ms of added round-trip time (replication stream and heartbeats through delay proxies)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.config.model import DEFAULT_PORT
from hakit.lab.lab import Lab
from hakit.lab.slowlink import SlowLink
from tests.lab.modules import lab_up
from tests.lab.test_replication_lab import Replicated

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
]

LAB = "tsite"
RTT = 0.020


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(LAB, 2, 1, 1) as lab:
        yield lab


def test_sync_mirror_fails_over_and_resyncs_across_a_slow_link(lab: Lab, tmp_path: Path) -> None:
    m = Replicated(lab, tmp_path)
    repl_port = 7400 + int(m.name.removeprefix("data"))  # as Replicated writes it
    link = SlowLink(lab, RTT, tcp_ports=(repl_port,), udp_ports=(DEFAULT_PORT,))
    try:
        link.start("node1")
        link.start("node2")
        m.sh("node1", f"cd {m.dir} && for i in $(seq 8); do head -c 1M /dev/urandom > f$i; done")
        m.first_start()
        m.sh("node1", f"echo acknowledged > {m.dir}/committed && sync {m.dir}/committed")
        assert m.tree("node2") == m.tree("node1")
        # the stream and the heartbeats went through the proxies (both ways for heartbeats)
        assert link.redirected("node1") > 0
        assert link.redirected("node2") > 0

        lab.poweroff("node1")  # its proxy dies with it
        m.wait("node2", "ALONE ready", 30)
        assert m.sh("node2", f"cat {m.dir}/committed").strip() == "acknowledged"
        m.sh(
            "node2",
            f"cd {m.dir} && printf X | dd of=f3 bs=1 seek=5000 conv=notrunc "
            "status=none && echo new > g",
        )

        before = link.redirected("node2")
        lab.poweron("node1")
        link.start("node1")
        m.wait("node1", "SECOND ready", 90)  # node2 connected to node1 through its proxy
        assert link.redirected("node2") > before
        assert m.tree("node1") == m.tree("node2")
        assert "new" in m.sh("node1", f"cat {m.dir}/g")
        sent = [line for line in m.log("node2").splitlines() if "synchronised:" in line][-1]
        assert "KiB sent" in sent or " B sent" in sent, sent  # the changes, not 8 MiB
    finally:
        m.remove()
        link.remove()
