"""Witness datagrams: a versioned, HMAC-authenticated binary codec. Pure: no I/O.

A node asks the witness for a lease on one of its modules with one UDP datagram (a *request*)
and the witness answers with one datagram (a *reply*). Layout (network byte order), version 1::

    magic "HW" | version u8 | kind u8 (1 request, 2 reply)
    cluster len u8 + name | node len u8 + name | module len u8 + name | op u8
    request: ttl f64 | grace f64 | boot id 16 | seq u64 | sent_at f64 (wall clock)
             flags u8 (bit 0 alone, bit 1 force: see `Request`)
    reply:   boot id 16 | seq u64 (both echoed from the request)
             granted u8 | holder len u8 + name | remaining f64 | reason len u16 + UTF-8
             witness boot id 16
    mac 16 (HMAC-SHA256 over everything before it, truncated)

The cluster name travels in clear: one witness serves many clusters and must know which key
checks the datagram. The key is derived from the cluster secret and the cluster name with a
label of its own (`derive_key`), distinct from the heartbeat key and the magic differs too, so a
heartbeat can never be taken for a witness request, nor a request of one cluster for another's.
Requests and replies share the key; the kind byte is authenticated, so a request cannot be
reflected back to a node as a reply.

Freshness (replayed, old boot, clock skew) needs memory and a clock: it is decided by the
arbiter (`hakit.core.witness.admit`), which uses the same `Reject` reasons.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

MAGIC = b"HW"
VERSION = 2  # 2: the request flags (alone, force)
KIND_REQUEST = 1
KIND_REPLY = 2
MAC_LEN = 16
BOOT_LEN = 16
MAX_NAME = 32
MAX_REASON = 400  # bytes of UTF-8: a sentence, never a payload
MAX_DATAGRAM = 1024  # both kinds fit easily; anything larger is not ours
KEY_LABEL = b"hakit-witness-v1|"

_HEAD = struct.Struct("!2sBB")
_REQUEST = struct.Struct("!dd16sQdB")
FLAG_ALONE, FLAG_FORCE = 1, 2
_ECHO = struct.Struct("!16sQ")
_REMAINING = struct.Struct("!d")
_REASON_LEN = struct.Struct("!H")
MIN_LEN = _HEAD.size + 3 + 1 + MAC_LEN  # header, three empty names, op, mac


class Op(StrEnum):
    """What a node asks of the witness about one (cluster, module) lease."""

    ACQUIRE = "acquire"
    RENEW = "renew"
    RELEASE = "release"
    QUERY = "query"


_OP_CODES = {Op.ACQUIRE: 1, Op.RENEW: 2, Op.RELEASE: 3, Op.QUERY: 4}
_OPS_BY_CODE = {code: op for op, code in _OP_CODES.items()}


class Reject(StrEnum):
    """Why the witness dropped a request without answering (each reason has its own counter)."""

    MALFORMED = "malformed"  # not a witness request, truncated, or garbage
    VERSION = "version"  # another protocol version
    UNKNOWN_CLUSTER = "unknown-cluster"  # a cluster this witness does not serve
    FORGED = "forged"  # the authentication code does not match the cluster's secret
    REPLAYED = "replayed"  # sequence number too far below the highest seen (node and boot)
    DUPLICATE = "duplicate"  # a sequence number already accepted (copies to several addresses)
    OLD_BOOT = "old-boot"  # a boot of the node older than the newest seen
    SKEW = "skew"  # sent_at too far from the witness clock (or a very old capture)
    LIMIT = "limit"  # too many nodes of that cluster tracked at once


class DecodeError(Exception):
    def __init__(self, reason: Reject, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Request:
    """A node's question about the lease of (cluster, module)."""

    cluster: str
    node: str
    module: str
    op: Op
    ttl: float  # seconds the lease should last from its grant
    grace: float  # seconds the node needs to stop the module once its lease is gone
    boot: bytes  # the node's boot id (start ns + random): orders the node's lives
    seq: int  # strictly increasing per boot
    sent_at: float  # the node's wall clock at sending
    alone: bool = False  # the node serves (or asks to serve) the module without a ready
    # secondary: once granted, every other node's copy is outdated (`core/witness.py`)
    force: bool = False  # the operator forced this node primary (`primforce`): its copy is
    # taken as the reference even if another node's was newer

    @property
    def boot_start_ns(self) -> int:
        return int.from_bytes(self.boot[:8], "big")


