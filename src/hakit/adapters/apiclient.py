"""A client of a cluster's node API for tools and people: an API token, the cluster CA pinned
by its fingerprint, any node (ADR 0004).

The client reaches the cluster through the first of its node addresses that answers and stays
there while it answers; when it fails it tries the others, so one dead node does not blind it.
The first time, it fetches the CA certificate (`GET /v1/ca`, the one request made before the
server is authenticated: nothing is sent in it) and checks its fingerprint against the pinned
one; from then on every connection verifies the server's certificate against that CA and the
token is sent only inside such connections.
"""

from __future__ import annotations

import hmac
import json
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from hakit.tls import ca_fingerprint

DEFAULT_PORT = 7351


class ClusterUnreachable(Exception):
    """No address of the cluster answered (or none proved to be of the pinned cluster)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors) or "no address to try")
        self.errors = errors


class NotTheCluster(Exception):
    """An address answered with another CA than the pinned one."""


def _tls(ca_pem: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if ca_pem is None:  # only for GET /v1/ca, whose answer is checked by its fingerprint
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.check_hostname = False  # any node of the cluster: the CA is what is checked
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=ca_pem)
    return ctx


def normalise_fingerprint(text: str) -> str:
    fp = text.strip().lower().removeprefix("sha256:")
    if len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
        raise ValueError(f"bad CA fingerprint {text!r}: expected sha256: and 64 hex digits")
    return fp


class ClusterClient:
    def __init__(
        self,
        addresses: Sequence[str],
        token: str,
        ca_fingerprint: str,
        *,
        port: int = DEFAULT_PORT,
        timeout: float = 5.0,
        ca_pem: str | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("a cluster needs at least one node address")
        self.addresses = list(addresses)
        self.token = token
        self.fingerprint = normalise_fingerprint(ca_fingerprint)
        self.port = port
        self.timeout = timeout
        self.ca_pem = ca_pem  # known once fetched and checked
        self.current = self.addresses[0]  # the address in use
        self._clients: dict[str, httpx.AsyncClient] = {}

    def _base(self, addr: str) -> str:
        host, _, port = addr.partition("@")  # "ADDR" or "ADDR@PORT"
        host = f"[{host}]" if ":" in host else host
        return f"https://{host}:{port or self.port}"

    async def _fetch_ca(self, addr: str) -> str:
        async with httpx.AsyncClient(
            base_url=self._base(addr), verify=_tls(None), timeout=self.timeout, trust_env=False
        ) as c:
            r = await c.get("/v1/ca")
            r.raise_for_status()
            pem = r.json().get("ca")
        if not isinstance(pem, str):
            raise NotTheCluster(f"{addr}: no CA certificate in its answer")
        try:
            actual = ca_fingerprint(pem)
        except ValueError as e:
            raise NotTheCluster(f"{addr}: unreadable CA certificate ({e})") from None
        if not hmac.compare_digest(actual, self.fingerprint):
            raise NotTheCluster(
                f"{addr} is not a node of this cluster: its CA has the fingerprint "
                f"sha256:{actual}, sha256:{self.fingerprint} expected"
            )
        return pem

    async def _client(self, addr: str) -> httpx.AsyncClient:
        c = self._clients.get(addr)
        if c is None:
            if self.ca_pem is None:
                self.ca_pem = await self._fetch_ca(addr)
            c = httpx.AsyncClient(
                base_url=self._base(addr),
                verify=_tls(self.ca_pem),
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 2.0)),
                trust_env=False,
            )
            self._clients[addr] = c
        return c

    def _order(self) -> list[str]:
        return [self.current, *(a for a in self.addresses if a != self.current)]

    def _headers(self, on_behalf_of: str | None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.token}"}
        if on_behalf_of:
            h["X-Hakit-On-Behalf-Of"] = on_behalf_of
        return h

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        params: dict[str, Any] | None = None,
        on_behalf_of: str | None = None,
    ) -> tuple[int, Any]:
        """(HTTP status, JSON answer — or text if it is not JSON) from the first node that
        answers; `ClusterUnreachable` if none does. Commands are sent once per node: a node
        that answered (any status) is never asked again for the same request."""
        r = await self._send(method, path, body, params, on_behalf_of)
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, r.text

    async def download(
        self, path: str, params: dict[str, Any] | None = None, on_behalf_of: str | None = None
    ) -> tuple[int, bytes]:
        """(HTTP status, the answer's bytes) of a GET, e.g. a module's package."""
        r = await self._send("GET", path, b"", params, on_behalf_of)
        return r.status_code, r.content

    async def _send(
        self,
        method: str,
        path: str,
        body: bytes,
        params: dict[str, Any] | None,
        on_behalf_of: str | None,
    ) -> httpx.Response:
        errors = []
        for addr in self._order():
            try:
                c = await self._client(addr)
                r = await c.request(
                    method,
                    path,
                    content=body,
                    params=params,
                    headers=self._headers(on_behalf_of),
                )
            except (httpx.HTTPError, NotTheCluster, ssl.SSLError, OSError) as e:
                errors.append(f"{addr}: {e or type(e).__name__}")
                await self._drop(addr)
                continue
            self.current = addr
            return r
        raise ClusterUnreachable(errors)

    async def get(self, path: str, **params: Any) -> Any:
        """The JSON of a GET; `ClusterUnreachable`, or `httpx.HTTPStatusError`-like
        `RuntimeError` with the server's reason for a refusal."""
        status, answer = await self.request("GET", path, params=params or None)
        if status != 200:
            detail = answer.get("detail") if isinstance(answer, dict) else answer
            raise RuntimeError(f"{path}: HTTP {status}: {detail}")
        return answer

    async def stream(
        self, path: str = "/v1/stream", **params: Any
    ) -> AsyncIterator[tuple[str, Any]]:
        """Server-sent events (event name, JSON data) from one node, until it ends; the
        caller reconnects (with another node if this one is gone)."""
        errors = []
        for addr in self._order():
            try:
                c = await self._client(addr)
                async with c.stream(
                    "GET",
                    path,
                    params=params or None,
                    headers=self._headers(None),
                    timeout=httpx.Timeout(self.timeout, read=60.0),
                ) as r:
                    if r.status_code != 200:
                        text = (await r.aread()).decode("utf-8", "replace")[:300]
                        raise RuntimeError(f"{path}: HTTP {r.status_code}: {text}")
                    self.current = addr
                    kind, data = "message", list[str]()
                    async for line in r.aiter_lines():
                        if line == "":
                            if data:
                                yield kind, json.loads("\n".join(data))
                            kind, data = "message", []
                        elif line.startswith("event:"):
                            kind = line[6:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].strip())
                    return
            except (httpx.HTTPError, NotTheCluster, ssl.SSLError, OSError) as e:
                errors.append(f"{addr}: {e or type(e).__name__}")
                await self._drop(addr)
        raise ClusterUnreachable(errors)

    async def _drop(self, addr: str) -> None:
        c = self._clients.pop(addr, None)
        if c is not None:
            await c.aclose()

    async def aclose(self) -> None:
        for addr in list(self._clients):
            await self._drop(addr)
