"""The pure parts of `hakit lab chaos`: the seeded schedule, the records, the invariant
checkers (fed clean and violating samples: each must be able to fail) and the report."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hakit.lab.chaos import invariants as inv
from hakit.lab.chaos.records import line, parse
from hakit.lab.chaos.report import RoundResult, timeline_svg, write_report
from hakit.lab.chaos.schedule import ALL_KINDS, DURATIONS, SCENARIOS, covering, schedule


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    a = schedule(42, 50, "mirror-witness")
    assert a == schedule(42, 50, "mirror-witness")
    assert a != schedule(43, 50, "mirror-witness")


def test_a_shorter_campaign_is_a_prefix_of_a_longer_one_so_a_round_reproduces() -> None:
    assert schedule(7, 12, "farm") == schedule(7, 40, "farm")[:12]


def test_faults_stay_within_the_kinds_and_bounds_of_their_scenario() -> None:
    for scenario, kinds in SCENARIOS.items():
        for f in schedule(3, 300, scenario):
            assert f.kind in kinds
            lo, hi = DURATIONS[f.kind]
            assert lo <= f.duration <= hi
            assert f.network in (1, 2)
            if scenario == "farm":
                assert f.target in ("node1", "node2")
            else:
                assert f.target in ("primary", "secondary")
        assert {f.kind for f in schedule(3, 300, scenario)} == set(kinds)
    # a short freeze stays under the heartbeat timeout, a long one over it
    assert DURATIONS["freeze-short"][1] < 1.0 < DURATIONS["freeze-long"][0]


def test_covering_finds_a_seed_whose_short_campaign_has_every_kind() -> None:
    rounds = len(ALL_KINDS) + 2
    seed = covering("mirror-witness", rounds)
    assert {f.kind for f in schedule(seed, rounds, "mirror-witness")} == set(ALL_KINDS)


def test_unknown_scenario_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        schedule(1, 3, "etcd")


def test_records_intact_are_counted_torn_or_altered_are_not() -> None:
    text = line(1) + line(2) + line(3)[:-5] + "\n" + line(4).replace("4 ", "5 ", 1) + line(2)
    present, bad = parse(text)
    assert present == {1: 1, 2: 2}
    assert bad == 2


def test_lost_records_flags_a_missing_or_corrupted_acknowledged_record() -> None:
    present, _ = parse(line(1) + line(2) + line(3))
    assert inv.lost_records([1, 2, 3], present, "node2") == []
    present, _ = parse(line(1) + line(3)[:10] + "\n")
    violations = inv.lost_records([1, 2, 3], present, "node2")
    assert violations == ["2 acknowledged records missing or corrupted on node2: 2, 3"]
    present, _ = parse(line(1) + line(1))
    assert inv.lost_records([1], present, "node1") == [
        "records present more than once on node1: [1]"
    ]


def test_acknowledgements_parsed_from_the_writer_log_a_torn_line_is_not_one() -> None:
    assert inv.parse_acked("1 node1 10.0\n2 node1 10.1\n3 node") == [1, 2]
    assert inv.ack_times("1 node1 10.0\n2 node1 10.5\n") == [10.0, 10.5]


def _s(t: float, *holders: str, **phases: str) -> inv.Sample:
    return inv.Sample(t, phases or {"node1": "prim", "node2": "second"}, holders)


def test_two_primaries_is_each_run_of_samples_where_two_nodes_hold_the_vip() -> None:
    clean = [_s(0.0, "node1"), _s(0.05), _s(0.1, "node2"), _s(0.15, "node2")]
    assert inv.two_primaries(clean) == []
    bad = [*clean, _s(0.2, "node1", "node2"), _s(0.25, "node1", "node2"), _s(0.3, "node2")]
    bad += [_s(0.35, "node1", "node2")]
    assert inv.two_primaries(bad) == [
        "0.200: node1 and node2 both primary (2 samples, 0.05 s)",
        "0.350: node1 and node2 both primary (1 samples, 0.00 s)",
    ]


def test_a_node_resumed_from_a_freeze_may_hold_the_vip_only_within_the_allowance() -> None:
    frozen = {"node1": "alone", "node2": inv.FROZEN}
    resumed = {"node1": "alone", "node2": "alone"}
    samples = [_s(0.0, "node1", **frozen), _s(0.05, "node1", **frozen)]
    samples += [_s(0.1, "node1", "node2", **resumed), _s(0.15, "node1", "node2", **resumed)]
    samples += [_s(0.2, "node1", **resumed)]
    assert inv.two_primaries(samples) == []
    assert inv.stale_holds(samples) == pytest.approx(0.05)
    late = [*samples[:2], _s(0.1, "node1", **resumed), _s(0.7, "node1", "node2", **resumed)]
    assert inv.two_primaries(late) == ["0.700: node1 and node2 both primary (1 samples, 0.00 s)"]
    assert inv.stale_holds(late) == 0.0


def test_a_reaction_is_a_daemon_changing_phase_not_what_the_campaign_did() -> None:
    before = {"node1": "prim", "node2": "second"}
    assert not inv.reacted(_s(1, node1=inv.OFF, node2="second"), before)
    assert not inv.reacted(_s(1, node1=inv.FROZEN, node2="second"), before)
    assert inv.reacted(_s(1, node1=inv.OFF, node2="promoting"), before)


def test_farm_every_request_answered() -> None:
    log = "1 node1 1 10.0 10.01\n2 node2 3 10.1 11.6\n3 node1 1 12.0 12.02\n"
    count, failed = inv.unanswered(log)
    assert (count, inv.farm_failures(failed)) == (3, [])
    count, failed = inv.unanswered(log + "4 - 40 13.0 -\n5 node1 1 33.0 33.1\n")
    assert count == 5
    assert inv.farm_failures(failed) == ["1 farm requests never answered: ['4']"]
    served, wait = inv.farm_round(log, 10.05, 12.5)
    assert served == {"node2": 1, "node1": 1}
    assert wait == pytest.approx(1.5)


def test_longest_gap_is_the_outage_of_the_round() -> None:
    assert inv.longest_gap([10.1, 10.2, 13.2, 13.3], 10.0, 14.0) == pytest.approx(3.0)
    assert inv.longest_gap([], 10.0, 12.0) == pytest.approx(2.0)  # nothing acknowledged


def test_tracebacks_in_a_log_are_violations() -> None:
    assert inv.tracebacks({"node1/hakit.log": "all fine\n"}) == []
    tb = "Traceback (most recent call last):\n  File x\nValueError\n"
    assert inv.tracebacks({"node1/daemon.out": tb}) == ["node1/daemon.out: 1 traceback(s)"]


def test_segments_make_runs_of_phases() -> None:
    samples = [
        _s(0, node1="second"),
        _s(1, node1="second"),
        _s(2, node1="prim"),
        _s(3, node1="prim"),
    ]
    assert inv.segments(samples, "node1") == [(0, 2, "second"), (2, 3, "prim")]


def test_report_files_and_the_reproduction_of_a_violation(tmp_path: Path) -> None:
    faults = schedule(5, 2, "mirror-witness")
    samples = [_s(100 + i * 0.05, "node1", node1="prim", node2="second") for i in range(40)]
    results = [
        RoundResult(faults[0], "node1", "done", 100.2, 100.5, 101.0, 0.3, "node1 stayed primary"),
        RoundResult(faults[1], "node2", "done", 101.1, 101.4, 101.9, None, "node2 took over"),
    ]
    results[1].violations = ["two primaries"]
    log = tmp_path / "hakit.log"
    log.write_text("x\n")
    write_report(
        tmp_path / "r",
        scenario="mirror-witness",
        seed=5,
        started=99.0,
        results=results,
        samples=samples,
        violations=["round 2: two primaries"],
        logs={"node1/hakit.log": log},
        extra={},
    )
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["reproduce"] == "hakit lab chaos --scenario mirror-witness --seed 5 --rounds 2"
    assert report["rounds"] == 2
    assert report["violations"] == ["round 2: two primaries"]
    assert (tmp_path / "r" / "logs" / "node1" / "hakit.log").read_text() == "x\n"
    assert "reproduce:" in (tmp_path / "r" / "report.txt").read_text()
    svg = ET.fromstring((tmp_path / "r" / "timeline.svg").read_text())
    rects = svg.findall("{http://www.w3.org/2000/svg}rect")
    assert len(rects) >= 2 + 2 + 7  # faults, a bar per node at least, the legend


def test_the_timeline_of_nothing_is_still_an_svg() -> None:
    ET.fromstring(timeline_svg([], [], ["node1"]))
