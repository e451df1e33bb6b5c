"""The CLI's clients: the local daemon (unix socket) or another node's daemon (mutual TLS,
signed requests)."""

from __future__ import annotations

import getpass
import os
from typing import Any

import httpx

from hakit.adapters.nodeapi import NodeApi, NodeUnreachable
from hakit.config.load import ClusterFile, load_cluster
from hakit.errors import DaemonUnavailable, HakitError
from hakit.paths import Paths

TIMEOUT = 5.0


def user_header() -> dict[str, str]:
    """Who types the command, for the audit trail (`sudo` keeps the name in SUDO_USER)."""
    try:
        name = os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return {}
    return {"X-Hakit-On-Behalf-Of": name[:64]} if name.isascii() and name.isprintable() else {}


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
        try:
            os.stat(sock)
            allowed = os.access(sock, os.R_OK | os.W_OK)
        except FileNotFoundError:
            raise self._unavailable("no socket") from None
        except PermissionError:
            allowed = False
        if not allowed:
            raise HakitError(
                f"permission denied on {sock}: the hakit daemon answers only root there "
                "(run the command as root, e.g. with sudo)"
            )
        transport = httpx.HTTPTransport(uds=str(sock))
        try:
            with httpx.Client(
                transport=transport, base_url="http://hakit", timeout=self.timeout
            ) as c:
                r = c.request(
                    method, "/v1" + path, params=params, content=body, headers=user_header()
                )
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
    if r.status_code in (400, 401, 413):
        raise HakitError(f"refused by the daemon (HTTP {r.status_code}): {r.json().get('detail')}")
    r.raise_for_status()
    if not r.headers.get("content-type", "").startswith("application/json"):
        return r.text  # a script's output
    return r.json()


class RemoteClient(_Client):
    """Another node's daemon, over mutual TLS on its cluster addresses, requests signed with
    the secret for that node and its daemon's boot."""

    def __init__(self, paths: Paths, node: str, cluster: ClusterFile | None = None) -> None:
        """`cluster`: where the nodes are (default: this node's cluster.yaml) — the running
        configuration while a new one is being applied."""
        cf = cluster or load_cluster(paths.cluster_config)
        cfg = cf.config
        if node not in cfg.nodes:
            raise HakitError(f"no node {node!r} in the cluster; nodes: {', '.join(cfg.nodes)}")
        self.node = node
        self.port = cfg.api.port
        self.api = NodeApi(
            cf.secret,
            cfg.cluster,
            node,
            [str(a) for a in cfg.nodes[node].addresses.values()],
            cfg.api.port,
            timeout=self.timeout,
            sender="cli",
        )

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        accept: tuple[int, ...] = (),
        body: bytes = b"",
    ) -> Any:
        self.api.timeout = self.timeout
        try:
            r = self.api.request(
                method, "/v1" + path, params=params, body=body, headers=user_header()
            )
        except NodeUnreachable as e:
            raise DaemonUnavailable(
                f"the hakit daemon on {self.node} does not answer on port {self.port} ({e})"
            ) from None
        return _answer(r, accept)


def client_for(paths: Paths, node: str | None) -> DaemonClient | RemoteClient:
    """The local daemon, or the daemon of `node`."""
    return DaemonClient(paths) if node is None else RemoteClient(paths, node)
