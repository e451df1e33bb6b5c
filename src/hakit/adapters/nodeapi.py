"""A client of one node's API over mutual TLS, its requests signed with the cluster secret.

The client derives from the secret the certificate of the node it addresses (every node's
certificate comes from the secret: holding it is what the certificate proves), checks that the
server's certificate names that node, asks it once for its boot id (`GET /v1/hello`) and signs
every request for that node and that boot (see `hakit.wire.apiauth`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

import httpx

from hakit.tls import client_context, identity
from hakit.wire.apiauth import api_key, sign

HELLO = "/v1/hello"


class NodeUnreachable(Exception):
    """No address of the node answered (or its certificate was not that node's)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class NodeApi:
    """Requests to `node` of `cluster` on its `addresses`, tried in turn."""

    def __init__(
        self,
        secret: bytes,
        cluster: str,
        node: str,
        addresses: Sequence[str],
        port: int,
        *,
        timeout: float,
        sender: str,
    ) -> None:
        ident = identity(secret, cluster, node)
        self.node = node
        self.addresses = list(addresses)
        self.port = port
        self.timeout = timeout
        self.sender = sender
        self._key = api_key(secret, cluster)
        self._tls = client_context(ident)
        self._sni = {"sni_hostname": ident.server_name(node)}
        self._boot: str | None = None

    def _base(self, addr: str) -> str:
        host = f"[{addr}]" if ":" in addr else addr
        return f"https://{host}:{self.port}"

    def _hello(self, c: httpx.Client) -> str:
        if self._boot is None:
            r = c.get(HELLO, extensions=self._sni)
            r.raise_for_status()
            answer = r.json()
            if answer.get("node") != self.node or not isinstance(answer.get("boot"), str):
                raise httpx.RemoteProtocolError(f"unexpected hello answer {answer!r}")
            self._boot = answer["boot"]
        return self._boot

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """The answer of the first address that answers; `NodeUnreachable` if none does.
        `headers`: more headers (not signed: informational, e.g. the user for the audit)."""
        url = httpx.URL(path, params=params or {})
        target = url.raw_path.decode()
        errors = []
        for addr in self.addresses:
            try:
                with httpx.Client(
                    base_url=self._base(addr),
                    verify=self._tls,
                    timeout=httpx.Timeout(self.timeout, connect=1.0),
                    trust_env=False,
                ) as c:
                    boot = self._hello(c)
                    signature = sign(
                        self._key,
                        self.sender,
                        self.node,
                        boot,
                        method,
                        target,
                        body,
                        time.time(),
                        secrets.token_hex(12),
                    )
                    return c.request(
                        method,
                        target,
                        headers={**(headers or {}), **signature},
                        content=body,
                        extensions=self._sni,
                    )
            except httpx.HTTPError as e:
                errors.append(f"{addr}: {e or type(e).__name__}")
        raise NodeUnreachable(errors)
