"""The soak's analysis (hakit.lab.soak.analysis): pure functions fed clean and bad samples."""

from __future__ import annotations

import pytest

from hakit.lab.soak import analysis as an
from hakit.lab.soak.run import text

START = 1000.0
SINCE = START + an.WARM_UP


def probe(
    t: float, node: str = "node1", rss: int = 50_000, fds: int = 30, **kw: object
) -> an.Probe:
    return an.Probe(START + t, node, {"daemon": rss, "heartbeat": 20_000}, {"daemon": fds}, **kw)  # type: ignore[arg-type]


def test_the_slope_is_per_hour_and_flat_is_zero() -> None:
    assert an.slope_per_hour([(0, 5), (1800, 5), (3600, 5)]) == 0.0
    assert an.slope_per_hour([(0, 0), (1800, 1), (3600, 2)]) == pytest.approx(2.0)
    assert an.slope_per_hour([(0, 1)]) == 0.0


def test_memory_growth_is_judged_after_the_warm_up_and_only_on_a_long_run() -> None:
    steady = [probe(t) for t in range(0, 1300, 10)]
    assert an.leaks(steady, ["node1"], SINCE) == []
    # 1 MiB every minute: 60 MiB/h, but the first minute (warm-up) is not counted
    growing = [probe(t, rss=50_000 + int(t / 60 * 1024)) for t in range(0, 1300, 10)]
    (leak,) = an.leaks(growing, ["node1"], SINCE)
    assert "memory grows 60.0 MiB/h" in leak
    short = [probe(t, rss=50_000 + t * 100) for t in range(0, 300, 10)]
    assert an.leaks(short, ["node1"], SINCE) == []  # too short to tell
    fds = [probe(t, fds=30 + t // 100) for t in range(0, 1300, 10)]
    assert any("descriptors grew" in x for x in an.leaks(fds, ["node1"], SINCE))


def test_every_peer_loss_or_role_change_during_the_soak_is_a_false_failover() -> None:
    events: list[dict[str, object]] = [
        {"at": START + 5, "kind": "peer-up", "message": "node2 alive"},
        {"at": START + 10, "kind": "link-down", "message": "no heartbeat on net1"},
        {"at": START + 20, "kind": "peer-lost", "message": "node2 lost", "node": "node1"},
        {"at": START + 21, "kind": "module", "message": "chaos on node1 becoming primary: x"},
        {"at": START + 22, "kind": "module", "message": "farm-web on node2: leaves the farm"},
        {"at": START - 1, "kind": "peer-lost", "message": "before the soak"},
        {"at": "bad", "kind": "peer-lost"},
    ]
    false = an.false_failovers(events, START, START + 100)
    assert len(false) == 3
    assert false[0].startswith(f"{START + 20:.3f} node1: node2 lost")
    assert an.link_losses(events, START, START + 100) == 1


def test_a_module_out_of_its_steady_states_is_reported() -> None:
    steady = {"db": ("PRIM ready", "SECOND ready")}
    ok = probe(1, states={"db": "PRIM ready"})
    bad = probe(2, states={"db": "ALONE ready"})
    gone = probe(3, states={})
    assert an.unsteady([ok], steady) == []
    assert an.unsteady([ok, bad, gone], steady) == [
        f"{START + 2:.3f} node1: db ALONE ready",
        f"{START + 3:.3f} node1: db absent",
    ]


def test_gaps_and_lag_count_only_what_came_after_the_warm_up() -> None:
    h0 = {"bounds": [0.2, 0.5], "counts": [100, 0, 0], "sum": 20.0, "max": 0.2}
    h1 = {"bounds": [0.2, 0.5], "counts": [1090, 9, 1], "sum": 220.0, "max": 0.7}
    probes = [
        probe(0, gaps={"node2/net1": {"bounds": [0.2, 0.5], "counts": [5, 0, 0], "sum": 1.0}}),
        probe(61, gaps={"node2/net1": h0, "node2/net2": h0}, lag=h0),
        probe(900, gaps={"node2/net1": h1, "node2/net2": h1}, lag=h1),
    ]
    gaps = an.gap_spread(probes, "node1", SINCE)
    assert gaps["node2/net1"]["count"] == 1000.0
    assert gaps["node2/net1"]["p50"] == 0.2
    assert gaps["node2/net1"]["p99.9"] == 0.5  # the 999th of 1000
    assert gaps["all"]["count"] == 2000.0
    assert gaps["node2/net1"]["max_since_start"] == 0.7
    lag = an.lag_spread(probes, "node1", SINCE)
    assert lag["p99"] == 0.2
    assert an.gap_spread(probes, "node2", SINCE) == {}


def test_throughput_of_the_bulk_writer_after_the_warm_up() -> None:
    lines = "\n".join(
        [f"{START + t} {int(t * 100e6)} 0" for t in range(0, 200, 10)] + ["garbage", f"{START} x 0"]
    )
    rate, errors, span = an.throughput(lines, SINCE)
    assert rate == pytest.approx(100.0)
    assert errors == 0
    assert span == pytest.approx(130.0)  # 60 s … 190 s
    assert an.throughput("", SINCE) == (0.0, 0, 0.0)


def test_the_report_text_names_every_problem() -> None:
    summary = {
        "minutes": 1.0,
        "probes": 12,
        "false_failovers": 1,
        "heartbeat_link_losses": 0,
        "bulk_mb_per_s": 80.0,
        "bulk_seconds": 60.0,
        "ledger_records_checked": 10,
        "farm_requests": 5,
        "farm_unanswered": 0,
        "nodes": {
            "node1": {
                "memory_mib": {"first": 60.0, "last": 61.0, "peak": 61.0, "per_hour": 1.0},
                "descriptors": None,
                "event_loop_lag_s": {"p50": 0.001, "p99": 0.01, "max_since_start": 0.05},
                "heartbeat_gaps_s": {"all": {"p50": 0.2, "p99": float("inf")}},
            }
        },
    }
    out = text(summary, ["false failover: x"])
    assert "false failovers: 1" in out
    assert "60.0 → 61.0 (+1.00/h)" in out
    assert "1 ms/10 ms/50 ms" in out
    assert "200 ms/inf/-/-" in out
    assert "problems: 1\n  false failover: x" in out
    assert text({}, ["the soak could not go on: x"]).startswith("soak: no result")
