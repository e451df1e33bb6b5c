"""Configurations that passed every check and then ran unprotected: replication ports shared by
two modules (or with the API), a witness on the heartbeat port, VIPs outside their network."""

from __future__ import annotations

from pathlib import Path

import pytest

from hakit.config.cloud import AwsMover
from hakit.config.model import Cluster
from hakit.config.module import load_module
from hakit.config.rules import check_topology
from hakit.config.starter import render_cluster_yaml
from hakit.daemon.packages import install, install_bytes, package_bytes
from hakit.errors import ConfigError, HakitError
from hakit.paths import Paths

NODES = {
    "alpha": {"lan": "10.0.0.1", "repl": "10.1.0.1"},
    "beta": {"lan": "10.0.0.2", "repl": "10.1.0.2"},
    "gamma": {"lan": "10.0.0.3", "repl": "10.1.0.3"},
}


def mirror(nodes: str = "[alpha, beta]", port: int = 7360, extra: str = "") -> str:
    return (
        f"kind: mirror\nnodes: {nodes}\n"
        f"replication:\n  dirs: [{{path: /srv/x}}]\n  port: {port}\n{extra}"
    )


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    p = Paths(etc=tmp_path / "etc", var=tmp_path / "var", log=tmp_path / "log")
    p.etc.mkdir()
    p.cluster_config.write_text(render_cluster_yaml("c", NODES))
    (p.etc / "cluster.key").write_text("k" * 32)
    (p.etc / "cluster.key").chmod(0o600)
    return p


def folder(tmp_path: Path, name: str, text: str) -> Path:
    d = tmp_path / "src" / name
    d.mkdir(parents=True)
    (d / "module.yaml").write_text(text)
    return d


def test_two_modules_with_one_replication_port_on_a_node_are_refused(
    tmp_path: Path, paths: Paths
) -> None:
    install(paths, folder(tmp_path, "web", mirror()), None, False)
    with pytest.raises(HakitError) as e:
        install(paths, folder(tmp_path, "db", mirror("[beta, gamma]")), None, False)
    msg = str(e.value)
    assert "module db and module web both use TCP port 7360 on beta (10.0.0.2)" in msg
    assert "give module db another replication.port" in msg
    assert not (paths.modules / "db").exists()
    # the daemon's install endpoint (and so `--all`) refuses it the same way
    with pytest.raises(HakitError, match="module db and module web both use TCP port 7360"):
        install_bytes(paths, package_bytes(tmp_path / "src" / "db"), "db", False)
    # another port, or nodes that share none: fine; replacing a module by itself: fine
    install(paths, folder(tmp_path, "db2", mirror("[beta, gamma]", 7361)), None, False)
    install(paths, tmp_path / "src" / "web", "web", True)


def test_a_replication_network_that_differs_is_no_clash(tmp_path: Path, paths: Paths) -> None:
    install(paths, folder(tmp_path, "web", mirror()), None, False)
    other = mirror("[alpha, beta]", extra="  network: repl\n")
    install(paths, folder(tmp_path, "db", other), None, False)


def test_vips_of_two_modules_must_differ(tmp_path: Path, paths: Paths) -> None:
    vip = "vips: [{address: 10.0.0.100/24, network: lan}]\n"
    install(
        paths, folder(tmp_path, "web", "kind: mirror\nnodes: [alpha, beta]\n" + vip), None, False
    )
    with pytest.raises(HakitError, match=r"VIP 10\.0\.0\.100/24 is already used by module web"):
        install(
            paths, folder(tmp_path, "db", "kind: mirror\nnodes: [beta, gamma]\n" + vip), None, False
        )


def cluster(networks: dict[str, object] | None = None) -> Cluster:
    data: dict[str, object] = {
        "cluster": "c",
        "networks": networks or {"lan": {}, "repl": {}},
        "nodes": {n: {"addresses": a} for n, a in NODES.items()},
    }
    return Cluster.model_validate(data)


def errors(tmp_path: Path, text: str, c: Cluster) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_module(folder(tmp_path, "m", text), c)
    return [str(i) for i in e.value.issues]


def test_the_replication_port_may_not_be_the_api_port(tmp_path: Path) -> None:
    [msg] = errors(tmp_path, mirror(port=7351), cluster())
    assert "m/module.yaml:5: replication.port = 7351: is the cluster's API port" in msg


