"""Witness codec: round trips, and every way a datagram is refused, with the right reason."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hakit.wire.heartbeat import Codec as HeartbeatCodec
from hakit.wire.heartbeat import Heartbeat, make_boot_id
from hakit.wire.heartbeat import derive_key as heartbeat_key
from hakit.wire.witness import (
    MAC_LEN,
    MAX_DATAGRAM,
    MAX_REASON,
    DecodeError,
    Op,
    Reject,
    Reply,
    Request,
    decode_reply,
    decode_request,
    derive_key,
    encode_reply,
    encode_request,
)

SECRET = b"s" * 32
KEY = derive_key(SECRET, "shop")
KEYS = {"shop": KEY, "plant": derive_key(SECRET, "plant")}
BOOT = make_boot_id(1_000, b"12345678")
WITNESS_BOOT = make_boot_id(2_000, b"abcdefgh")


def request(**kw: object) -> Request:
    base: dict[str, object] = {
        "cluster": "shop",
        "node": "node1",
        "module": "db",
        "op": Op.ACQUIRE,
        "ttl": 3.0,
        "grace": 0.5,
        "boot": BOOT,
        "seq": 7,
        "sent_at": 1_700_000_000.25,
    }
    base.update(kw)
    return Request(**base)  # type: ignore[arg-type]


def reply(**kw: object) -> Reply:
    base: dict[str, object] = {
        "cluster": "shop",
        "node": "node1",
        "module": "db",
        "op": Op.ACQUIRE,
        "boot": BOOT,
        "seq": 7,
        "granted": False,
        "holder": "node2",
        "remaining": 0.8,
        "reason": "held by node2 for 0.8 s more",
        "witness_boot": WITNESS_BOOT,
    }
    base.update(kw)
    return Reply(**base)  # type: ignore[arg-type]


def rejected(data: bytes, keys: dict[str, bytes] = KEYS) -> Reject:
    with pytest.raises(DecodeError) as e:
        decode_request(data, keys)
    return e.value.reason


def reply_rejected(data: bytes, cluster: str = "shop", key: bytes = KEY) -> Reject:
    with pytest.raises(DecodeError) as e:
        decode_reply(data, cluster, key)
    return e.value.reason


@pytest.mark.parametrize("op", list(Op))
def test_request_round_trip(op: Op) -> None:
    req = request(op=op)
    got = decode_request(encode_request(req, KEY), KEYS)
    assert got == req
    assert got.boot_start_ns == 1_000


def test_reply_round_trip_with_unicode_reason() -> None:
    rep = reply(reason="tenu par nœud2 encore 0,8 s", granted=True, holder="node1")
    assert decode_reply(encode_reply(rep, KEY), "shop", KEY) == rep


def test_a_long_reason_is_cut_on_a_character_boundary() -> None:
    rep = reply(reason="é" * MAX_REASON)
    got = decode_reply(encode_reply(rep, KEY), "shop", KEY)
    assert got.reason == "é" * (MAX_REASON // 2)


def test_keys_differ_by_cluster_and_from_the_heartbeat_key() -> None:
    assert derive_key(SECRET, "shop") != derive_key(SECRET, "plant")
    assert derive_key(SECRET, "shop") != heartbeat_key(SECRET, "shop")


def test_request_of_a_cluster_not_served_is_unknown_cluster() -> None:
    data = encode_request(request(cluster="farm"), derive_key(SECRET, "farm"))
    assert rejected(data) is Reject.UNKNOWN_CLUSTER


def test_request_with_another_clusters_key_is_forged() -> None:
    # Named "shop" but signed with plant's key (a node of plant pretending to be in shop).
    data = encode_request(request(cluster="shop"), KEYS["plant"])
    assert rejected(data) is Reject.FORGED


def test_wrong_secret_is_forged() -> None:
    data = encode_request(request(), derive_key(b"t" * 32, "shop"))
    assert rejected(data) is Reject.FORGED


def test_every_flipped_bit_is_refused() -> None:
    data = encode_request(request(), KEY)
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= bit
            with pytest.raises(DecodeError):
                decode_request(bytes(bad), KEYS)


def test_truncated_requests_are_malformed_or_forged() -> None:
    data = encode_request(request(), KEY)
    for n in range(len(data)):
        assert rejected(data[:n]) in (Reject.MALFORMED, Reject.FORGED, Reject.UNKNOWN_CLUSTER)
    assert rejected(data[:10]) is Reject.MALFORMED


def test_garbage_and_other_protocols_are_malformed() -> None:
    assert rejected(b"") is Reject.MALFORMED
    assert rejected(b"GET / HTTP/1.1\r\n\r\n") is Reject.MALFORMED
    assert rejected(bytes(60)) is Reject.MALFORMED
    assert rejected(b"x" * (MAX_DATAGRAM + 1)) is Reject.MALFORMED


def test_a_heartbeat_is_never_taken_for_a_witness_request() -> None:
    hb = Heartbeat("node1", "node2", "net1", BOOT, 1, 1.0, bytes(16), b"")
    data = HeartbeatCodec("shop", SECRET, "node1").encode(hb)
    assert rejected(data) is Reject.MALFORMED


def test_other_version_is_refused_as_version() -> None:
    data = encode_request(request(), KEY)
    assert rejected(data[:2] + b"\x09" + data[3:]) is Reject.VERSION


def test_a_reply_is_not_a_request_and_back() -> None:
    rep = encode_reply(reply(), KEY)
    assert rejected(rep) is Reject.MALFORMED
    req = encode_request(request(), KEY)
    assert reply_rejected(req) is Reject.MALFORMED


def test_reply_checks() -> None:
    data = encode_reply(reply(), KEY)
    assert reply_rejected(data, cluster="plant", key=KEYS["plant"]) is Reject.UNKNOWN_CLUSTER
    assert reply_rejected(data, key=derive_key(b"t" * 32, "shop")) is Reject.FORGED
    assert reply_rejected(data[:-1]) in (Reject.FORGED, Reject.MALFORMED)
    assert reply_rejected(data[:20]) is Reject.MALFORMED


def _signed(body: bytes) -> bytes:
    import hashlib
    import hmac

    return body + hmac.new(KEY, body, hashlib.sha256).digest()[:MAC_LEN]


def test_authenticated_but_malformed_is_malformed() -> None:
    data = encode_request(request(), KEY)
    body = data[:-MAC_LEN]
    assert rejected(_signed(body + b"extra")) is Reject.MALFORMED
    assert rejected(_signed(body[:-3])) is Reject.MALFORMED
    bad_op = bytearray(body)
    op_at = 4 + 1 + len(b"shop") + 1 + len(b"node1") + 1 + len(b"db")
    bad_op[op_at] = 99
    assert rejected(_signed(bytes(bad_op))) is Reject.MALFORMED
    nan = body[: op_at + 1] + struct.pack("!d", float("nan")) + body[op_at + 9 :]
    assert rejected(_signed(nan)) is Reject.MALFORMED


def test_names_longer_than_32_bytes_cannot_be_sent() -> None:
    with pytest.raises(ValueError, match="longer than 32"):
        encode_request(request(module="m" * 33), KEY)
    with pytest.raises(ValueError, match="boot id"):
        encode_request(request(boot=b"short"), KEY)


names = st.text(st.characters(codec="utf-8"), max_size=8)


@given(
    node=names,
    module=names,
    op=st.sampled_from(list(Op)),
    ttl=st.floats(allow_nan=False, allow_infinity=False),
    seq=st.integers(0, 2**64 - 1),
)
def test_any_request_round_trips(node: str, module: str, op: Op, ttl: float, seq: int) -> None:
    req = request(node=node, module=module, op=op, ttl=ttl, seq=seq)
    assert decode_request(encode_request(req, KEY), KEYS) == req


@given(st.binary(max_size=300))
def test_random_bytes_never_decode(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_request(data, KEYS)
    with pytest.raises(DecodeError):
        decode_reply(data, "shop", KEY)


@pytest.mark.parametrize(("alone", "force"), [(False, False), (True, False), (True, True)])
def test_request_flags_round_trip(alone: bool, force: bool) -> None:
    req = request(alone=alone, force=force)
    assert decode_request(encode_request(req, KEY), KEYS) == req


def test_unknown_request_flags_are_malformed_even_when_authenticated() -> None:
    data = encode_request(request(), KEY)
    body = data[:-16][:-1] + b"\x04"
    forged = body + hmac.new(KEY, body, hashlib.sha256).digest()[:16]
    assert rejected(forged) is Reject.MALFORMED
