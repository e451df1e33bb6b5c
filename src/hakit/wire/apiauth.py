"""Authentication of node-to-node API requests with the cluster secret. Pure: no I/O.

A request carries `X-Hakit-Node` (who asks), `X-Hakit-Time` (Unix time), `X-Hakit-Nonce`
(random, used once) and `X-Hakit-Auth`: HMAC-SHA256 over the method, the path with its query,
the time, the nonce and the SHA-256 of the body, keyed by a key derived from the cluster secret
and name (distinct from the heartbeat key). The receiver accepts a request only within
`MAX_SKEW` seconds of its own clock and never accepts a nonce twice within that window.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass

MAX_SKEW = 300.0
NONCES_KEPT = 100_000
HEADERS = ("x-hakit-node", "x-hakit-time", "x-hakit-nonce", "x-hakit-auth")


def api_key(secret: bytes, cluster: str) -> bytes:
    return hmac.new(secret, b"hakit api v1|" + cluster.encode(), hashlib.sha256).digest()


def _mac(key: bytes, method: str, target: str, when: str, nonce: str, body: bytes) -> str:
    msg = "\n".join((method.upper(), target, when, nonce, hashlib.sha256(body).hexdigest()))
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


def sign(
    key: bytes, node: str, method: str, target: str, body: bytes, now: float, nonce: str
) -> dict[str, str]:
    """Headers authenticating one request (`target` = path with its query string)."""
    when = f"{now:.3f}"
    return {
        "X-Hakit-Node": node,
        "X-Hakit-Time": when,
        "X-Hakit-Nonce": nonce,
        "X-Hakit-Auth": _mac(key, method, target, when, nonce, body),
    }


@dataclass
class Verifier:
    key: bytes
    _seen: OrderedDict[str, float] | None = None

    def check(
        self, headers: dict[str, str], method: str, target: str, body: bytes, now: float
    ) -> str | None:
        """None if the request is authentic and fresh, else why it is refused."""
        if self._seen is None:
            self._seen = OrderedDict()
        missing = [h for h in HEADERS if h not in headers]
        if missing:
            return f"missing authentication headers: {', '.join(missing)}"
        node, when, nonce, auth = (headers[h] for h in HEADERS)
        if not 0 < len(node) <= 64:
            return "bad X-Hakit-Node"
        try:
            t = float(when)
        except ValueError:
            return "bad X-Hakit-Time"
        if abs(now - t) > MAX_SKEW:
            return (
                f"request time is {now - t:+.0f} s away from this node's clock (limit "
                f"{MAX_SKEW:g} s): synchronise the clocks (NTP)"
            )
        if not hmac.compare_digest(auth, _mac(self.key, method, target, when, nonce, body)):
            return "authentication failed: not signed with this cluster's secret"
        while self._seen and next(iter(self._seen.values())) < now - 2 * MAX_SKEW:
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return "replayed request (nonce already used)"
        self._seen[nonce] = now
        if len(self._seen) > NONCES_KEPT:
            self._seen.popitem(last=False)
        return None
