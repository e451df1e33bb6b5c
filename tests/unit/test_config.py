"""Cluster configuration: a valid file loads; every kind of error names file, line, field."""

from __future__ import annotations

from pathlib import Path

import pytest

from hakit.config.load import load_cluster
from hakit.config.model import Cluster
from hakit.config.starter import new_secret, render_cluster_yaml
from hakit.errors import ConfigError

NODES = {
    "node1": {"net1": "10.0.1.1", "net2": "10.0.2.1"},
    "node2": {"net1": "10.0.1.2", "net2": "10.0.2.2"},
    "node3": {"net1": "10.0.1.3", "net2": "10.0.2.3"},
}


def write(tmp_path: Path, text: str, *, secret: str | None = None, mode: int = 0o600) -> Path:
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(text)
    key = tmp_path / "cluster.key"
    key.write_text(new_secret() if secret is None else secret)
    key.chmod(mode)
    return cfg


def good() -> str:
    return render_cluster_yaml("demo", NODES)


def issues(tmp_path: Path, text: str, **kw: object) -> list[str]:
    path = write(tmp_path, text, **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as exc:
        load_cluster(path)
    return [str(i) for i in exc.value.issues]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_starter_config_loads_with_defaults(tmp_path: Path) -> None:
    cf = load_cluster(write(tmp_path, good()))
    c: Cluster = cf.config
    assert c.cluster == "demo"
    assert list(c.nodes) == ["node1", "node2", "node3"]
    assert list(c.networks) == ["net1", "net2"]
    assert (c.heartbeat.interval, c.heartbeat.timeout, c.heartbeat.port) == (0.2, 1.0, 7350)
    assert len(cf.secret) == 64
    assert "secret" not in repr(cf).lower() or cf.secret.decode() not in repr(cf)


def test_config_is_frozen(tmp_path: Path) -> None:
    c = load_cluster(write(tmp_path, good())).config
    with pytest.raises(ValueError, match="frozen"):
        c.cluster = "other"  # type: ignore[misc]


def test_unknown_key_names_line_and_allowed_keys(tmp_path: Path) -> None:
    text = good().replace("  port: 7350", "  port: 7350\n  pulse: 3")
    [msg] = issues(tmp_path, text)
    assert msg.startswith(f"{tmp_path}/cluster.yaml:{line_of(text, 'pulse')}: heartbeat.pulse:")
    assert "unknown key" in msg
    assert "interval" in msg
    assert "timeout" in msg


def test_unknown_top_level_key(tmp_path: Path) -> None:
    text = good() + "witness: 1.2.3.4\n"
    [msg] = issues(tmp_path, text)
    assert f":{line_of(text, 'witness')}: witness: unknown key" in msg


@pytest.mark.parametrize(
    ("old", "new", "field", "value", "expected"),
    [
        ("port: 7350", "port: 70000", "heartbeat.port", "70000", "less than or equal to 65535"),
        ("port: 7350", "port: web", "heartbeat.port", "'web'", "valid integer"),
        ("interval: 0.2", "interval: 0.001", "heartbeat.interval", "0.001", "greater than"),
        ("timeout: 1.0", "timeout: 1000", "heartbeat.timeout", "1000", "less than or equal"),
        ("10.0.2.3", "10.0.2.300", "nodes.node3.addresses.net2", "'10.0.2.300'", "IPv4 or IPv6"),
        ("cluster: demo", "cluster: 9lives", "cluster", "'9lives'", "a letter"),
        ("cluster: demo", "cluster: [a, b]", "cluster", "['a', 'b']", "valid string"),
    ],
)
def test_bad_values(
    tmp_path: Path, old: str, new: str, field: str, value: str, expected: str
) -> None:
    text = good().replace(old, new)
    [msg] = issues(tmp_path, text)
    assert f"cluster.yaml:{line_of(text, new)}: {field} = {value}: " in msg
    assert expected in msg


def test_bad_node_name_blames_the_key(tmp_path: Path) -> None:
    text = good().replace("  node2:", "  2node:")
    [msg] = issues(tmp_path, text)
    assert f":{line_of(text, '2node')}: nodes.2node = '2node': expected a name" in msg


def test_missing_required_keys(tmp_path: Path) -> None:
    msgs = issues(tmp_path, "heartbeat: {}\n")
    assert any("cluster: required key is missing" in m for m in msgs)
    assert any("networks: required key is missing" in m for m in msgs)
    assert any("nodes: required key is missing" in m for m in msgs)


def test_timing_budget_is_enforced(tmp_path: Path) -> None:
    text = good().replace("timeout: 1.0", "timeout: 0.5")
    [msg] = issues(tmp_path, text)
    assert f":{line_of(text, 'timeout: 0.5')}: heartbeat.timeout = 0.5:" in msg
    assert "at least 3 × heartbeat.interval (0.6 s" in msg


def test_unknown_network_and_lonely_network(tmp_path: Path) -> None:
    text = good().replace("net2: 10.0.2.3", "net9: 10.0.2.3")
    msgs = issues(tmp_path, text)
    assert any("nodes.node3.addresses.net9: unknown network 'net9'" in m for m in msgs)


def test_duplicate_address(tmp_path: Path) -> None:
    text = good().replace("10.0.1.3", "10.0.1.2")
    [msg] = issues(tmp_path, text)
    assert "nodes.node3.addresses.net1 = 10.0.1.2: address already used by node node2" in msg


def test_nodes_sharing_no_network(tmp_path: Path) -> None:
    nodes = {"a": {"n1": "10.0.0.1"}, "b": {"n1": "10.0.0.2"}, "c": {"n2": "10.0.1.3"}}
    text = render_cluster_yaml("x", nodes)
    text = text.replace("  n2: {}", "  n2: {}\n  n3: {}")
    msgs = issues(tmp_path, text)
    assert any("node c shares no network with node a" in m for m in msgs)
    assert any("networks.n2: only 1 node(s)" in m for m in msgs)
    assert any("networks.n3: only 0 node(s)" in m for m in msgs)


def test_a_cluster_starts_with_one_node_and_needs_one(tmp_path: Path) -> None:
    """`hakit cluster init` writes a one-node cluster that `add-node` grows; none is refused."""
    one = load_cluster(write(tmp_path, render_cluster_yaml("x", {"a": {"n1": "10.0.0.1"}})))
    assert list(one.config.nodes) == ["a"]
    msgs = issues(tmp_path, "cluster: x\nnetworks: {n1: {}}\nnodes: {}\n")
    assert any("nodes = {}: expected at least 1 item" in m for m in msgs)


def test_join_port_differs_from_the_other_ports(tmp_path: Path) -> None:
    text = good().replace("# join_port: 7352", "join_port: 7351")
    [msg] = issues(tmp_path, text)
    assert "api.join_port = 7351: must differ from api.port and heartbeat.port" in msg


def test_duplicate_key(tmp_path: Path) -> None:
    text = good() + "cluster: again\n"
    [msg] = issues(tmp_path, text)
    assert f":{line_of(text, 'again')}: cluster: duplicate key" in msg


def test_yaml_syntax_error(tmp_path: Path) -> None:
    [msg] = issues(tmp_path, "cluster: [demo\n")
    assert "cluster.yaml:2: YAML syntax error" in msg


def test_not_a_mapping(tmp_path: Path) -> None:
    [msg] = issues(tmp_path, "- a\n- b\n")
    assert "cluster.yaml:1: ['a', 'b']: expected a mapping" in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found; create it with `hakit cluster init`"):
        load_cluster(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("secret", "mode", "expected"),
    [
        ("short\n", 0o600, "secret is 5 bytes long; expected at least 16"),
        (None, 0o644, "accessible to other users (mode 0644); run `chmod 600"),
    ],
)
def test_secret_problems(tmp_path: Path, secret: str | None, mode: int, expected: str) -> None:
    text = good()
    [msg] = issues(tmp_path, text, secret=secret, mode=mode)
    assert f":{line_of(text, 'secret_file:')}: secret_file = {tmp_path}/cluster.key: " in msg
    assert expected in msg


def test_missing_secret(tmp_path: Path) -> None:
    path = write(tmp_path, good())
    (tmp_path / "cluster.key").unlink()
    with pytest.raises(ConfigError, match="secret file not found"):
        load_cluster(path)


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    text = good().replace("port: 7350", "port: 0").replace("interval: 0.2", "interval: -1")
    msgs = issues(tmp_path, text)
    assert len(msgs) == 2


def etcd_section(tmp_path: Path, endpoints: str = "[https://10.0.9.1:2379]", **files: str) -> str:
    for name in ("ca.crt", "node1.crt"):
        (tmp_path / name).write_text(
            "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n"
        )
    key = tmp_path / "node1.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nMC4\n-----END PRIVATE KEY-----\n")
    key.chmod(0o600)
    paths = {"ca": "ca.crt", "cert": "node1.crt", "key": "node1.key"} | files
    return (
        f"etcd:\n  endpoints: {endpoints}\n  ca: {paths['ca']}\n  cert: {paths['cert']}\n"
        f"  key: {paths['key']}\n"
    )


