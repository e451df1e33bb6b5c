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
        (
            "nodes: [alpha, beta]",
            "nodes: [alpha]",
            "nodes = ['alpha']: expected at least 2 items, got 1",
        ),
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
checkers:
  - {name: web, type: tcp, port: 80}
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
        ("port: 80}\n", "port: 80, fall: 0}\n", "fall"),
        ("checkers:", "virtual_mac: 03:00:00:00:00:01\ncheckers:", "locally administered unicast"),
        ("checkers:", "failover: true\ncheckers:", "failover"),
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


CHECKERS = """\
checkers:
  - {name: app, type: process, process: nginx, min: 1, max: 8}
  - {name: pat, type: process, regex: "postgres: .*checkpointer"}
  - {name: unit, type: process, unit: nginx.service, when: every-node}
  - {name: web, type: tcp, port: 8080, interval: 0.5, timeout: 0.5, fall: 2, rise: 1}
  - {name: health, type: http, url: "https://127.0.0.1:8443/ok", status: [200, 204], body: ok}
  - {name: gw, type: ping, address: 10.0.0.254, when: every-node}
  - {name: nic, type: interface, interface: eth0, when: every-node}
  - {name: vip, type: vip}
  - {name: mine, type: custom, command: [check_app, --quick], mode: exit}
  - {name: feed, type: custom, command: [/usr/bin/watcher], mode: stream, action: none}
  - {name: db, type: module, module: database, node: alpha, when: before-start}
recovery: {max: 5, window: 600}
"""


def test_every_kind_of_checker_loads_with_its_defaults(tmp_path: Path) -> None:
    mf = load_module(module(tmp_path, GOOD + CHECKERS), CLUSTER)
    c = mf.config
    kinds = [(k.name, k.type, k.effective_action, k.effective_when("mirror")) for k in c.checkers]
    assert kinds == [
        ("app", "process", "restart", "primary"),
        ("pat", "process", "restart", "primary"),
        ("unit", "process", "restart", "every-node"),
        ("web", "tcp", "restart", "primary"),
        ("health", "http", "restart", "primary"),
        ("gw", "ping", "wait", "every-node"),
        ("nic", "interface", "wait", "every-node"),
        ("vip", "vip", "stopstart", "primary"),
        ("mine", "custom", "restart", "primary"),
        ("feed", "custom", "none", "primary"),
        ("db", "module", "wait", "before-start"),
    ]
    assert c.recovery.max == 5
    assert [k.describe() for k in c.checkers[:2]] == [
        "process nginx (1..8)",
        "processes /postgres: .*checkpointer/ (≥ 1)",
    ]


@pytest.mark.parametrize(
    ("checker", "expected"),
    [
        ("{name: x, type: tcp}", "checkers[0].port: required key is missing"),
        ("{name: x, type: tcp, port: 80, url: x}", "checkers[0].url: unknown key; expected one"),
        ("{name: x, type: smtp}", "checkers[0].type = 'smtp': expected: one of process, tcp"),
        ("{name: x, port: 80}", "checkers[0].type: required key `type` is missing: one of"),
        ("{name: x, type: process}", "give exactly one of `process`, `regex` or `unit`"),
        ("{name: x, type: process, regex: '(('}", "not a valid regular expression"),
        ("{name: x, type: process, process: a, min: 3, max: 2}", "`max` is below `min`"),
        ("{name: x, type: http, url: ftp://a}", "checkers[0].url = 'ftp://a': expected: `http://`"),
        ("{name: x, type: http, url: 'http://a', status: [700]}", "between 100 and 599"),
        ("{name: x, type: tcp, port: 80, action: reboot}", "checkers[0].action = 'reboot'"),
        ("{name: x, type: tcp, port: 80, when: sometimes}", "checkers[0].when = 'sometimes'"),
        ("{name: x, type: tcp, port: 80, fall: 0}", "checkers[0].fall = 0"),
        ("{name: x, type: module, module: db, node: zeta}", "checkers[0].node = zeta: a cluster"),
        ("{name: x, type: module, module: db, action: restart}", "`wait`, `stop` or `none`"),
        ("{name: x, type: vip, when: secondary}", "where the node holds the VIPs"),
        ("{name: x, type: tcp, port: 1, when: before-start}", "nothing to restart"),
        ("{name: x, type: ping, address: nowhere}", "checkers[0].address = 'nowhere'"),
    ],
)
def test_checker_errors_are_located(tmp_path: Path, checker: str, expected: str) -> None:
    msgs = errors(tmp_path, GOOD + f"checkers:\n  - {checker}\n")
    assert any(expected in m for m in msgs), msgs
    assert all(":12: " in m or ":13: " in m for m in msgs), msgs  # the checker's line


