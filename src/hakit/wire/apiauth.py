"""Authentication of node-to-node API requests with the cluster secret. Pure: no I/O.

A request carries `X-Hakit-Node` (who asks), `X-Hakit-To` (the node it is meant for),
`X-Hakit-Boot` (the boot id of that node's daemon, from `GET /v1/hello`), `X-Hakit-Time` (Unix
time), `X-Hakit-Nonce` (random, used once) and `X-Hakit-Auth`: HMAC-SHA256 over the method, the
path with its query, the target node, the boot id, the time, the nonce and the SHA-256 of the
body, keyed by a key derived from the cluster secret and name (distinct from the heartbeat key).

The receiver accepts a request only if it names this node and this daemon's boot (so a request
replayed to another node, or to the same node after its daemon restarted, is refused), within
`MAX_SKEW` seconds of its own clock, and never accepts a nonce twice within that window. Every
check but the MAC comes before the body is read (`precheck`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import OrderedDict
from dataclasses import dataclass, field

MAX_SKEW = 300.0
NONCES_KEPT = 100_000
MAX_FIELD = 64
HEADERS = (
    "x-hakit-node",
    "x-hakit-to",
    "x-hakit-boot",
    "x-hakit-time",
    "x-hakit-nonce",
    "x-hakit-auth",
)


def api_key(secret: bytes, cluster: str) -> bytes:
    return hmac.new(secret, b"hakit api v1|" + cluster.encode(), hashlib.sha256).digest()


def _mac(key: bytes, method: str, target: str, fields: tuple[str, ...], body: bytes) -> str:
    msg = "\n".join((method.upper(), target, *fields, hashlib.sha256(body).hexdigest()))
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


def sign(
    key: bytes,
    node: str,
    to: str,
    boot: str,
    method: str,
    target: str,
    body: bytes,
    now: float,
    nonce: str,
) -> dict[str, str]:
    """Headers authenticating one request from `node` to node `to` while its daemon runs boot
    `boot` (`target` = path with its query string)."""
    when = f"{now:.3f}"
    return {
        "X-Hakit-Node": node,
        "X-Hakit-To": to,
        "X-Hakit-Boot": boot,
        "X-Hakit-Time": when,
        "X-Hakit-Nonce": nonce,
        "X-Hakit-Auth": _mac(key, method, target, (to, boot, when, nonce), body),
    }


@dataclass
class Verifier:
    """Checks requests meant for node `node` while its daemon runs boot `boot`."""

    key: bytes
    node: str
    boot: str
    _seen: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def precheck(self, headers: dict[str, str], now: float) -> str | None:
        """Everything but the MAC (no body needed): None if it may pass, else why not."""
        missing = [h for h in HEADERS if h not in headers]
        if missing:
            return f"missing authentication headers: {', '.join(missing)}"
        for h in HEADERS:
            value = headers[h]
            if not value.isascii() or not value.isprintable():
                return f"malformed {h} header: not printable ASCII"
            if not 0 < len(value) <= MAX_FIELD:
                return f"malformed {h} header: 1 to {MAX_FIELD} characters"
        if headers["x-hakit-to"] != self.node:
            return f"request meant for node {headers['x-hakit-to']!r}, this is {self.node!r}"
        if headers["x-hakit-boot"] != self.boot:
            return "request signed for another boot of this daemon (it restarted): retry"
        try:
            t = float(headers["x-hakit-time"])
        except ValueError:
            t = math.nan
        if not math.isfinite(t):
            return "malformed x-hakit-time header: not a finite number"
        if abs(now - t) > MAX_SKEW:
            return (
                f"request time is {now - t:+.0f} s away from this node's clock (limit "
                f"{MAX_SKEW:g} s): synchronise the clocks (NTP)"
            )
        if headers["x-hakit-nonce"] in self._seen:
            return "replayed request (nonce already used)"
        return None

    def check(
        self, headers: dict[str, str], method: str, target: str, body: bytes, now: float
    ) -> str | None:
        """None if the request is authentic, fresh and meant for this node and boot, else why
        it is refused; an accepted nonce is never accepted again."""
        why = self.precheck(headers, now)
        if why is not None:
            return why
        fields = tuple(headers[h] for h in HEADERS[1:5])
        if not hmac.compare_digest(
            headers["x-hakit-auth"], _mac(self.key, method, target, fields, body)
        ):
            return "authentication failed: not signed with this cluster's secret"
        while self._seen and next(iter(self._seen.values())) < now - 2 * MAX_SKEW:
            self._seen.popitem(last=False)
        self._seen[headers["x-hakit-nonce"]] = now
        if len(self._seen) > NONCES_KEPT:
            self._seen.popitem(last=False)
        return None