def test_a_witness_on_a_node_may_not_use_the_heartbeat_port(tmp_path: Path) -> None:
    text = (
        "kind: mirror\nnodes: [alpha, beta]\n"
        "split_brain:\n  witness: {addresses: [10.0.0.3], port: 7350}\n"
    )
    [msg] = errors(tmp_path, text, cluster())
    assert "split_brain.witness.port = 7350: the witness runs on a cluster node (10.0.0.3)" in msg


@pytest.mark.parametrize(
    ("vip", "networks", "expected"),
    [
        (
            "10.9.0.5/24",
            {},
            "vips[0].address = 10.9.0.5/24: outside network lan's subnet: alpha's address on lan "
            "is 10.0.0.1, not in the VIP's subnet 10.9.0.0/24",
        ),
        (
            "10.0.5.5/32",
            {"lan": {"subnet": "10.0.0.0/24"}},
            "vips[0].address = 10.0.5.5/32: outside network lan's subnet 10.0.0.0/24",
        ),
    ],
)
def test_a_vip_outside_its_networks_subnet_is_refused_with_its_line(
    tmp_path: Path, vip: str, networks: dict[str, object], expected: str
) -> None:
    text = f"kind: mirror\nnodes: [alpha, beta]\nvips:\n  - address: {vip}\n    network: lan\n"
    c = cluster(networks={"lan": {}, "repl": {}, **networks})
    [msg] = errors(tmp_path, text, c)
    assert "m/module.yaml:4: " + expected in msg
    assert "or name the `interface`" in msg


@pytest.mark.parametrize(
    ("vip", "networks"),
    [
        ("10.0.0.100/24", {}),
        ("10.0.0.100/32", {}),  # a host prefix without a declared subnet: not checkable
        ("10.0.0.100/32", {"lan": {"subnet": "10.0.0.0/24"}}),
    ],
)
def test_vips_inside_their_subnet_load(
    tmp_path: Path, vip: str, networks: dict[str, object]
) -> None:
    text = f"kind: mirror\nnodes: [alpha, beta]\nvips:\n  - address: {vip}\n    network: lan\n"
    load_module(folder(tmp_path, "m", text), cluster(networks={"lan": {}, "repl": {}, **networks}))


def test_a_vip_on_a_named_interface_is_not_checked_against_a_network(tmp_path: Path) -> None:
    text = "kind: mirror\nnodes: [alpha, beta]\nvips: [{address: 192.0.2.7/24, interface: eth9}]\n"
    load_module(folder(tmp_path, "m", text), cluster())


def test_node_addresses_must_be_inside_a_declared_subnet() -> None:
    c = cluster(networks={"lan": {"subnet": "10.0.0.0/31"}, "repl": {}})
    problems = check_topology(c)
    assert [p.loc for p in problems] == [
        ("nodes", "beta", "addresses", "lan"),
        ("nodes", "gamma", "addresses", "lan"),
    ]
    assert problems[0].expected == "must be inside network lan's subnet 10.0.0.0/31"


# -- health probes (docs/cloud.md) ---------------------------------------------------------------


def probe(port: int, bind: str = "") -> str:
    return f"health_probe:\n  port: {port}\n" + (f"  bind: [{bind}]\n" if bind else "")


def test_two_modules_with_one_health_probe_port_on_a_node_are_refused(
    tmp_path: Path, paths: Paths
) -> None:
    install(paths, folder(tmp_path, "web", mirror(extra=probe(9010))), None, False)
    farm = (
        "kind: farm\nnodes: [beta, gamma]\nvips: [{address: 10.0.0.200/24, network: lan}]\n"
        "rules: [{protocol: tcp, port: 80}]\n" + probe(9010, "10.0.0.2")
    )
    with pytest.raises(HakitError) as e:
        install(paths, folder(tmp_path, "shop", farm), None, False)
    msg = str(e.value)
    assert (
        "module shop and module web both use TCP port 9010 on beta (10.0.0.2 and 0.0.0.0) for "
        "the health probe of module shop and the health probe of module web" in msg
    )
    assert "give module shop another health_probe.port" in msg
    # another port, or an address of the other family: fine
    install(paths, folder(tmp_path, "shop2", farm.replace("9010", "9011")), None, False)
    v6 = mirror("[beta, gamma]", 7361, probe(9010, "'::'"))
    install(paths, folder(tmp_path, "v6", v6), None, False)


