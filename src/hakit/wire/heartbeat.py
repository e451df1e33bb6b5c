"""Heartbeat datagrams: a versioned, HMAC-authenticated binary codec. Pure: no I/O.

Layout (network byte order), version 2::

    magic "HK" | version u8 | kind u8 | cluster tag 8 | network tag 4
    sender len u8 + name | receiver len u8 + name
    release len u8 + the sender's hakit release (version 2 only; e.g. "0.2.0")
    boot id 16 (boot start ns u64 + 8 random bytes) | seq u64 | sent_at f64 (wall clock)
    echo 16 (the receiver's boot id as last heard by the sender; zeros if never)
    payload len u16 + payload
    mac 16 (HMAC-SHA256 over everything before it, truncated)

Versions 1 (hakit 0.1) and 2 are both read and written: a node sends each peer the highest
version it has heard from that peer's current boot (version 1 until then) and probes with
version 2 (docs/compatibility.md), so nodes of two consecutive releases run side by side during
a rolling upgrade.

The key is derived from the cluster secret and the cluster name, so two clusters sharing a secret
by mistake still reject each other. The receiver name and the network tag are authenticated: a
packet captured on one network or towards one node cannot be replayed on another.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass
from enum import StrEnum

MAGIC = b"HK"
VERSION = 2  # what this release speaks best
VERSIONS = (1, 2)  # what it reads and writes: its own and the previous release's
MAX_RELEASE = 32
KIND_HEARTBEAT = 1
MAC_LEN = 16
BOOT_LEN = 16
NO_BOOT = bytes(BOOT_LEN)
MAX_NAME = 32
MAX_PAYLOAD = 8192  # keep typical heartbeats under one MTU; larger ones fragment
_HEAD = struct.Struct("!2sBB8s4s")
_BODY = struct.Struct("!16sQd16sH")


class Reject(StrEnum):
    """Why a datagram was dropped (each reason has its own counter)."""

    MALFORMED = "malformed"
    VERSION = "version"
    FOREIGN = "foreign-cluster"
    FORGED = "forged"
    MISDIRECTED = "misdirected"
    WRONG_NETWORK = "wrong-network"
    UNKNOWN_NODE = "unknown-node"
    REPLAYED = "replayed"
    OLD_BOOT = "old-boot"


class DecodeError(Exception):
    def __init__(self, reason: Reject, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Heartbeat:
    sender: str
    receiver: str
    network: str
    boot: bytes
    seq: int
    sent_at: float
    echo: bytes
    payload: bytes = b""
    version: int = VERSION  # of the datagram (1: no release)
    release: str = ""  # the sender's hakit release (version 2)

    @property
    def boot_start_ns(self) -> int:
        return int.from_bytes(self.boot[:8], "big")


def tag(text: str, size: int) -> bytes:
    return hashlib.sha256(text.encode()).digest()[:size]


def derive_key(secret: bytes, cluster: str) -> bytes:
    return hmac.new(secret, b"hakit heartbeat v1|" + cluster.encode(), hashlib.sha256).digest()


def make_boot_id(start_ns: int, random_bytes: bytes) -> bytes:
    """A boot id orders boots of one node by their start time; the random part makes it unique."""
    if len(random_bytes) != 8:
        raise ValueError("boot id needs 8 random bytes")
    return start_ns.to_bytes(8, "big") + random_bytes


class Codec:
    """Encoder/decoder bound to one cluster (name, key) and the local node name."""

    def __init__(self, cluster: str, secret: bytes, local: str) -> None:
        self.cluster = cluster
        self.local = local
        self._key = derive_key(secret, cluster)
        self._cluster_tag = tag("cluster:" + cluster, 8)
        self._net_tags: dict[str, bytes] = {}

    def _net_tag(self, network: str) -> bytes:
        t = self._net_tags.get(network)
        if t is None:
            t = self._net_tags[network] = tag("network:" + network, 4)
        return t

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()[:MAC_LEN]

    def encode(self, hb: Heartbeat) -> bytes:
        sender, receiver = hb.sender.encode(), hb.receiver.encode()
        if len(sender) > MAX_NAME or len(receiver) > MAX_NAME:
            raise ValueError("node names are at most 32 bytes")
        if hb.version not in VERSIONS:
            raise ValueError(f"heartbeat protocol version {hb.version} is not one of {VERSIONS}")
        release = hb.release.encode()[:MAX_RELEASE] if hb.version >= 2 else b""
        extension = bytes((len(release),)) + release if hb.version >= 2 else b""
        if len(hb.payload) > MAX_PAYLOAD:
            raise ValueError(f"heartbeat payload is at most {MAX_PAYLOAD} bytes")
        body = b"".join(
            (
                _HEAD.pack(
                    MAGIC, hb.version, KIND_HEARTBEAT, self._cluster_tag, self._net_tag(hb.network)
                ),
                bytes((len(sender),)),
                sender,
                bytes((len(receiver),)),
                receiver,
                extension,
                _BODY.pack(hb.boot, hb.seq, hb.sent_at, hb.echo, len(hb.payload)),
                hb.payload,
            )
        )
        return body + self._mac(body)

    def decode(self, data: bytes, network: str) -> Heartbeat:
        """Decode and authenticate a datagram received on `network`, or raise `DecodeError`."""
        if len(data) < _HEAD.size + 2 + _BODY.size + MAC_LEN:
            raise DecodeError(Reject.MALFORMED, f"{len(data)} bytes is too short")
        magic, version, kind, cluster_tag, net_tag = _HEAD.unpack_from(data, 0)
        if magic != MAGIC or kind != KIND_HEARTBEAT:
            raise DecodeError(Reject.MALFORMED, "not a hakit heartbeat")
        if version not in VERSIONS:
            raise DecodeError(
                Reject.VERSION,
                f"protocol version {version}, expected one of {', '.join(map(str, VERSIONS))} "
                "(a node of a release too far apart: upgrade one release at a time)",
            )
        if cluster_tag != self._cluster_tag:
            raise DecodeError(Reject.FOREIGN, "heartbeat of another cluster")
        body, mac = data[:-MAC_LEN], data[-MAC_LEN:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise DecodeError(Reject.FORGED, "authentication code does not match the secret")
        # Authenticated from here on: a structural error now is a bug of a peer, not an attack.
        try:
            pos = _HEAD.size
            n = body[pos]
            sender = body[pos + 1 : pos + 1 + n].decode()
            pos += 1 + n
            n = body[pos]
            receiver = body[pos + 1 : pos + 1 + n].decode()
            pos += 1 + n
            release = ""
            if version >= 2:
                n = body[pos]
                if n > MAX_RELEASE:
                    raise ValueError(f"release of {n} bytes")
                release = body[pos + 1 : pos + 1 + n].decode()
                pos += 1 + n
            boot, seq, sent_at, echo, plen = _BODY.unpack_from(body, pos)
            pos += _BODY.size
            payload = body[pos : pos + plen]
            if len(payload) != plen or pos + plen != len(body):
                raise ValueError("payload length mismatch")
        except (IndexError, ValueError, struct.error, UnicodeDecodeError) as e:
            raise DecodeError(Reject.MALFORMED, f"authenticated but malformed: {e}") from None
        if receiver != self.local:
            raise DecodeError(Reject.MISDIRECTED, f"addressed to {receiver!r}, not {self.local!r}")
        if net_tag != self._net_tag(network):
            raise DecodeError(Reject.WRONG_NETWORK, f"sent for another network than {network}")
        return Heartbeat(
            sender, receiver, network, boot, seq, sent_at, echo, payload, version, release
        )


def module_payloads(payload_hex: str) -> dict[str, object]:
    """Every module's publication in a peer's heartbeat payload (hex of JSON `{"m": {module:
    …}}`); empty if the payload is absent or malformed. Bounded: at most `MAX_PAYLOAD` bytes,
    and nesting too deep for the JSON parser is malformed, not an exception."""
    if not isinstance(payload_hex, str) or len(payload_hex) > 2 * MAX_PAYLOAD:
        return {}
    try:
        obj = json.loads(bytes.fromhex(payload_hex))
    except (ValueError, RecursionError):
        return {}
    mods = obj.get("m") if isinstance(obj, dict) else None
    return {str(k): v for k, v in mods.items()} if isinstance(mods, dict) else {}


def module_payload(payload_hex: str, module: str) -> object:
    """What `module` publishes in a peer's heartbeat payload, or None (see `module_payloads`)."""
    return module_payloads(payload_hex).get(module)
