"""FarmPathPort contract: the same assertions against FakeFarmPath and NftFarmPath.

The real adapter runs `nft` and `bridge` inside a fresh network namespace (made and always
deleted by the fixture) with one veth interface `va` carrying the VIP's network.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from hakit.adapters.farm import (
    FarmPath,
    FarmPathError,
    FarmPathPort,
    NftFarmPath,
    Rule,
    ruleset,
    seed_of,
    table_name,
)
from hakit.testing.fakes import FakeFarmPath
from tests.contract import netns

ALL = (1 << 256) - 1
REAL_SKIP = netns.unavailable()
PATH = FarmPath(
    module="web-1",
    vips=("10.202.0.200",),
    interfaces=("va",),
    mac="02:48:0a:ca:00:c8",
    rules=(Rule("tcp", 80, "client-ip-port"), Rule("udp", None, "client-ip")),
    seed=seed_of("web-1"),
)


@pytest.fixture(params=["fake", "real"])
def port(request: pytest.FixtureRequest) -> Iterator[FarmPathPort]:
    if request.param == "fake":
        yield FakeFarmPath()
        return
    if REAL_SKIP:
        pytest.skip(REAL_SKIP)
    ns, peer = netns.new_name("farm"), netns.new_name("farmp")
    with netns.namespaces(ns, peer):
        netns.ip("link", "add", "va", "netns", ns, "type", "veth", "peer", "vb", "netns", peer)
        netns.ip("link", "set", "va", "up", ns=ns)
        netns.ip("addr", "add", "10.202.0.1/24", "dev", "va", ns=ns)
        with netns.inside(ns):  # this thread (and the nft/bridge it runs) in the namespace
            yield NftFarmPath()


def test_install_set_read_remove(port: FarmPathPort) -> None:
    assert port.owned("web-1") is None
    port.install(PATH)
    assert port.owned("web-1") == 0
    port.install(PATH)  # idempotent: replaces, owns nothing
    assert port.owned("web-1") == 0
    for owned in (0b101, 1 << 255 | 1, ALL, 0):
        port.set_buckets(PATH, owned)
        assert port.owned("web-1") == owned
    assert port.remove(PATH) is True
    assert port.owned("web-1") is None
    assert port.remove(PATH) is False


def test_buckets_need_the_filter(port: FarmPathPort) -> None:
    with pytest.raises(FarmPathError):
        port.set_buckets(PATH, 0b1)


@pytest.mark.skipif(REAL_SKIP is not None, reason=str(REAL_SKIP))
def test_real_tables_list_cleanly_and_the_mac_is_in_the_unicast_filter() -> None:
    ns, peer = netns.new_name("farm"), netns.new_name("farmp")
    with netns.namespaces(ns, peer):
        netns.ip("link", "add", "va", "netns", ns, "type", "veth", "peer", "vb", "netns", peer)
        netns.ip("link", "set", "va", "up", ns=ns)
        real = NftFarmPath()
        with netns.inside(ns):
            real.install(PATH)
            real.set_buckets(PATH, 0b11)
            listing = subprocess.run(
                ["nft", "list", "ruleset"], capture_output=True, text=True, timeout=10
            )
            assert listing.returncode == 0, listing.stderr  # `nft list ruleset` must not crash
            assert table_name("web-1") in listing.stdout
            fdb = subprocess.run(
                ["bridge", "fdb", "show", "dev", "va"], capture_output=True, text=True, timeout=10
            )
            assert PATH.mac in fdb.stdout
            real.remove(PATH)
            fdb = subprocess.run(
                ["bridge", "fdb", "show", "dev", "va"], capture_output=True, text=True, timeout=10
            )
            assert PATH.mac not in fdb.stdout


def test_ruleset_hashes_per_rule_and_answers_icmp_once() -> None:
    text = ruleset(PATH)
    assert f"jhash ip saddr . tcp sport mod 256 seed 0x{PATH.seed:08x}" in text
    assert "udp meta mark set jhash ip saddr mod 256" in text
    assert "meta l4proto icmp meta mark set jhash ip saddr mod 256" in text
    assert "ct state established,related accept" in text
    assert "tcp flags & (syn | ack) != syn drop" in text
    assert f"arp saddr ether set {PATH.mac}" in text
    assert 'device "va"' in text
    assert table_name("web-1") != table_name("web_1")  # names that differ stay different
