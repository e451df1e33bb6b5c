"""ASGI middleware in front of the node API: who is asking, may they, bounded bodies, audit.

Three kinds of client (ADR 0004): root on the unix socket; a node (mutual TLS with a node
certificate, then an HMAC signature bound to this node and boot); a tool or person (TLS without
a client certificate, then an API token). Every check but a node's MAC comes before any body
is read; every refusal is a JSON `{"detail": …}` that closes the connection. Every request that
is not a `GET` (and every refusal of an authenticated client) leaves an audit record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse

from hakit.adapters.httpserver import read_body, refusal_status, replay
from hakit.adapters.tokenstore import TokenStore
from hakit.api import audit
from hakit.core.access import NODES_ONLY, Authenticated, allowed, authenticate, route
from hakit.wire.apiauth import Verifier

log = logging.getLogger("hakit.api")

BODY_LIMIT = 64 * 1024
PACKAGE_LIMIT = 64 * 1024 * 1024
CLUSTER_LIMIT = 1 << 20  # a cluster.yaml (config.safeyaml.MAX_BYTES)
BIG_BODIES = {
    ("POST", "/v1/modules"): PACKAGE_LIMIT,
    ("POST", "/v1/modules/check"): PACKAGE_LIMIT,
    ("POST", "/v1/cluster/check"): CLUSTER_LIMIT,
    ("POST", "/v1/cluster/apply"): CLUSTER_LIMIT,
    ("POST", "/v1/tokens/records"): CLUSTER_LIMIT,
}
USER_HEADER = "x-hakit-on-behalf-of"
RESPONSE_KEPT = 8192  # bytes of an answer read for the audit record's message


def body_limit(method: str, path: str) -> int:
    """The largest body a request may have: a module package, a cluster.yaml, or an ordinary
    request."""
    return BIG_BODIES.get((method, path), BODY_LIMIT)


@dataclass
class Access:
    """What the guard needs besides the node verifier: the token store (None: tokens are not
    accepted) and whether `/metrics` is open to any TLS client."""

    tokens: TokenStore | None = None
    metrics_open: bool = True
    _refused: int = 0
    _refused_logged: float = field(default=0.0)

    def refused_unauthenticated(self, address: str, why: str, now: float) -> None:
        """Counted, logged at most every 10 s (never one record per request: a flood of
        unauthenticated requests must not flood the log)."""
        self._refused += 1
        if now - self._refused_logged >= 10.0:
            log.warning(
                "API: refused %d unauthenticated request(s) recently, the last from %s: %s",
                self._refused,
                address,
                why,
            )
            self._refused, self._refused_logged = 0, now


async def _refuse(scope: Any, send: Any, status: int, why: str) -> None:
    async def nothing() -> Any:
        return {"type": "http.disconnect"}

    # closing the connection: the rest of a refused body is never read
    response = JSONResponse({"detail": why}, status_code=status, headers={"Connection": "close"})
    await response(scope, nothing, send)


def _user(headers: dict[str, str]) -> str | None:
    v = headers.get(USER_HEADER)
    if v is None or not (0 < len(v) <= 64 and v.isascii() and v.isprintable()):
        return None
    return v


def _outcome(status: int, body: bytes) -> tuple[str, str | None]:
    result = "ok" if status < 300 else "error" if status >= 500 else "refused"
    try:
        answer = json.loads(body)
    except ValueError:
        return result, None
    message = None
    if isinstance(answer, dict):
        if answer.get("accepted") is False or answer.get("applied") is False:
            result = "refused"
        for k in ("message", "detail", "error"):
            if isinstance(answer.get(k), str):
                message = answer[k]
                break
        problems = answer.get("problems")
        if message is None and isinstance(problems, list) and problems:
            message = f"{len(problems)} problem(s), the first: {problems[0]}"
    return result, None if message is None else str(message)[: audit.MAX_MESSAGE]


class Guard:
    def __init__(
        self,
        app: Any,
        verifier: Verifier | None,
        now: Callable[[], float],
        access: Access | None = None,
        node: str = "",
    ) -> None:
        """`verifier` None: the unix socket (root only); else the TCP API of `node`."""
        self.app = app
        self.verifier = verifier
        self.now = now
        self.access = access or Access()
        self.node = node

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        state = scope.get("state") or {}
        client = scope.get("client")
        address = client[0] if client else None
        r = route(method, path)
        now = self.now()
        who: dict[str, Any] | None = None  # None: an open request
        node_verifier = None
        if r is not None and r.needs is None:
            pass
        elif self.verifier is None:
            who = {"kind": "local", **state.get("hakit_local", {})}
        elif state.get("hakit_peer"):
            who = {"kind": "node", "node": state["hakit_peer"]}
            node_verifier = self.verifier
            why = node_verifier.precheck(headers, now)
            if why is not None:
                await _refuse(scope, send, 401, why)
                return
            who["via"] = headers.get("x-hakit-node", "")[:64]
        elif r is not None and r.action == "metrics" and self.access.metrics_open:
            pass
        else:
            store = self.access.tokens
            if store is None:
                why = "this API answers only the cluster's nodes"
            elif store.problem is not None:
                why = f"no API token can be checked on this node: {store.problem}"
            else:
                found = authenticate(store.records, headers.get("authorization"), now)
                why = found if isinstance(found, str) else ""
            if why:
                self.access.refused_unauthenticated(address or "?", why, now)
                await _refuse(scope, send, 401, why)
                return
            assert isinstance(found, Authenticated)
            assert store is not None
            rec = found.record
            store.last_used[rec.id] = now
            who = {"kind": "token", "token": rec.id, "name": rec.name, "role": rec.role}
            refusal = allowed(found.role, r)
            if refusal is None and r is not None and r.action in NODES_ONLY:
                refusal = "only the cluster's nodes may do this"
            if refusal is not None:
                if user := _user(headers):
                    who["user"] = user
                self._audit(who, address, method, path, r, 403, "refused", refusal, now)
                await _refuse(scope, send, 403, refusal)
                return
        if who is not None and (user := _user(headers)):
            who["user"] = user
        body = await read_body(receive, headers, body_limit(method, path))
        if body is None:
            return  # the client went away
        if isinstance(body, str):
            await _refuse(scope, send, refusal_status(body), body)
            return
        if node_verifier is not None:
            query = scope["query_string"].decode("latin-1")
            target = path + ("?" + query if query else "")
            why = node_verifier.check(headers, method, target, body, now)
            if why is not None:
                await _refuse(scope, send, 401, why)
                return
        again = replay(body, receive)

        scope = {**scope, "state": {**state, "hakit_who": who or {"kind": "anonymous"}}}
        if who is None or method == "GET":
            await self.app(scope, again, send)
            return
        status, kept = 500, bytearray()

        async def watch(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and len(kept) < RESPONSE_KEPT:
                kept.extend(message.get("body", b"")[: RESPONSE_KEPT - len(kept)])
            await send(message)

        try:
            await self.app(scope, again, watch)
        finally:
            result, message = _outcome(status, bytes(kept))
            self._audit(who, address, method, path, r, status, result, message, now)

    def _audit(
        self,
        who: dict[str, Any],
        address: str | None,
        method: str,
        path: str,
        r: Any,
        status: int,
        result: str,
        message: str | None,
        started: float,
    ) -> None:
        entry: dict[str, Any] = {
            "at": round(started, 3),
            "node": self.node,
            "who": who,
            "address": address,
            "method": method,
            "path": path,
            "action": r.action if r is not None else "unknown",
            **(r.fields if r is not None else {}),
            "status": status,
            "result": result,
            "message": message,
            "duration_ms": round((self.now() - started) * 1000, 1),
        }
        audit.record(entry)