@dataclass(frozen=True, slots=True)
class Reply:
    """The witness's answer to one request, matched by the echoed (boot, seq)."""

    cluster: str
    node: str
    module: str
    op: Op
    boot: bytes  # echo of the request's boot id
    seq: int  # echo of the request's sequence number
    granted: bool
    holder: str  # "" when nobody holds the lease
    remaining: float  # lease time left as seen by the witness, 0 if none
    reason: str
    witness_boot: bytes


def derive_key(secret: bytes, cluster: str) -> bytes:
    """The per-cluster witness key; its label differs from the heartbeat key's."""
    return hmac.new(secret, KEY_LABEL + cluster.encode(), hashlib.sha256).digest()


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()[:MAC_LEN]


def _name(text: str, what: str) -> bytes:
    raw = text.encode()
    if len(raw) > MAX_NAME:
        raise ValueError(f"{what} {text!r} is longer than {MAX_NAME} bytes")
    return bytes((len(raw),)) + raw


def _boot(boot: bytes) -> bytes:
    if len(boot) != BOOT_LEN:
        raise ValueError(f"a boot id is {BOOT_LEN} bytes, not {len(boot)}")
    return boot


def _head(kind: int, cluster: str, node: str, module: str, op: Op) -> bytes:
    return b"".join(
        (
            _HEAD.pack(MAGIC, VERSION, kind),
            _name(cluster, "cluster name"),
            _name(node, "node name"),
            _name(module, "module name"),
            bytes((_OP_CODES[op],)),
        )
    )


def encode_request(req: Request, key: bytes) -> bytes:
    body = _head(KIND_REQUEST, req.cluster, req.node, req.module, req.op) + _REQUEST.pack(
        req.ttl,
        req.grace,
        _boot(req.boot),
        req.seq,
        req.sent_at,
        (FLAG_ALONE if req.alone else 0) | (FLAG_FORCE if req.force else 0),
    )
    return body + _mac(key, body)


def encode_reply(rep: Reply, key: bytes) -> bytes:
    reason = rep.reason.encode()
    if len(reason) > MAX_REASON:  # cut on a character boundary, never fail an answer
        reason = reason[:MAX_REASON].decode(errors="ignore").encode()
    body = b"".join(
        (
            _head(KIND_REPLY, rep.cluster, rep.node, rep.module, rep.op),
            _ECHO.pack(_boot(rep.boot), rep.seq),
            bytes((1 if rep.granted else 0,)),
            _name(rep.holder, "holder name"),
            _REMAINING.pack(rep.remaining),
            _REASON_LEN.pack(len(reason)),
            reason,
            _boot(rep.witness_boot),
        )
    )
    return body + _mac(key, body)


