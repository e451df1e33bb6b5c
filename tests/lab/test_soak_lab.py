"""A short soak (`hakit lab soak`): a mirror with witness replicating at full speed, a farm under
traffic and a busy core, no fault: no false failover, every record and request accounted for,
the probes and histograms read from outside the nodes, the report written."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from hakit.lab.lab import Lab
from hakit.lab.soak.run import Soak

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
    pytest.mark.skipif(not shutil.which("nginx"), reason="the farm needs nginx"),
]

LAB = "tsoak"


def test_a_short_soak_counts_no_false_failover_and_reads_every_node(tmp_path: Path) -> None:
    lab = Lab(LAB)
    lab.down(missing_ok=True)
    soak = Soak(lab, 0.75, tmp_path, hogs=1, sample_every=3.0, say=lambda *_: None, warm_up=15.0)
    try:
        ok = soak.run()
    finally:
        lab.down(missing_ok=True)
    assert ok, soak.problems
    s = json.loads((tmp_path / "report.json").read_text())["summary"]
    assert s["false_failovers"] == 0
    assert s["bulk_mb_per_s"] > 0
    assert s["ledger_records_checked"] > 0
    assert s["farm_requests"] > 0
    assert s["farm_unanswered"] == 0
    for node in ("node1", "node2"):
        n = s["nodes"][node]
        assert n["memory_mib"]["last"] > 10  # the daemon and its heartbeat process
        assert n["descriptors"]["last"] > 5
        assert n["event_loop_lag_s"]["count"] > 100  # ten a second after the warm-up
        gaps = n["heartbeat_gaps_s"]
        assert {"all", "node1/net1", "node2/net1"} & set(gaps)
        assert gaps["all"]["count"] > 100  # two networks, five a second
        assert gaps["all"]["p50"] <= 0.25
    assert "false failovers: 0" in (tmp_path / "report.txt").read_text()
    assert len((tmp_path / "probes.jsonl").read_text().splitlines()) >= 10
