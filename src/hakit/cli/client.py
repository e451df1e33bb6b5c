"""The CLI's clients: the local daemon (unix socket) or another node's daemon (signed TCP)."""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx

from hakit.config.load import load_cluster
from hakit.errors import DaemonUnavailable, HakitError
from hakit.paths import Paths
from hakit.wire.apiauth import api_key, sign

TIMEOUT = 5.0


class _Client:
    """get/post over `request`, which each transport implements."""

    timeout: float = TIMEOUT  # raise it for long requests (verification)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str) -> Any:
        """POST; a refusal (409) or an unknown module (404) is returned as its JSON body."""
        return self.request("POST", path, accept=(404, 409))

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        accept: tuple[int, ...] = (),
        body: bytes = b"",
    ) -> Any:
        raise NotImplementedError


class DaemonClient(_Client):
    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    def _unavailable(self, why: str) -> DaemonUnavailable:
        return DaemonUnavailable(
            f"the hakit daemon is not running on this node ({why} at {self.paths.socket}).\n"
            "Start it with `systemctl start hakit` (or `hakit daemon` in the foreground); "
            f"its log is {self.paths.daemon_log}."
        )

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        accept: tuple[int, ...] = (),
        body: bytes = b"",
    ) -> Any:
        sock = self.paths.socket
        if not sock.exists():
            raise self._unavailable("no socket")
        transport = httpx.HTTPTransport(uds=str(sock))
        try:
            with httpx.Client(
                transport=transport, base_url="http://hakit", timeout=self.timeout
            ) as c:
                r = c.request(method, "/v1" + path, params=params, content=body)
        except (httpx.ConnectError, httpx.RemoteProtocolError) as e:
            raise self._unavailable(f"no answer: {e}") from None
        except httpx.TimeoutException:
            raise DaemonUnavailable(
                f"the hakit daemon did not answer within {self.timeout:g} s on {sock}; "
                f"see {self.paths.daemon_log}"
            ) from None
        return _answer(r, accept)


def _answer(r: httpx.Response, accept: tuple[int, ...]) -> Any:
    if r.status_code in accept:
        answer = r.json()
        if r.status_code == 404 and "detail" in answer and "uninstalled" not in answer:
            raise HakitError(str(answer["detail"]))
        return answer
    if r.status_code == 401:
        raise HakitError(f"refused by the remote daemon: {r.json().get('detail')}")
    r.raise_for_status()
    return r.json()


class RemoteClient(_Client):
    """Another node's daemon, over TCP on its cluster addresses, requests signed with the secret."""

    def __init__(self, paths: Paths, node: str) -> None:
        cf = load_cluster(paths.cluster_config)
        cfg = cf.config
        if node not in cfg.nodes:
            raise HakitError(f"no node {node!r} in the cluster; nodes: {', '.join(cfg.nodes)}")
        self.node = node
        self.key = api_key(cf.secret, cfg.cluster)
        self.port = cfg.api.port
        self.addresses = [str(a) for a in cfg.nodes[node].addresses.values()]

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        accept: tuple[int, ...] = (),
        body: bytes = b"",
    ) -> Any:
        url = httpx.URL("/v1" + path, params=params or {})
        target = url.raw_path.decode()
        errors = []
        for addr in self.addresses:
            host = f"[{addr}]" if ":" in addr else addr
            headers = sign(
                self.key, "cli", method, target, body, time.time(), secrets.token_hex(12)
            )
            try:
                with httpx.Client(
                    base_url=f"http://{host}:{self.port}",
                    timeout=httpx.Timeout(self.timeout, connect=1.0),
                ) as c:
                    r = c.request(method, target, headers=headers, content=body)
            except httpx.HTTPError as e:
                errors.append(f"{addr}: {e}")
                continue
            return _answer(r, accept)
        raise DaemonUnavailable(
            f"the hakit daemon on {self.node} does not answer on port {self.port} ("
            + "; ".join(errors)
            + ")"
        )


def client_for(paths: Paths, node: str | None) -> DaemonClient | RemoteClient:
    """The local daemon, or the daemon of `node`."""
    return DaemonClient(paths) if node is None else RemoteClient(paths, node)
