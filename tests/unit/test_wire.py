"""Heartbeat codec: round trip, and every way a datagram is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hakit.wire import replication as rw
from hakit.wire.heartbeat import NO_BOOT, Codec, DecodeError, Heartbeat, Reject, make_boot_id

SECRET = b"s" * 32
BOOT = make_boot_id(1_000, b"12345678")


def hb(**kw: object) -> Heartbeat:
    base: dict[str, object] = {
        "sender": "node1",
        "receiver": "node2",
        "network": "net1",
        "boot": BOOT,
        "seq": 7,
        "sent_at": 1.5,
        "echo": NO_BOOT,
        "payload": b"",
    }
    base.update(kw)
    return Heartbeat(**base)  # type: ignore[arg-type]


def test_round_trip() -> None:
    data = Codec("c", SECRET, "node1").encode(hb(payload=b"xyz"))
    got = Codec("c", SECRET, "node2").decode(data, "net1")
    assert got == hb(payload=b"xyz")
    assert got.boot_start_ns == 1_000


def reason(
    data: bytes,
    *,
    cluster: str = "c",
    secret: bytes = SECRET,
    local: str = "node2",
    network: str = "net1",
) -> Reject:
    with pytest.raises(DecodeError) as e:
        Codec(cluster, secret, local).decode(data, network)
    return e.value.reason


def test_rejections() -> None:
    data = Codec("c", SECRET, "node1").encode(hb())
    assert reason(data[:10]) is Reject.MALFORMED
    assert reason(b"XX" + data[2:]) is Reject.MALFORMED
    assert reason(data[:2] + b"\x09" + data[3:]) is Reject.VERSION
    assert reason(data, cluster="other") is Reject.FOREIGN
    assert reason(data, secret=b"t" * 32) is Reject.FORGED
    assert reason(data, local="node3") is Reject.MISDIRECTED
    assert reason(data, network="net2") is Reject.WRONG_NETWORK
    flipped = bytearray(data)
    flipped[30] ^= 1
    assert reason(bytes(flipped)) is Reject.FORGED


@given(st.binary(max_size=300))
def test_garbage_never_crashes(data: bytes) -> None:
    with pytest.raises(DecodeError):
        Codec("c", SECRET, "node2").decode(data, "net1")


@given(
    st.integers(0, 2**64 - 1),
    st.floats(allow_nan=False),
    st.binary(max_size=1024),
    st.binary(min_size=16, max_size=16),
)
def test_round_trip_any_values(seq: int, sent_at: float, payload: bytes, echo: bytes) -> None:
    h = hb(seq=seq, sent_at=sent_at, payload=payload, echo=echo)
    assert Codec("c", SECRET, "node2").decode(Codec("c", SECRET, "node1").encode(h), "net1") == h


# --- replication frames: decoded fields the applier hands to the kernel are bounded ---------


@pytest.mark.parametrize(
    "op",
    [
        rw.Op(rw.Kind.WRITE, 1, (1 << 63,), (b"0/f", b"x")),
        rw.Op(rw.Kind.TRUNCATE, 1, ((1 << 64) - 1,), (b"0/f",)),
        rw.Op(rw.Kind.FALLOCATE, 1, (0, 0, 1 << 63), (b"0/f",)),
        rw.Op(rw.Kind.CREATE, 1, (0o644, -2, -1), (b"0/f",)),
        rw.Op(rw.Kind.CHOWN, 1, (0, -7), (b"0/f",)),
        rw.Op(rw.Kind.RENAME, 1, (4,), (b"0/a", b"0/b")),
        rw.Op(rw.Kind.FSYNC, 1, (2,), (b"0/f",)),
        rw.Op(rw.Kind.SUMS, 1, (1 << 30,), (b"0/f", b"")),
    ],
    ids=lambda op: op.kind.name,
)
def test_replication_fields_out_of_range_are_frame_errors(op: rw.Op) -> None:
    with pytest.raises(rw.FrameError, match=op.kind.name):
        rw.Decoder().feed(rw.encode(op))


def test_replication_fields_in_range_decode() -> None:
    ops = [
        rw.Op(rw.Kind.WRITE, 1, ((1 << 63) - 1,), (b"0/f", b"x")),
        rw.Op(rw.Kind.CHOWN, 2, (-1, -1), (b"0/f",)),
        rw.Op(rw.Kind.RENAME, 3, (2,), (b"0/a", b"0/b")),
        rw.Op(rw.Kind.SUMS, 4, (0,), (b"0/f", b"")),
    ]
    assert rw.Decoder().feed(b"".join(rw.encode(o) for o in ops)) == ops