class _Reader:
    """Sequential reads over a datagram body; any overrun is a `DecodeError(MALFORMED)`."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DecodeError(Reject.MALFORMED, "truncated datagram")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def name(self, what: str) -> str:
        n = self.byte()
        if n > MAX_NAME:
            raise DecodeError(Reject.MALFORMED, f"{what} of {n} bytes (at most {MAX_NAME})")
        try:
            return self.take(n).decode()
        except UnicodeDecodeError:
            raise DecodeError(Reject.MALFORMED, f"{what} is not UTF-8") from None

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        return fmt.unpack(self.take(fmt.size))

    def op(self) -> Op:
        code = self.byte()
        op = _OPS_BY_CODE.get(code)
        if op is None:
            raise DecodeError(Reject.MALFORMED, f"unknown operation code {code}")
        return op


def _open(data: bytes, kind: int) -> tuple[_Reader, str]:
    """Check the unauthenticated header and read the cluster name (needed to pick the key)."""
    what = "request" if kind == KIND_REQUEST else "reply"
    if len(data) > MAX_DATAGRAM:
        raise DecodeError(Reject.MALFORMED, f"{len(data)} bytes is too long for a witness {what}")
    if len(data) < MIN_LEN:
        raise DecodeError(Reject.MALFORMED, f"{len(data)} bytes is too short")
    magic, version, got_kind = _HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise DecodeError(Reject.MALFORMED, f"not a hakit witness {what}")
    if version != VERSION:
        raise DecodeError(Reject.VERSION, f"protocol version {version}, expected {VERSION}")
    if got_kind != kind:
        raise DecodeError(Reject.MALFORMED, f"datagram kind {got_kind}, expected a {what}")
    reader = _Reader(data[:-MAC_LEN], _HEAD.size)
    return reader, reader.name("cluster name")


def _authenticate(data: bytes, key: bytes, cluster: str) -> None:
    if not hmac.compare_digest(data[-MAC_LEN:], _mac(key, data[:-MAC_LEN])):
        raise DecodeError(
            Reject.FORGED, f"authentication code does not match cluster {cluster}'s secret"
        )


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise DecodeError(Reject.MALFORMED, f"{what} is not a finite number")
    return value


def decode_request(data: bytes, keys: Mapping[str, bytes]) -> Request:
    """Decode and authenticate a request for any cluster in `keys`, or raise `DecodeError`."""
    r, cluster = _open(data, KIND_REQUEST)
    key = keys.get(cluster)
    if key is None:
        raise DecodeError(Reject.UNKNOWN_CLUSTER, f"cluster {cluster!r} is not served here")
    _authenticate(data, key, cluster)
    # Authenticated from here on: a structural error now is a bug of a node, not an attack.
    node, module, op = r.name("node name"), r.name("module name"), r.op()
    ttl, grace, boot, seq, sent_at, flags = r.unpack(_REQUEST)
    if r.pos != len(r.data):
        raise DecodeError(Reject.MALFORMED, f"{len(r.data) - r.pos} unexpected trailing bytes")
    if flags & ~(FLAG_ALONE | FLAG_FORCE):
        raise DecodeError(Reject.MALFORMED, f"unknown request flags {flags:#x}")
    return Request(
        cluster,
        node,
        module,
        op,
        _finite(ttl, "ttl"),
        _finite(grace, "grace"),
        boot,
        seq,
        _finite(sent_at, "sent_at"),
        bool(flags & FLAG_ALONE),
        bool(flags & FLAG_FORCE),
    )


def decode_reply(data: bytes, cluster: str, key: bytes) -> Reply:
    """Decode and authenticate a reply from the witness of `cluster`, or raise `DecodeError`."""
    r, got = _open(data, KIND_REPLY)
    if got != cluster:
        raise DecodeError(Reject.UNKNOWN_CLUSTER, f"reply for cluster {got!r}, not {cluster!r}")
    _authenticate(data, key, cluster)
    node, module, op = r.name("node name"), r.name("module name"), r.op()
    boot, seq = r.unpack(_ECHO)
    granted = r.byte()
    holder = r.name("holder name")
    (remaining,) = r.unpack(_REMAINING)
    (n,) = r.unpack(_REASON_LEN)
    try:
        reason = r.take(n).decode()
    except UnicodeDecodeError:
        raise DecodeError(Reject.MALFORMED, "reason is not UTF-8") from None
    witness_boot = r.take(BOOT_LEN)
    if r.pos != len(r.data) or granted > 1:
        raise DecodeError(Reject.MALFORMED, "authenticated but malformed reply")
    return Reply(
        cluster,
        node,
        module,
        op,
        boot,
        seq,
        bool(granted),
        holder,
        _finite(remaining, "remaining"),
        reason,
        witness_boot,
    )
