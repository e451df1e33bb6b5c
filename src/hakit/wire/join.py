"""The join protocol's messages: one JSON object per line, each bounded, inside TLS.

1. member -> joiner, right after the TLS handshake: `{"hakit": "join", "v": 1, "cluster": NAME,
   "node": NODE, "ca": PEM}` — the CA certificate, so that the joiner can check the member's
   certificate against the CA fingerprint of its token (`tls.member_node`);
2. joiner -> member, only once that check passed: `{"token": "ID-SECRET"}`;
3. member -> joiner: `{"ok": true, "node": NODE, "cluster_yaml": TEXT, "secret": HEX}` (the
   secret's bytes in hex) or
   `{"ok": false, "error": REASON}`; then the member closes the connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

VERSION = 1
HELLO_LIMIT = 16 * 1024
REQUEST_LIMIT = 512
ANSWER_LIMIT = 4 * 1024 * 1024  # cluster.yaml is at most 1 MiB (config.safeyaml), escaped


class JoinProtocolError(ValueError):
    pass


@dataclass(frozen=True)
class Hello:
    cluster: str
    node: str
    ca_pem: str


@dataclass(frozen=True)
class Admitted:
    node: str
    cluster_yaml: str
    secret: bytes


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _object(line: bytes, limit: int, what: str) -> dict[str, Any]:
    if len(line) > limit:
        raise JoinProtocolError(f"{what} longer than {limit} bytes")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        raise JoinProtocolError(f"{what} is not a JSON object") from None
    if not isinstance(obj, dict):
        raise JoinProtocolError(f"{what} is not a JSON object")
    return obj


def _text(obj: dict[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise JoinProtocolError(f"{what} has no {key}")
    return value


def hello(cluster: str, node: str, ca_pem: str) -> bytes:
    return encode({"hakit": "join", "v": VERSION, "cluster": cluster, "node": node, "ca": ca_pem})


def decode_hello(line: bytes) -> Hello:
    obj = _object(line, HELLO_LIMIT, "the member's greeting")
    if obj.get("hakit") != "join":
        raise JoinProtocolError("not a hakit join listener")
    if obj.get("v") != VERSION:
        raise JoinProtocolError(
            f"join protocol version {obj.get('v')!r}; this hakit speaks {VERSION}"
        )
    what = "the member's greeting"
    return Hello(_text(obj, "cluster", what), _text(obj, "node", what), _text(obj, "ca", what))


def request(credential: str) -> bytes:
    return encode({"token": credential})


def decode_request(line: bytes) -> str:
    return _text(_object(line, REQUEST_LIMIT, "the join request"), "token", "the join request")


def admitted(node: str, cluster_yaml: str, secret: bytes) -> bytes:
    return encode({"ok": True, "node": node, "cluster_yaml": cluster_yaml, "secret": secret.hex()})


def refused(reason: str) -> bytes:
    return encode({"ok": False, "error": reason})


def decode_answer(line: bytes) -> Admitted | str:
    """The member's answer: `Admitted`, or the reason it refused."""
    obj = _object(line, ANSWER_LIMIT, "the member's answer")
    if obj.get("ok") is not True:
        return _text(obj, "error", "the member's refusal")
    what = "the member's answer"
    try:
        secret = bytes.fromhex(_text(obj, "secret", what))
    except ValueError:
        raise JoinProtocolError(f"{what} has a malformed secret") from None
    return Admitted(_text(obj, "node", what), _text(obj, "cluster_yaml", what), secret)
