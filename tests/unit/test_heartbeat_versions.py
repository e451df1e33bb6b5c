"""Heartbeat protocol versions side by side (docs/compatibility.md): a node of this release
reads and writes version 1 (hakit 0.1) and 2, sends each peer the highest version confirmed
from that peer's current boot, and probes with its own."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hakit import __version__
from hakit.core.heartbeat import PROBE_EVERY, Engine, Settings
from hakit.wire.heartbeat import (
    NO_BOOT,
    VERSION,
    Codec,
    DecodeError,
    Heartbeat,
    Reject,
    make_boot_id,
)

SECRET = b"s" * 32


def engine(local: str, peer: str, boot: int) -> Engine:
    s = Settings("c", SECRET, local, 0.2, 1.0, {peer: {"net1": "127.0.0.1"}}, ("net1",))
    return Engine(s, make_boot_id(boot, b"12345678"), seq=0, now=0.0)


def versions_sent(e: Engine) -> list[int]:
    codec = Codec("c", SECRET, next(iter(e.settings.peers)))
    return [codec.decode(o.data, "net1").version for o in e.outgoing(wall=1.0)]


def deliver(sender: Engine, receiver: Engine, now: float) -> None:
    for o in sender.outgoing(wall=now):
        receiver.receive(o.data, "net1", now, now)


def test_both_versions_round_trip_and_a_third_is_refused_with_the_rule() -> None:
    base = Heartbeat("node1", "node2", "net1", make_boot_id(1, b"abcdefgh"), 3, 1.0, NO_BOOT, b"x")
    a, b = Codec("c", SECRET, "node1"), Codec("c", SECRET, "node2")
    got1 = b.decode(a.encode(replace(base, version=1, release="ignored in v1")), "net1")
    assert (got1.version, got1.release, got1.payload) == (1, "", b"x")
    got2 = b.decode(a.encode(replace(base, version=2, release="0.2.0")), "net1")
    assert (got2.version, got2.release, got2.payload) == (2, "0.2.0", b"x")
    data = bytearray(a.encode(replace(base, version=1)))
    data[2] = 3
    with pytest.raises(DecodeError) as e:
        b.decode(bytes(data), "net1")
    assert e.value.reason is Reject.VERSION
    assert "upgrade one release at a time" in e.value.detail


def test_two_nodes_of_this_release_move_to_its_version_at_once() -> None:
    a, b = engine("node1", "node2", 1), engine("node2", "node1", 2)
    assert sorted(versions_sent(a)) == [1, VERSION]  # not confirmed: the oldest, and a probe
    for t in range(3):  # b learns a's boot, echoes it; then each confirms the other
        deliver(a, b, t * 0.2)
        deliver(b, a, t * 0.2 + 0.1)
    assert a.peers["node2"].protocol == VERSION
    assert b.peers["node1"].protocol == VERSION
    assert b.peers["node1"].release == __version__
    assert versions_sent(a) == [VERSION]  # no more probes, no more version 1


def test_a_peer_of_the_previous_release_gets_version_1_and_a_probe_now_and_then() -> None:
    a = engine("node1", "node2", 1)
    old = Codec("c", SECRET, "node2")  # hakit 0.1: writes version 1, rejects version 2
    boot = make_boot_id(5, b"oldboot!")
    for seq in range(1, 4):
        echo = a.boot if seq > 1 else NO_BOOT
        hb = Heartbeat("node2", "node1", "net1", boot, seq, 1.0, echo, b"", version=1)
        a.receive(old.encode(hb), "net1", seq * 0.2, 1.0)
    assert a.peers["node2"].protocol == 1
    rounds = [versions_sent(a) for _ in range(2 * PROBE_EVERY)]
    assert all(1 in r for r in rounds)  # every round in the version it reads
    probes = sum(VERSION in r for r in rounds)
    assert 1 <= probes <= 3  # a probe every PROBE_EVERY rounds, not every round
    # the peer restarts with this release: its new boot speaks version 2 -> so do we
    new = Codec("c", SECRET, "node2")
    boot2 = make_boot_id(9, b"newboot!")
    hb = Heartbeat("node2", "node1", "net1", boot2, 1, 1.0, a.boot, b"", version=2, release="0.2.0")
    a.receive(new.encode(hb), "net1", 5.0, 1.0)
    assert a.peers["node2"].protocol == 2
    assert versions_sent(a) == [VERSION]
