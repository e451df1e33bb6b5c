"""The metrics of a status document (hakit.metrics): what each section gives, and no secret."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hakit.config.model import Cluster
from hakit.daemon.status import build_status
from hakit.metrics.catalog import METRICS, exported_names
from hakit.metrics.collector import families, render
from hakit.metrics.samples import Histogram, Sample, samples

CONFIG = Cluster.model_validate(
    {
        "cluster": "demo",
        "networks": {"lan": {}, "repl": {}},
        "nodes": {
            "node1": {"addresses": {"lan": "10.0.1.1", "repl": "10.0.2.1"}},
            "node2": {"addresses": {"lan": "10.0.1.2", "repl": "10.0.2.2"}},
        },
    }
)
SNAPSHOT = {
    "peers": {
        "node2": {
            "state": "alive",
            "alive": True,
            "since": 90.0,
            "networks": {"lan": True, "repl": False},
            "last_heard": {"lan": 99.75, "repl": 97.0},
            "heard": {"lan": 450, "repl": 440},
            "gaps": {"lan": {"bounds": [0.2, 0.5], "counts": [400, 49, 1], "sum": 90.0}},
            "clock_offset": 0.002,
            "boot": "00",
            "payload": "",
        }
    },
    "local_networks": {"lan": True, "repl": False},
    "stats": {
        "sent": 10,
        "received": 9,
        "accepted": 8,
        "rejected": {"bad-mac": 1},
        "send_errors": {"repl: Network is unreachable": 3},
        "skipped_snapshots": 0,
    },
}
SECRET_TOKEN = "hkt_abcdefghijkl_c2VjcmV0"
DAEMON = {
    "version": "0.3.0",
    "pid": 4242,
    "started_at": 50.0,
    "boot": "deadbeef",
    "config": "/etc/hakit/cluster.yaml",
    "heartbeat_restarts": 1,
    "loop_lag": {"bounds": [0.001, 0.01], "counts": [90, 9, 1], "sum": 0.2, "max": 0.3},
    "token": SECRET_TOKEN,  # a field the collector must never show
}

MIRROR: dict[str, Any] = {
    "kind": "mirror",
    "nodes": {
        "node1": {
            "state": "ALONE",
            "status": "ready",
            "phase": "alone",
            "reason": "node2 lost: no heartbeat from 10.0.1.2",
            "blocked": None,
            "data": {"gen": 7, "gen_id": "ab12"},
            "since": 95.5,
        },
        "node2": {"state": "STOP", "status": "not-ready", "reachable": False},
    },
    "failover": True,
    "unprotected": "node2 is lost",
    "vips": ["10.0.1.100/24"],
    "vips_held": ["10.0.1.100/24"],
    "replication": {
        "mode": "sync",
        "network": "repl",
        "dirs": ["/srv/db"],
        "role": "primary",
        "state": "resyncing",
        "progress": {"bytes_done": 250, "bytes_total": 1000, "bytes_sent": 100, "eta": 3.0}
        | {"percent": 25.0},
        "last_sync": {"at": 80.0, "bytes_sent": 4096, "elapsed": 1.5},
        "stats": {
            "at": 99.0,
            "state": "resyncing",
            "ops": 120,
            "bytes": 65536,
            "waiting": 2,
            "lag": 0.25,
            "fsync": {"bounds": [0.001, 0.01], "counts": [3, 1, 1], "sum": 0.05},
        },
        "diverged_copy_kept": {"folder": "/var/lib/hakit/modules/db/split-brain/x"},
    },
    "split_brain": {
        "witness": ["10.0.9.9"],
        "granted": True,
        "asking": False,
        "arbiter": "the witness grants node1 the lease",
        "witness_reachable": True,
    },
    "checkers": {
        "web": {
            "type": "tcp",
            "what": "10.0.1.100:80",
            "health": "down",
            "detail": "ECONNREFUSED x",
        },
        "disk": {"type": "custom", "what": "/usr/local/bin/check", "health": "off"},
    },
    "recovery": {"max": 3, "window": 600, "used": 1},
    "counters": {"failovers": {"peer-lost": 2}, "restarts": {"checker": 1}},
    "health_probe": {"port": 7400, "bind": ["10.0.1.1"], "path": "/health"},
}
FARM: dict[str, Any] = {
    "kind": "farm",
    "nodes": {
        "node1": {"state": "UP", "status": "ready", "buckets": 128, "since": 60.0},
        "node2": {"state": "UP", "status": "ready", "buckets": 128},
    },
    "agreed": True,
    "vips_held": ["10.0.1.200/24"],
    "checkers": {},
    "recovery": {"max": 3, "window": 600, "used": 0},
    "counters": {},
}


def status() -> dict[str, Any]:
    st = build_status(CONFIG, "node1", SNAPSHOT, DAEMON, now=100.0)
    st["modules"] = {
        "db": MIRROR,
        "web": FARM,
        "bad": {"kind": "mirror", "nodes": {}, "error": "/etc/hakit/modules/bad/module.yaml:3"},
        "elsewhere": {"kind": "mirror", "here": False, "nodes": {"node2": {"state": "PRIM"}}},
    }
    return st


def by_name(st: dict[str, Any]) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for s in samples(st):
        if isinstance(s, Sample):
            out.setdefault(s.name, {})[s.labels[2:]] = s.value  # without cluster and node
    return out


M = (("module", "db"),)
WEB = (*M, ("checker", "web"), ("type", "tcp"))


@pytest.mark.parametrize(
    ("metric", "labels", "value"),
    [
        ("hakit_node_info", (("version", "0.3.0"),), 1.0),
        ("hakit_daemon_start_time_seconds", (), 50.0),
        ("hakit_peer_up", (("peer", "node2"),), 1.0),
        ("hakit_peer_network_up", (("peer", "node2"), ("network", "lan")), 1.0),
        ("hakit_peer_network_up", (("peer", "node2"), ("network", "repl")), 0.0),
        ("hakit_peer_last_heartbeat_age_seconds", (("peer", "node2"), ("network", "lan")), 0.25),
        ("hakit_peer_last_heartbeat_age_seconds", (("peer", "node2"), ("network", "repl")), 3.0),
        ("hakit_peer_clock_offset_seconds", (("peer", "node2"),), 0.002),
        ("hakit_peer_heartbeats", (("peer", "node2"), ("network", "repl")), 440.0),
        ("hakit_network_up", (("network", "repl"),), 0.0),
        ("hakit_heartbeats_sent", (), 10.0),
        ("hakit_heartbeats_rejected", (("reason", "bad-mac"),), 1.0),
        ("hakit_heartbeat_send_errors", (("network", "repl"),), 3.0),
        ("hakit_heartbeat_process_restarts", (), 1.0),
        ("hakit_heartbeat_timeout_seconds", (), CONFIG.heartbeat.timeout),
        ("hakit_module_state", (*M, ("kind", "mirror"), ("state", "ALONE")), 1.0),
        ("hakit_module_state", (*M, ("kind", "mirror"), ("state", "PRIM")), 0.0),
        ("hakit_module_status", (*M, ("status", "ready")), 1.0),
        ("hakit_module_state_since_timestamp_seconds", M, 95.5),
        ("hakit_module_unprotected", M, 1.0),
        ("hakit_module_failover_enabled", M, 1.0),
        ("hakit_module_vips_held", M, 1.0),
        ("hakit_module_data_generation", M, 7.0),
        ("hakit_module_failovers", (*M, ("reason", "peer-lost")), 2.0),
        ("hakit_module_restarts", (*M, ("reason", "checker")), 1.0),
        ("hakit_module_config_error", (("module", "bad"),), 1.0),
        ("hakit_module_config_error", M, 0.0),
        ("hakit_checker_health", (*M, ("checker", "web"), ("type", "tcp"), ("health", "down")), 1),
        ("hakit_checker_health", (*M, ("checker", "web"), ("type", "tcp"), ("health", "up")), 0),
        (
            "hakit_checker_health",
            (*M, ("checker", "disk"), ("type", "custom"), ("health", "off")),
            1,
        ),
        ("hakit_checker_recoveries_used", M, 1.0),
        ("hakit_witness_lease", M, 1.0),
        ("hakit_witness_reachable", M, 1.0),
        ("hakit_arbiter_asking", M, 0.0),
        ("hakit_replication_mode", (*M, ("mode", "sync")), 1.0),
        ("hakit_replication_state", (*M, ("state", "resyncing")), 1.0),
        ("hakit_replication_state", (*M, ("state", "ready")), 0.0),
        ("hakit_replication_connected", M, 1.0),
        ("hakit_replication_ops", (*M, ("role", "primary")), 120.0),
        ("hakit_replication_bytes", (*M, ("role", "primary")), 65536.0),
        ("hakit_replication_waiting_ops", M, 2.0),
        ("hakit_replication_lag_seconds", M, 0.25),
        ("hakit_resync_done_bytes", M, 250.0),
        ("hakit_resync_todo_bytes", M, 1000.0),
        ("hakit_resync_progress_ratio", M, 0.25),
        ("hakit_resync_eta_seconds", M, 3.0),
        ("hakit_resync_last_sent_bytes", M, 4096.0),
        ("hakit_farm_buckets", (("module", "web"),), 128.0),
        ("hakit_farm_agreed", (("module", "web"),), 1.0),
        ("hakit_module_state", (("module", "web"), ("kind", "farm"), ("state", "UP")), 1.0),
    ],
)
def test_a_status_document_gives_the_samples(
    metric: str, labels: tuple[tuple[str, str], ...], value: float
) -> None:
    assert by_name(status())[metric][labels] == value


def test_every_metric_is_reported_by_a_rich_document() -> None:
    """The document above has every section: every metric of the catalogue shows up (a spec
    nobody produces is dead; a sample without a spec fails `families`)."""
    names = {f.name for f in families(status())}
    assert names == {m.name for m in METRICS}


def test_modules_run_elsewhere_are_left_to_their_nodes() -> None:
    mods = {dict(s.labels).get("module") for s in samples(status())}
    assert "elsewhere" not in mods


def test_the_peer_of_a_module_is_not_reported_here() -> None:
    st = by_name(status())["hakit_module_state"]
    assert all(dict(k).get("node") is None for k in st)  # the reporter is the only node label
    assert len([k for k, v in st.items() if dict(k)["module"] == "db" and v == 1.0]) == 1


def histograms(name: str) -> list[Histogram]:
    return [s for s in samples(status()) if isinstance(s, Histogram) and s.name == name]


def test_fsync_histogram_is_cumulative_with_inf() -> None:
    (h,) = histograms("hakit_replication_fsync_seconds")
    assert h.buckets == (("0.001", 3.0), ("0.01", 4.0), ("+Inf", 5.0))
    text = render(status).decode()
    assert 'hakit_replication_fsync_seconds_bucket{cluster="demo",le="+Inf",module="db"' in text
    assert re.search(r'hakit_replication_fsync_seconds_count\{[^}]*module="db"[^}]*\} 5\.0', text)


def test_heartbeat_gaps_per_peer_and_network_and_the_event_loop_lag() -> None:
    (gap,) = histograms("hakit_heartbeat_gap_seconds")  # none for a network without gaps
    assert dict(gap.labels)["peer"] == "node2"
    assert dict(gap.labels)["network"] == "lan"
    assert gap.buckets == (("0.2", 400.0), ("0.5", 449.0), ("+Inf", 450.0))
    (lag,) = histograms("hakit_event_loop_lag_seconds")
    assert lag.buckets[-1] == ("+Inf", 100.0)
    assert lag.sum == 0.2
    text = render(status).decode()
    assert 'hakit_heartbeat_gap_seconds_bucket{cluster="demo",le="0.5",network="lan"' in text


def test_no_arbiter_no_replication_no_checker_gives_no_such_sample() -> None:
    st = status()
    st["modules"] = {"db": {k: v for k, v in MIRROR.items() if k not in ("replication",)}}
    st["modules"]["db"]["split_brain"] = {"granted": None, "witness_reachable": None}
    names = by_name(st)
    assert "hakit_witness_lease" not in names
    assert "hakit_witness_reachable" not in names
    assert "hakit_replication_state" not in names


def test_a_partial_document_gives_fewer_samples_not_an_error() -> None:
    st = {"cluster": "c", "node": "n1", "nodes": {"n2": {"alive": True}}, "modules": {"m": {}}}
    names = by_name(st)
    assert names["hakit_peer_up"] == {(("peer", "n2"),): 1.0}


def test_an_unknown_state_is_shown_not_dropped() -> None:
    st = status()
    st["modules"] = {"db": MIRROR | {"nodes": {"node1": {"state": "LIMBO", "status": "ready"}}}}
    states = by_name(st)["hakit_module_state"]
    assert states[(*M, ("kind", "mirror"), ("state", "LIMBO"))] == 1.0


def test_the_text_format_parses_and_reveals_no_secret() -> None:
    text = render(status).decode()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert names <= exported_names() | {n.removesuffix("_total") + "_created" for n in names}
    for secret in (
        "10.0.",  # addresses: nodes, VIPs, witness, checkers, health probe
        "/etc/",
        "/srv/",
        "/var/",
        "/usr/",  # paths
        "deadbeef",  # boot id
        "4242",  # pid
        "ab12",  # generation id
        SECRET_TOKEN,
        "hkt_",
        "ECONNREFUSED",  # checker details and other sentences
        "grants",
    ):
        assert secret not in text, secret


def test_every_metric_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    missing = [m.name for m in METRICS if f"`{m.name}" not in doc]
    assert not missing, f"docs/metrics.md does not describe {missing}"