def test_an_etcd_section_loads_with_its_files_beside_cluster_yaml(tmp_path: Path) -> None:
    cfg = load_cluster(write(tmp_path, good() + etcd_section(tmp_path))).config
    assert cfg.etcd is not None
    assert cfg.etcd.endpoints == ("https://10.0.9.1:2379",)
    assert cfg.etcd_prefix == "/hakit/demo"


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        ("[http://10.0.9.1:2379]", "etcd.endpoints[0] = http://10.0.9.1:2379: expected https://"),
        ("[https://10.0.9.1]", "etcd.endpoints[0] = https://10.0.9.1: expected https://HOST:PORT"),
        ("[https://e1:2379/v3]", "without path or user"),
        ("[https://e1:2379, https://e1:2379]", "already listed as etcd.endpoints[0]"),
        ("[]", "etcd.endpoints"),
    ],
)
def test_bad_etcd_endpoints_are_located(tmp_path: Path, endpoints: str, expected: str) -> None:
    text = good() + etcd_section(tmp_path, endpoints)
    msgs = issues(tmp_path, text)
    assert any(expected in m for m in msgs), msgs
    assert all(f":{line_of(text, 'endpoints:')}: " in m for m in msgs), msgs


def test_etcd_files_are_checked(tmp_path: Path) -> None:
    text = good() + etcd_section(tmp_path, ca="missing.crt", cert="node1.key")
    (tmp_path / "node1.key").chmod(0o644)
    msgs = issues(tmp_path, text)
    assert len(msgs) == 3, msgs
    assert f":{line_of(text, '  ca:')}: etcd.ca = {tmp_path}/missing.crt: file not found" in msgs[0]
    assert "etcd.cert" in msgs[1]
    assert "expected a PEM file with a certificate" in msgs[1]
    assert f":{line_of(text, '  key:')}: etcd.key" in msgs[2]
    assert "accessible to other users (mode 0644)" in msgs[2]


def test_an_etcd_prefix_is_an_absolute_key(tmp_path: Path) -> None:
    text = good() + etcd_section(tmp_path) + "  prefix: hakit/demo\n"
    [msg] = issues(tmp_path, text)
    assert f":{line_of(text, 'prefix:')}: etcd.prefix = hakit/demo: expected a key starting" in msg