def test_a_health_probe_on_a_replication_listener_is_refused(tmp_path: Path, paths: Paths) -> None:
    install(paths, folder(tmp_path, "web", mirror()), None, False)
    with pytest.raises(HakitError, match=r"TCP port 7360 on beta \(0\.0\.0\.0 and 10\.0\.0\.2\)"):
        install(paths, folder(tmp_path, "db", mirror("[beta, gamma]", 7361, probe(7360))), None,
                False)  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (probe(7351), "health_probe.port = 7351: is the cluster's API port"),
        (probe(7360), "health_probe.port = 7360: is this module's replication.port"),
        ("health_probe: {port: 9010, path: x}\n", "health_probe.path = 'x'"),
        ("health_probe: {port: 9010, bind: []}\n", "health_probe.bind"),
    ],
)
def test_health_probe_settings_are_checked(tmp_path: Path, extra: str, expected: str) -> None:
    [msg] = errors(tmp_path, mirror(extra=extra), cluster())
    assert expected in msg


# -- VIP movers ---------------------------------------------------------------------------------

AWS = (
    "kind: mirror\nnodes: [alpha, beta]\nvips:\n  - address: 10.0.0.100/24\n    network: lan\n"
    "    mover:\n      cloud: aws\n      region: eu-west-1\n"
)


def test_a_valid_aws_mover_loads(tmp_path: Path) -> None:
    text = AWS + "      nodes: {alpha: {eni: eni-0123456789abcdef0}, beta: {eni: eni-12345678}}\n"
    mf = load_module(folder(tmp_path, "m", text), cluster())
    mover = mf.config.vips[0].mover
    assert isinstance(mover, AwsMover)
    assert mover.secondary_ip


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("      nodes: {alpha: {eni: eni-12345678}}\n", "vips[0].mover.nodes: an entry for module"),
        (
            "      nodes: {alpha: {eni: eni-12345678}, beta: {eni: eni-x}}\n",
            "vips[0].mover.aws.nodes.beta.eni = 'eni-x'",
        ),
        (
            "      nodes: {alpha: {eni: eni-12345678}, beta: {eni: eni-12345679}, gamma: "
            "{eni: eni-1234567a}}\n",
            "vips[0].mover.nodes.gamma = gamma: a node of this module",
        ),
        (
            "      secondary_ip: false\n      nodes: {alpha: {eni: eni-12345678}, beta: "
            "{eni: eni-12345679}}\n",
            "vips[0].mover.route_tables = []: at least one route table",
        ),
        (
            "      endpoint: http://10.0.0.9:5000\n      nodes: {alpha: {eni: eni-12345678}, "
            "beta: {eni: eni-12345679}}\n",
            "plain `http://` only to a loopback address",
        ),
        ("      password: x\n", "password"),
    ],
)
def test_aws_mover_settings_are_checked(tmp_path: Path, extra: str, expected: str) -> None:
    msgs = errors(tmp_path, AWS + extra, cluster())
    assert any(expected in m for m in msgs), msgs


def test_a_farm_vip_has_no_mover(tmp_path: Path) -> None:
    text = (
        "kind: farm\nnodes: [alpha, beta]\nrules: [{protocol: tcp, port: 80}]\n"
        + AWS.split("\n", 2)[2]
        + "      nodes: {alpha: {eni: eni-12345678}, beta: {eni: eni-12345679}}\n"
    )
    [msg] = errors(tmp_path, text, cluster())
    assert "vips[0].mover.cloud = aws: no mover for a farm VIP" in msg


def test_a_gcp_route_needs_its_network(tmp_path: Path) -> None:
    text = (
        "kind: mirror\nnodes: [alpha, beta]\nvips:\n  - address: 10.0.0.100/24\n    network: lan\n"
        "    mover:\n      cloud: gcp\n      project: my-project\n      mode: route\n"
        "      nodes:\n        alpha: {instance: a, zone: europe-west1-b}\n"
        "        beta: {instance: b, zone: europe-west1-c}\n"
    )
    [msg] = errors(tmp_path, text, cluster())
    assert "vips[0].mover.network: the VPC network of the route" in msg
