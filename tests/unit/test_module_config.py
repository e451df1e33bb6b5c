"""module.yaml: a valid module loads; every error names file, line, field, value, expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from hakit.config.model import Cluster
from hakit.config.module import FarmModule, MirrorModule, load_module
from hakit.errors import ConfigError

CLUSTER = Cluster.model_validate(
    {
        "cluster": "c",
        "networks": {"lan": {}, "repl": {}},
        "nodes": {
            "alpha": {"addresses": {"lan": "10.0.0.1", "repl": "10.1.0.1"}},
            "beta": {"addresses": {"lan": "10.0.0.2", "repl": "10.1.0.2"}},
            "gamma": {"addresses": {"lan": "10.0.0.3"}},
        },
    }
)
GOOD = """\
kind: mirror
nodes: [alpha, beta]
heartbeat_networks: [lan, repl]
vips:
  - address: 10.0.0.100/24
    network: lan
failover: false
default_primary: alpha
scripts: {start_timeout: 30, stop_timeout: 60}
variables: {APP_PORT: "8080"}
"""


def module(tmp_path: Path, text: str, scripts: dict[str, int] | None = None) -> Path:
    d = tmp_path / "web"
    (d / "bin").mkdir(parents=True)
    (d / "module.yaml").write_text(text)
    for name, mode in (scripts or {}).items():
        p = d / "bin" / name
        p.write_text("#!/bin/sh\n")
        p.chmod(mode)
    return d


def errors(tmp_path: Path, text: str, **kw: dict[str, int]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_module(module(tmp_path, text, **kw), CLUSTER)
    return [str(i) for i in e.value.issues]


def line(text: str, needle: str) -> int:
    return next(i for i, t in enumerate(text.splitlines(), 1) if needle in t)


def test_valid_module(tmp_path: Path) -> None:
    mf = load_module(module(tmp_path, GOOD, {"start_prim": 0o755}), CLUSTER)
    c = mf.config
    assert isinstance(c, MirrorModule)
    assert mf.name == "web"
    assert c.nodes == ("alpha", "beta")
    assert str(c.vips[0].address) == "10.0.0.100/24"
    assert (c.failover, c.default_primary, c.scripts.stop_timeout) == (False, "alpha", 60.0)
    assert c.peer_of("alpha") == "beta"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("nodes: [alpha, beta]", "nodes: [alpha, delta]", "nodes[1] = delta: not a cluster node"),
        ("nodes: [alpha, beta]", "nodes: [alpha]", "nodes[1]: item 2 is missing"),
        (
            "nodes: [alpha, beta]",
            "nodes: [alpha, gamma]",
            "heartbeat_networks[1] = repl: not a network shared by alpha and gamma",
        ),
        (
            "default_primary: alpha",
            "default_primary: first",
            "default_primary = first: expected alone, lastprim, alpha or beta",
        ),
        (
            "    network: lan",
            "    network: repl\n    interface: eth0",
            "give exactly one of `network` or `interface`",
        ),
        ("10.0.0.100/24", "10.0.0.2/24", "vips[0].address = 10.0.0.2/24: is a node's own address"),
        ("10.0.0.100/24", "10.0.0.300/24", "vips[0].address"),
        ("start_timeout: 30", "start_timeout: 0", "scripts.start_timeout = 0"),
        ("APP_PORT", "APP-PORT", "variables.APP-PORT"),
        ("failover: false", "failover: maybe", "failover = 'maybe'"),
        ("kind: mirror", "kind: web", "kind = 'web': expected `mirror` or `farm`"),
    ],
)
def test_errors(tmp_path: Path, old: str, new: str, expected: str) -> None:
    text = GOOD.replace(old, new)
    msgs = errors(tmp_path, text)
    assert any(expected in m for m in msgs), msgs
    assert all(m.startswith(f"{tmp_path}/web/module.yaml") for m in msgs)


def test_unknown_key_has_its_line(tmp_path: Path) -> None:
    text = GOOD + "autostart: true\n"
    [msg] = errors(tmp_path, text)
    assert f"module.yaml:{line(text, 'autostart')}: autostart: unknown key" in msg


def test_script_not_executable(tmp_path: Path) -> None:
    [msg] = errors(tmp_path, GOOD, scripts={"start_prim": 0o644})
    assert "start_prim is not executable: run `chmod +x" in msg


def test_missing_kind(tmp_path: Path) -> None:
    [msg] = errors(tmp_path, GOOD.replace("kind: mirror\n", ""))
    assert "kind: required: `mirror`" in msg


FARM = """\
kind: farm
nodes: [alpha, beta, gamma]
weights: {alpha: 2, gamma: 0}
vips:
  - address: 10.0.0.200/24
    network: lan
rules:
  - {protocol: tcp, port: 80, by: client-ip-port}
  - {protocol: udp, by: client-ip}
check: {tcp_port: 80}
"""


def test_valid_farm(tmp_path: Path) -> None:
    mf = load_module(module(tmp_path, FARM, {"start_both": 0o755}), CLUSTER)
    c = mf.config
    assert isinstance(c, FarmModule)
    assert [c.weight(n) for n in c.nodes] == [2, 1, 0]
    assert c.mac == "02:48:0a:00:00:c8"
    assert c.rules[1].port is None


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("weights: {alpha: 2, gamma: 0}", "weights: {delta: 1}", "not a node of this farm"),
        ("weights: {alpha: 2, gamma: 0}", "weights: {alpha: 0, beta: 0, gamma: 0}", "at least one"),
        ("10.0.0.200/24", "fd00::200/64", "an IPv4 address (farm VIPs)"),
        ("network: lan", "network: repl", "a network every farm node is on; such networks: lan"),
        ("nodes: [alpha, beta, gamma]", "nodes: [alpha, alpha]", "listed twice"),
        ("nodes: [alpha, beta, gamma]", "nodes: [alpha]", "at least 2"),
        ("by: client-ip-port}", "by: round-robin}", "client-ip"),
        ("  - {protocol: udp, by: client-ip}", "  - {protocol: tcp, port: 80}", "listed twice"),
        ("check: {tcp_port: 80}", "check: {tcp_port: 80, fall: 0}", "fall"),
        ("check: {tcp_port: 80}", "virtual_mac: 03:00:00:00:00:01", "locally administered unicast"),
        ("check: {tcp_port: 80}", "failover: true", "failover"),
    ],
)
def test_farm_errors(tmp_path: Path, old: str, new: str, expected: str) -> None:
    text = FARM.replace(old, new)
    assert text != FARM
    msgs = errors(tmp_path, text)
    assert any(expected in m for m in msgs), msgs


def test_farm_scripts_are_the_farm_ones(tmp_path: Path) -> None:
    msgs = errors(tmp_path, FARM, scripts={"stop_both": 0o644})
    assert any("stop_both" in m and "not executable" in m for m in msgs), msgs
