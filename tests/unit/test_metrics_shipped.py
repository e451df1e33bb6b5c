"""The shipped Grafana dashboard and Prometheus alert rules (docs/grafana, docs/prometheus):
valid PromQL (`promtool check rules`), and querying only metrics a node exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hakit.metrics.catalog import exported_names

DOCS = Path(__file__).resolve().parents[2] / "docs"
DASHBOARD = DOCS / "grafana" / "hakit-dashboard.json"
ALERTS = DOCS / "prometheus" / "hakit-alerts.yml"

# aggregations, their modifiers, operators, and the functions the files use
PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "count",
    "avg",
    "topk",
    "bottomk",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "rate",
    "irate",
    "increase",
    "changes",
    "histogram_quantile",
    "vector",
    "clamp_min",
    "clamp_max",
    "abs",
}
PROMETHEUS_OWN = {"up"}  # the synthetic metric of every scrape target


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: what is left once strings, label matchers,
    grouping labels, ranges, Grafana variables and PromQL's own words are removed."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\$\w+", "", e)  # Grafana variables
    e = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?\b", "", e)  # numbers
    return set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", e)) - PROMQL_WORDS


def dashboard_exprs() -> Iterator[str]:
    dash = json.loads(DASHBOARD.read_text())

    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for p in panels:
            for t in p.get("targets", []):
                yield t["expr"]
            yield from walk(p.get("panels", []))

    yield from walk(dash["panels"])
    for v in dash["templating"]["list"]:
        if v["type"] == "query":  # label_values(SELECTOR, LABEL): the selector
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", v["definition"])
            assert m, v["definition"]
            yield m.group(1)
    for a in dash["annotations"]["list"]:
        yield a["expr"]


def alert_exprs() -> Iterator[str]:
    for g in yaml.safe_load(ALERTS.read_text())["groups"]:
        for r in g["rules"]:
            yield r["expr"]


def test_metric_names_of_an_expression() -> None:
    expr = (
        'sum by (module, le) (rate(hakit_x_bucket{a="b{c}"}[$__rate_interval])) '
        "or on (node) vector(0) > 0.5"
    )
    assert metric_names(expr) == {"hakit_x_bucket"}


def test_the_dashboard_queries_only_exported_metrics() -> None:
    exprs = list(dashboard_exprs())
    assert len(exprs) > 20
    used = set().union(*(metric_names(e) for e in exprs))
    assert used - exported_names() == set()
    # and it shows what the issue asks for: states, replication, heartbeats, failovers
    for m in (
        "hakit_module_state",
        "hakit_replication_bytes_total",
        "hakit_replication_lag_seconds",
        "hakit_replication_fsync_seconds_bucket",
        "hakit_peer_last_heartbeat_age_seconds",
        "hakit_module_failovers_total",
        "hakit_resync_progress_ratio",
    ):
        assert m in used, m


def test_the_alert_rules_query_only_exported_metrics() -> None:
    used = set().union(*(metric_names(e) for e in alert_exprs()))
    assert used - exported_names() - PROMETHEUS_OWN == set()
    names = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert {
        "HakitSecondaryLost",
        "HakitModuleDegraded",
        "HakitSplitBrain",
        "HakitWitnessUnreachable",
        "HakitNodeDown",
    } <= names


needs_promtool = pytest.mark.skipif(
    not shutil.which("promtool"), reason="promtool (Debian package prometheus) not installed"
)


def promtool_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    r = promtool_check(ALERTS)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each query (Grafana's range variables replaced by a duration) as a recording rule:
    promtool parses it as Prometheus would."""
    rules = [
        {"record": f"hakit:dashboard_{i}", "expr": re.sub(r"\$__\w+", "5m", e)}
        for i, e in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = promtool_check(path)
    assert r.returncode == 0, r.stdout + r.stderr