def test_checker_names_are_unique_and_farms_have_no_primary(tmp_path: Path) -> None:
    twice = "checkers:\n  - {name: a, type: tcp, port: 1}\n  - {name: a, type: tcp, port: 2}\n"
    assert any("checkers[1].name = a: listed twice" in m for m in errors(tmp_path, GOOD + twice))
    tmp_path = tmp_path / "farm"
    farm = FARM.replace(
        "{name: web, type: tcp, port: 80}", "{name: web, type: tcp, port: 80, when: primary}"
    )
    assert any("a farm has no primary" in m for m in errors(tmp_path, farm))


def test_a_witness_grace_too_short_for_the_vouching_window_is_refused(tmp_path: Path) -> None:
    """With 0.5 s heartbeats and a 1.5 s timeout, a 0.9 s grace passes the old rule (1.5 ×
    interval + 0.1) but not timeout + grace >= 6 × interval + 0.1 (issue 12 B)."""
    slow = Cluster.model_validate(
        CLUSTER.model_dump(mode="json") | {"heartbeat": {"interval": 0.5, "timeout": 1.5}}
    )
    text = GOOD + "split_brain:\n  witness: {addresses: [10.0.0.5], ttl: 1.5, grace: 0.9}\n"
    with pytest.raises(ConfigError) as e:
        load_module(module(tmp_path, text), slow)
    (msg,) = [str(i) for i in e.value.issues]
    assert "grace" in msg
    assert "6 × heartbeat.interval" in msg


@pytest.mark.parametrize(
    ("written", "policy"), [("on", "on"), ("off", "off"), ("auto", "auto"), ('"on"', "on")]
)
def test_boot_takes_on_and_off_as_words(tmp_path: Path, written: str, policy: str) -> None:
    """YAML reads a bare on/off as a boolean; `boot: on` still means the policy `on`."""
    mf = load_module(module(tmp_path, GOOD + f"boot: {written}\n"), CLUSTER)
    assert mf.config.boot == policy


def test_boot_defaults_to_auto_and_refuses_other_words(tmp_path: Path) -> None:
    assert load_module(module(tmp_path, GOOD), CLUSTER).config.boot == "auto"
    msgs = errors(tmp_path / "x", GOOD + "boot: always\n")
    assert any("boot = 'always': expected 'on', 'off' or 'auto'" in m for m in msgs), msgs


WITH_ETCD = Cluster.model_validate(
    CLUSTER.model_dump(mode="json")
    | {"etcd": {"endpoints": ["https://10.0.9.1:2379"], "ca": "ca", "cert": "c", "key": "k"}}
)


def test_a_module_arbitrated_by_the_clusters_etcd(tmp_path: Path) -> None:
    mf = load_module(
        module(tmp_path, GOOD + "split_brain:\n  etcd: {ttl: 2, grace: 0.5}\n"), WITH_ETCD
    )
    assert isinstance(mf.config, MirrorModule)
    lease = mf.config.split_brain.lease
    assert lease is not None
    assert (lease.ttl, lease.grace) == (2, 0.5)


@pytest.mark.parametrize(
    ("split_brain", "cluster", "expected"),
    [
        ("{etcd: {}}", CLUSTER, "cluster.yaml has no `etcd:` section"),
        (
            "{etcd: {}, witness: {addresses: [10.0.0.5]}}",
            WITH_ETCD,
            "`split_brain.witness` or `split_brain.etcd`, not both",
        ),
        ("{etcd: {grace: 0.1}}", WITH_ETCD, "split_brain.etcd.grace = 0.1: at least 1.5 ×"),
    ],
)
def test_etcd_arbitration_errors_are_located(
    tmp_path: Path, split_brain: str, cluster: Cluster, expected: str
) -> None:
    with pytest.raises(ConfigError) as e:
        load_module(module(tmp_path, GOOD + f"split_brain: {split_brain}\n"), cluster)
    msgs = [str(i) for i in e.value.issues]
    assert any(expected in m and ":11: " in m for m in msgs), msgs
