"""Keeps the API token store the same on every node (ADR 0004).

Every SYNC_PERIOD seconds, and at once after a local change, this node compares its store's
digest with each reachable peer's; where they differ it takes the peer's records and gives it
its own (a merge: union by id, the earliest revocation winning), so a token made or revoked on
one node holds on every node within a round, and a node that was down catches up when it is
back. Requests go through the node API (mutual TLS, signed), off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from hakit.adapters.nodeapi import NodeApi, NodeUnreachable
from hakit.adapters.tokenstore import TokenStore, parse_records
from hakit.config.load import ClusterFile
from hakit.errors import HakitError

SYNC_PERIOD = 10.0
TIMEOUT = 3.0
log = logging.getLogger("hakit.api")


class TokenSync:
    def __init__(self, store: TokenStore, local: str, cluster: Callable[[], ClusterFile]) -> None:
        self.store = store
        self.local = local
        self.cluster = cluster  # the running configuration (applied live: peers change)
        self._wake = asyncio.Event()
        self._failing: dict[str, str] = {}  # peer -> last error (logged once per change)

    def changed(self) -> None:
        """The local store changed: push it now."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.round)
            except Exception as e:
                log.error("API token sync failed: %s", e)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), SYNC_PERIOD)

    def round(self) -> None:
        cf = self.cluster()
        cfg = cf.config
        for node, spec in cfg.nodes.items():
            if node == self.local:
                continue
            api = NodeApi(
                cf.secret,
                cfg.cluster,
                node,
                [str(a) for a in spec.addresses.values()],
                cfg.api.port,
                timeout=TIMEOUT,
                sender="token-sync",
            )
            try:
                self._with(node, api)
                self._failing.pop(node, None)
            except (NodeUnreachable, HakitError, ValueError) as e:
                if self._failing.get(node) != str(e):
                    log.info("API tokens not compared with %s: %s", node, e)
                self._failing[node] = str(e)

    def _with(self, node: str, api: NodeApi) -> None:
        r = api.request("GET", "/v1/tokens/records")
        if r.status_code != 200:
            raise HakitError(f"{node} answered {r.status_code}: {r.text[:200]}")
        theirs = r.json()
        if theirs.get("digest") == self.store.digest():
            return
        if self.store.merge_in(parse_records(theirs, f"the token records of {node}")):
            log.info("API tokens: took %s's changes", node)
        if theirs.get("digest") != self.store.digest():
            body = json.dumps({"tokens": [x.to_json() for x in self.store.records.values()]})
            r = api.request("POST", "/v1/tokens/records", body=body.encode())
            if r.status_code != 200:
                raise HakitError(f"{node} refused the token records: {r.text[:200]}")
