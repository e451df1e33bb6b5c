"""MoverPort contract: the same assertions against the fake cloud and every real mover.

The AWS mover talks to the real EC2 emulator `moto_server` (started here on 127.0.0.1, stopped
by PID); the Azure and GCP movers talk to a local HTTP server that replays their REST APIs'
documented requests and responses (`tests/contract/replay.py`, fixtures in
`tests/contract/fixtures/`). `CloudVips` puts a mover behind the `VipPort` the runners use.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hakit.adapters.movers import CloudVips, MoverPort, movers_for
from hakit.adapters.vip import InUse, Probe, Vip, VipError
from hakit.config.cloud import AwsMover
from hakit.config.vips import VirtualIp
from hakit.testing.fakes import FakeCloud, FakeVips
from tests.contract.clouds import BlackHole, MotoServer

VIP = Vip("10.0.1.100", 24, local_address="10.0.1.11")
NODES = ("node1", "node2")


@dataclass
class World:
    """Two module nodes' movers on one cloud, and the cloud's own answer of who holds VIP."""

    mover: Callable[[str], MoverPort]
    truth: Callable[[], set[str]]  # the holder ids of VIP, as the cloud itself says
    ids: dict[str, str]  # node -> holder id
    failing: Callable[[], MoverPort]  # node1's mover, whose API answers with an error
    unreachable: Callable[[], MoverPort]  # node1's mover, whose API endpoint is closed
    hanging: Callable[[], MoverPort]  # node1's mover, whose API never answers (timeout 1 s)
    error: str  # what an API error says (the cloud's code)


# -- the fake --------------------------------------------------------------------------------


def fake_world() -> World:
    cloud = FakeCloud({"node1": "if-1", "node2": "if-2"})
    broken = FakeCloud(cloud.ids)
    broken.fail("fake: InvalidNetworkInterfaceID.NotFound")
    hung = FakeCloud(cloud.ids)
    hung.fail("fake: did not answer within 1 s")
    down = FakeCloud(cloud.ids)
    down.fail("fake: cannot reach the API")
    return World(
        mover=cloud.mover,
        truth=lambda: {cloud.where[VIP.address]} if VIP.address in cloud.where else set(),
        ids=cloud.ids,
        failing=lambda: broken.mover("node1"),
        unreachable=lambda: down.mover("node1"),
        hanging=lambda: hung.mover("node1"),
        error="InvalidNetworkInterfaceID.NotFound",
    )


# -- AWS, against moto_server -----------------------------------------------------------------


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    pytest.importorskip("moto")
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3's default chain finds these (the environment): no file of hakit's holds them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def aws_world(moto: MotoServer, mode: str) -> World:
    import boto3

    moto.reset()
    ec2 = boto3.client("ec2", region_name="eu-west-1", endpoint_url=moto.url)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    enis = {
        n: ec2.create_network_interface(SubnetId=subnet, PrivateIpAddress=f"10.0.1.{11 + i}")[
            "NetworkInterface"
        ]["NetworkInterfaceId"]
        for i, n in enumerate(NODES)
    }
    table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]

    def cfg(endpoint: str, timeout: float = 10.0, eni1: str | None = None) -> AwsMover:
        nodes = {n: {"eni": e} for n, e in enis.items()}
        if eni1 is not None:
            nodes["node1"] = {"eni": eni1}
        return AwsMover.model_validate(
            {
                "cloud": "aws",
                "region": "eu-west-1",
                "secondary_ip": mode != "route",
                "route_tables": [table] if mode != "secondary-ip" else [],
                "nodes": nodes,
                "endpoint": endpoint,
                "timeout": timeout,
            }
        )

    from hakit.adapters.aws import AwsVips

    def truth() -> set[str]:
        held: set[str] = set()
        if mode != "route":
            for i in ec2.describe_network_interfaces(NetworkInterfaceIds=list(enis.values()))[
                "NetworkInterfaces"
            ]:
                if any(a["PrivateIpAddress"] == VIP.address for a in i["PrivateIpAddresses"]):
                    held.add(i["NetworkInterfaceId"])
        if mode != "secondary-ip":
            routes = ec2.describe_route_tables(RouteTableIds=[table])["RouteTables"][0]["Routes"]
            for r in routes:
                if r.get("DestinationCidrBlock") == f"{VIP.address}/32":
                    held.add(r["NetworkInterfaceId"])
        return held

    holes: list[BlackHole] = []

    def hanging() -> MoverPort:
        hole = BlackHole()
        holes.append(hole)
        return AwsVips(cfg(hole.url, timeout=1.0), "node1")

    def unreachable() -> MoverPort:
        hole = BlackHole()
        url = hole.url
        hole.close()  # nobody listens there any more
        return AwsVips(cfg(url, timeout=5.0), "node1")

    world = World(
        mover=lambda n: AwsVips(cfg(moto.url), n),
        truth=truth,
        ids=enis,
        failing=lambda: AwsVips(cfg(moto.url, eni1="eni-0000000000000dead"), "node1"),
        unreachable=unreachable,
        hanging=hanging,
        error="InvalidNetworkInterfaceID.NotFound",
    )
    world.holes = holes  # type: ignore[attr-defined]
    return world


# -- Azure and GCP, against their replayed REST APIs ---------------------------------------------

SUBSCRIPTION = "00000000-1111-2222-3333-444444444444"


def azure_world(monkeypatch: pytest.MonkeyPatch, closing: list[Callable[[], None]]) -> World:
    pytest.importorskip("azure.identity")
    from hakit.adapters.azure import AzureVips
    from hakit.config.cloud import AzureMover
    from tests.contract.replay import AzureReplay

    nics = {"node1": "nic-node1", "node2": "nic-node2"}
    replay = AzureReplay(SUBSCRIPTION, "rg1", {"nic-node1": "10.0.1.11", "nic-node2": "10.0.1.12"})
    closing.append(replay.close)
    # Azure's standard chain finds a managed identity (App Service style) in the environment
    for var in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "MSI_ENDPOINT",
                "AZURE_FEDERATED_TOKEN_FILE", "IDENTITY_SERVER_THUMBPRINT"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", replay.url + "/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", replay.header)

    def mover(node: str, endpoint: str = replay.url, timeout: float = 10.0) -> MoverPort:
        cfg = AzureMover.model_validate(
            {
                "cloud": "azure",
                "subscription": SUBSCRIPTION,
                "resource_group": "rg1",
                "nodes": {n: {"nic": nic} for n, nic in nics.items()},
                "endpoint": endpoint,
                "timeout": timeout,
            }
        )
        return AzureVips(cfg, node)

    def failing() -> MoverPort:
        replay.fail(403, "azure/error-forbidden.json", subscription=SUBSCRIPTION, group="rg1")
        return mover("node1")

    def hanging() -> MoverPort:
        replay.hang()
        return mover("node1", timeout=1.0)

    def unreachable() -> MoverPort:
        hole = BlackHole()
        hole.close()
        return mover("node1", endpoint=hole.url)

    return World(
        mover=mover,
        truth=lambda: {n for n in replay.nics if VIP.address in replay.addresses(n)},
        ids=nics,
        failing=failing,
        unreachable=unreachable,
        hanging=hanging,
        error="HTTP 403: AuthorizationFailed: The client does not have authorization",
    )


def gcp_world(
    monkeypatch: pytest.MonkeyPatch, closing: list[Callable[[], None]], tmp: Path, mode: str
) -> World:
    pytest.importorskip("google.auth")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from hakit.adapters.gcp import GcpVips
    from hakit.config.cloud import GcpMover
    from tests.contract.replay import GcpReplay

    zones = {"node1": "europe-west1-b", "node2": "europe-west1-c"}
    replay = GcpReplay(
        "my-project",
        {"inst-1": (zones["node1"], "10.0.1.11"), "inst-2": (zones["node2"], "10.0.1.12")},
    )
    closing.append(replay.close)
    # Application Default Credentials: a service account key file named by the environment
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    account = {
        "type": "service_account",
        "project_id": "my-project",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": "hakit@my-project.iam.gserviceaccount.com",
        "client_id": "123456789",
        "token_uri": replay.url + "/token",
    }
    creds = tmp / "sa.json"
    creds.write_text(json.dumps(account))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp / "gcloud"))
    ids = {n: f"zones/{zones[n]}/instances/inst-{n[-1]}" for n in NODES}

    def mover(node: str, endpoint: str = replay.url, timeout: float = 10.0) -> MoverPort:
        cfg = GcpMover.model_validate(
            {
                "cloud": "gcp",
                "project": "my-project",
                "mode": mode,
                "network": "default",
                "nodes": {n: {"instance": f"inst-{n[-1]}", "zone": zones[n]} for n in NODES},
                "endpoint": endpoint,
                "timeout": timeout,
            }
        )
        return GcpVips(cfg, node)

    def truth() -> set[str]:
        if mode == "route":
            route = replay.routes.get("hakit-10-0-1-100")
            if route is None:
                return set()
            hop = route["nextHopInstance"]
            return {hop[hop.index("zones/") :]}
        return {
            f"zones/{z}/instances/{i}"
            for (z, i) in replay.instances
            if f"{VIP.address}/32" in replay.aliases(z, i)
        }

    def failing() -> MoverPort:
        replay.fail(403, "gcp/error-forbidden.json", project="my-project", zone="z", instance="i")
        return mover("node1")

    def hanging() -> MoverPort:
        replay.hang()
        return mover("node1", timeout=1.0)

    def unreachable() -> MoverPort:
        hole = BlackHole()
        hole.close()
        return mover("node1", endpoint=hole.url)

    return World(
        mover=mover,
        truth=truth,
        ids=ids,
        failing=failing,
        unreachable=unreachable,
        hanging=hanging,
        error="HTTP 403: PERMISSION_DENIED: Required 'compute.instances.updateNetworkInterface'",
    )


WORLDS = [
    "fake",
    "aws-secondary-ip",
    "aws-route",
    "aws-both",
    "azure",
    "gcp-alias-ip",
    "gcp-route",
]


@pytest.fixture(params=WORLDS)
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    kind: str = request.param
    if kind == "fake":
        yield fake_world()
        return
    if kind.startswith("aws-"):
        request.getfixturevalue("aws_env")
        w = aws_world(request.getfixturevalue("moto"), kind.removeprefix("aws-"))
        try:
            yield w
        finally:
            for hole in w.holes:  # type: ignore[attr-defined]
                hole.close()
        return
    closing: list[Callable[[], None]] = []
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    try:
        if kind == "azure":
            yield azure_world(monkeypatch, closing)
        else:
            tmp: Path = request.getfixturevalue("tmp_path")
            yield gcp_world(monkeypatch, closing, tmp, kind.removeprefix("gcp-"))
    finally:
        for close in closing:
            close()


# -- the contract ----------------------------------------------------------------------------


def test_acquire_twice_moves_once(world: World) -> None:
    m = world.mover("node1")
    assert m.holder(VIP) is None
    assert m.acquire(VIP) is True
    assert m.acquire(VIP) is False
    assert m.holder(VIP) == m.mine == world.ids["node1"]
    assert world.truth() == {world.ids["node1"]}


def test_release_twice_releases_once(world: World) -> None:
    m = world.mover("node1")
    m.acquire(VIP)
    assert m.release(VIP) is True
    assert m.release(VIP) is False
    assert m.holder(VIP) is None
    assert world.truth() == set()


def test_takeover_from_the_other_node(world: World) -> None:
    """The primary died holding the VIP: the other node takes it, and it is on one node only."""
    m1, m2 = world.mover("node1"), world.mover("node2")
    m1.acquire(VIP)
    assert m2.holder(VIP) == world.ids["node1"]
    assert m2.node_of(world.ids["node1"]) == "node1"
    assert m2.acquire(VIP) is True
    assert world.truth() == {world.ids["node2"]}
    assert m1.holder(VIP) == world.ids["node2"]
    assert m1.release(VIP) is False  # an old primary's release never takes it from the new one
    assert world.truth() == {world.ids["node2"]}
    assert m1.node_of("eni-00000000") is None


def test_an_api_error_is_a_clear_vip_error(world: World) -> None:
    with pytest.raises(VipError, match=world.error):
        world.failing().acquire(VIP)
    assert world.truth() == set()


def test_an_unreachable_api_is_a_clear_vip_error(world: World) -> None:
    with pytest.raises(VipError) as e:
        world.unreachable().acquire(VIP)
    assert "reach" in str(e.value) or "connect" in str(e.value).lower()


def test_an_api_that_never_answers_times_out(world: World) -> None:
    m = world.hanging()
    with pytest.raises(VipError, match=r"did not answer within 1 s"):
        m.acquire(VIP)
    with pytest.raises(VipError, match=r"did not answer within 1 s"):
        m.holder(VIP)


# -- behind the VipPort --------------------------------------------------------------------------


def node_vips(world: World, node: str, **kw: Any) -> tuple[CloudVips, FakeVips]:
    local = FakeVips({"eth0": [f"10.0.1.{11 + NODES.index(node)}/24"]})
    vip = Vip(VIP.address, 24, local_address=f"10.0.1.{11 + NODES.index(node)}")
    return CloudVips(local, {vip.address: world.mover(node)}, **kw), local


def test_cloud_vips_add_and_remove_both_places(world: World) -> None:
    vips, local = node_vips(world, "node1")
    vip = Vip(VIP.address, 24, local_address="10.0.1.11")
    assert vips.add(vip) is True
    assert vips.add(vip) is False
    assert "10.0.1.100/24" in local.addresses("eth0")
    assert vips.present(vip)
    assert world.truth() == {world.ids["node1"]}
    assert vips.remove(vip) is True
    assert vips.remove(vip) is False
    assert world.truth() == set()
    assert local.addresses("eth0") == ["10.0.1.11/24"]


def test_cloud_vips_probe_asks_the_cloud(world: World) -> None:
    """No ARP probe in a VPC: the cloud says who holds the address, the peer or a stranger."""
    v1, _ = node_vips(world, "node1")
    v2, _ = node_vips(world, "node2")
    vip2 = Vip(VIP.address, 24, local_address="10.0.1.12")
    assert v2.probe(vip2, Probe()) is None
    v1.add(Vip(VIP.address, 24, local_address="10.0.1.11"))
    found = v2.probe(vip2, Probe())
    assert found == InUse(world.ids["node1"], "node1", "cloud holder", "asked the cloud's API")
    v2.add(vip2)
    assert v2.probe(vip2, Probe()) is None  # ours now


def test_cloud_vips_present_sees_a_takeover_at_the_next_check(world: World) -> None:
    now = [0.0]
    v1, _ = node_vips(world, "node1", check_every=10.0, clock=lambda: now[0])
    v2, _ = node_vips(world, "node2")
    vip1 = Vip(VIP.address, 24, local_address="10.0.1.11")
    v1.add(vip1)
    v2.add(Vip(VIP.address, 24, local_address="10.0.1.12"))
    assert v1.present(vip1)  # the last answer (no API call before check_every)
    now[0] = 10.0
    assert not v1.present(vip1)  # the cloud now delivers it to node2


def test_a_failed_acquire_leaves_no_address_behind() -> None:
    cloud = FakeCloud({"node1": "if-1", "node2": "if-2"})
    local = FakeVips({"eth0": ["10.0.1.11/24"]})
    vips = CloudVips(local, {VIP.address: cloud.mover("node1")})
    cloud.fail("AWS: moving 10.0.1.100: UnauthorizedOperation")
    with pytest.raises(VipError, match="UnauthorizedOperation"):
        vips.add(VIP)
    assert local.addresses("eth0") == ["10.0.1.11/24"]


def test_vips_without_a_mover_go_to_the_interfaces_only() -> None:
    local = FakeVips({"eth0": ["10.0.1.11/24"]})
    vips = CloudVips(local, {})
    assert vips.add(VIP)
    assert vips.present(VIP)
    assert vips.held() == [Vip("10.0.1.100", 24, interface="eth0")]


def test_movers_are_built_from_the_configuration(aws_env: None) -> None:
    pytest.importorskip("boto3")
    vip = VirtualIp.model_validate(
        {
            "address": "10.0.1.100/24",
            "network": "lan",
            "mover": {
                "cloud": "aws",
                "region": "eu-west-1",
                "nodes": {"node1": {"eni": "eni-12345678"}, "node2": {"eni": "eni-12345679"}},
            },
        }
    )
    plain = VirtualIp.model_validate({"address": "10.0.1.101/24", "network": "lan"})
    movers = movers_for((vip, plain), "node2")
    assert list(movers) == ["10.0.1.100"]
    assert movers["10.0.1.100"].mine == "eni-12345679"


def test_a_missing_cloud_package_is_a_clear_error(tmp_path: Path) -> None:
    """hakit[aws] not installed: the module is refused with what to install (run in a Python
    without boto3: a child interpreter with the import blocked)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['boto3'] = None\n"
        "from hakit.adapters.aws import AwsVips\n"
        "from hakit.config.cloud import AwsMover\n"
        "cfg = AwsMover.model_validate({'cloud': 'aws', 'region': 'eu-west-1', "
        "'nodes': {'a': {'eni': 'eni-12345678'}}})\n"
        "try:\n    AwsVips(cfg, 'a')\nexcept Exception as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "the AWS VIP mover needs the Python package boto3" in out.stdout, out.stderr
    assert "pip install 'hakit[aws]'" in out.stdout
