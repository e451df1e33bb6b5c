"""Short chaos campaigns with fixed seeds (`hakit lab chaos`): real daemons, real faults, the
invariants checked from outside the nodes; 0 violations and the report written.

The seeds are chosen so that each campaign meets every fault kind of its scenario at least
once (tests/unit/test_chaos.py checks the schedule itself): with a witness all twelve in 14
rounds, without a witness and on the farm each of theirs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from hakit.lab.chaos.campaign import Campaign
from hakit.lab.chaos.schedule import ALL_KINDS, SCENARIOS, schedule
from hakit.lab.lab import Lab

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
]

LAB = "tchaos"


def campaign(scenario: str, seed: int, rounds: int, report: Path) -> Campaign:
    lab = Lab(LAB)
    lab.down(missing_ok=True)
    c = Campaign(lab, scenario, seed, rounds, report=report, say=lambda *_: None)
    try:
        c.run()
    finally:
        lab.down(missing_ok=True)
    return c


def check_report(c: Campaign, report: Path, rounds: int) -> dict[str, object]:
    assert c.violations == [], (report / "report.txt").read_text()
    assert len(c.results) == rounds
    for name in ("report.json", "report.txt", "timeline.svg", "ledger"):
        assert (report / name).is_file(), name
    summary: dict[str, object] = json.loads((report / "report.json").read_text())
    assert summary["violations"] == []
    assert summary["reproduce"] is None
    assert "<svg" in (report / "timeline.svg").read_text()
    return summary


def test_mirror_with_witness_keeps_every_acknowledged_record_and_one_primary(
    tmp_path: Path,
) -> None:
    rounds = len(ALL_KINDS) + 2
    assert {f.kind for f in schedule(687, rounds, "mirror-witness")} == set(ALL_KINDS)
    c = campaign("mirror-witness", 687, rounds, tmp_path)
    summary = check_report(c, tmp_path, rounds)
    acked = c.results[-1].acked
    assert acked > 0
    assert c.results[-1].present == acked  # every acknowledged record read back on the primary
    assert summary["acknowledged_checked"] == acked
    assert any("took over" in r.decision for r in c.results)  # faults that forced a failover


@pytest.mark.parametrize(
    ("scenario", "seed"),
    [("mirror", 6), ("farm", 167)],
    ids=["mirror-without-witness", "farm"],
)
def test_every_acknowledged_record_or_request_through_every_fault_kind(
    tmp_path: Path, scenario: str, seed: int
) -> None:
    """Without a witness every acknowledged record kept; on the farm every request answered."""
    kinds = SCENARIOS[scenario]
    assert {f.kind for f in schedule(seed, len(kinds), scenario)} == set(kinds)
    c = campaign(scenario, seed, len(kinds), tmp_path)
    check_report(c, tmp_path, len(kinds))
    assert c.results[-1].acked > 0
    assert c.results[-1].present == c.results[-1].acked
