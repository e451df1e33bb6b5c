"""API tokens over the real TCP API (TLS without a client certificate): roles, revocation,
expiry, the pinned CA, failing over between nodes, the audit trail of every action."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hakit.adapters.apiclient import ClusterClient, ClusterUnreachable
from hakit.adapters.tokenstore import TokenStore
from hakit.api.admin import Admin
from hakit.api.app import create_app
from hakit.api.audit import AUDIT_LOGGER, query
from hakit.api.guard import Access, Guard
from hakit.api.server import tcp_server
from hakit.tls import ca_fingerprint, identity
from hakit.wire.apiauth import Verifier, api_key
from tests.api.test_api import Source
from tests.api.test_tls import running

SECRET = b"t" * 32
CLUSTER = "demo"
DEADLINE = 10.0


@dataclass
class Node:
    port: int
    store: TokenStore
    fingerprint: str


@contextmanager
def node(tmp: Path, name: str = "node1", secret: bytes = SECRET) -> Iterator[Node]:
    ident = identity(secret, CLUSTER, name)
    store = TokenStore(tmp / f"{name}-tokens.json")
    store.load()
    fp = "sha256:" + ca_fingerprint(ident.ca_pem)
    admin = Admin(store, {"cluster": CLUSTER, "ca": ident.ca_pem, "fingerprint": fp}, lambda: None)
    app = Guard(
        create_app(Source(), {"node": name, "boot": "b"}, admin),
        Verifier(api_key(secret, CLUSTER), name, "b"),
        time.time,
        Access(store),
        name,
    )
    server = tcp_server(app, ident, lambda: ("node1", "node2"))
    with running(server) as port:
        yield Node(port, store, fp)


def token(n: Node, role: str, ttl: float | None = None) -> str:
    return n.store.create(f"test-{role}", role, ttl, "test", time.time())[0]


def call(c: ClusterClient, method: str, path: str, user: str | None = None) -> tuple[int, Any]:
    async def go() -> tuple[int, Any]:
        try:
            return await c.request(method, path, on_behalf_of=user)
        finally:
            await c.aclose()

    return asyncio.run(go())


def client(n: Node, tok: str, *addresses: str) -> ClusterClient:
    return ClusterClient(addresses or (f"127.0.0.1@{n.port}",), tok, n.fingerprint)


@pytest.fixture
def audit_records(tmp_path: Path) -> Iterator[Path]:
    """The audit trail as the daemon writes it (its JSON-lines handler)."""
    from hakit.daemon.logs import _JsonLinesHandler

    path = tmp_path / "audit.jsonl"
    handler = _JsonLinesHandler(path, "audit")
    log = logging.getLogger(AUDIT_LOGGER)
    log.addHandler(handler)
    old = log.level
    log.setLevel(logging.INFO)
    try:
        yield path
    finally:
        log.removeHandler(handler)
        log.setLevel(old)
        handler.close()


def test_roles_decide_what_a_token_may_do_and_every_action_is_audited(
    tmp_path: Path, audit_records: Path
) -> None:
    with node(tmp_path) as n:
        monitor, control, admin = token(n, "monitor"), token(n, "control"), token(n, "admin")
        # monitor: reads, but no command
        assert call(client(n, monitor), "GET", "/v1/state")[1]["cluster"] == "demo"
        status, answer = call(client(n, monitor), "POST", "/v1/modules/app/start", "alice")
        assert status == 403
        assert answer["detail"] == (
            "a control token is needed for this (command); this one is monitor"
        )
        # control: commands, but no installation, no token
        assert call(client(n, control), "POST", "/v1/modules/app/start", "bob")[0] == 200
        assert call(client(n, control), "DELETE", "/v1/modules/app")[0] == 403
        assert call(client(n, control), "GET", "/v1/tokens")[0] == 403
        # admin: everything a token may, never what only nodes may
        listed = call(client(n, admin), "GET", "/v1/tokens")[1]["tokens"]
        assert {t["role"] for t in listed} == {"monitor", "control", "admin"}
        assert all("hash" not in t for t in listed)
        assert call(client(n, admin), "GET", "/v1/tokens/records")[0] == 403
    records = query(audit_records)
    assert [(r["action"], r["result"], r["who"].get("user")) for r in records] == [
        ("command", "refused", "alice"),
        ("command", "ok", "bob"),
        ("module-uninstall", "refused", None),
        ("token-list", "refused", None),  # a refused read is recorded too
        ("token-sync", "refused", None),
    ]
    first = records[0]
    assert first["who"]["kind"] == "token"
    assert first["who"]["role"] == "monitor"
    assert (first["module"], first["command"], first["status"]) == ("app", "start", 403)
    assert first["address"] == "127.0.0.1"
    assert query(audit_records, who="bob")[0]["message"] == "start accepted"
    assert SECRET.decode() not in audit_records.read_text()


def test_revoked_expired_mistyped_and_missing_tokens_are_refused(tmp_path: Path) -> None:
    with node(tmp_path) as n:
        tok = token(n, "monitor")
        short = token(n, "monitor", ttl=0.001)
        time.sleep(0.01)  # let the short token's lifetime pass (not a synchronisation)
        tid = tok.split("_")[1]
        assert call(client(n, tok), "GET", "/v1/state")[0] == 200
        n.store.revoke(tid, "test", time.time())
        answers = {
            "revoked": call(client(n, tok), "GET", "/v1/state"),
            "expired": call(client(n, short), "GET", "/v1/state"),
            "mistyped": call(client(n, tok[:-1] + ("A" if tok[-1] != "A" else "B")), "GET", "/"),
            "garbage": call(client(n, "hkt_nope"), "GET", "/v1/state"),
        }
        assert answers["revoked"] == (
            401,
            {"detail": f"API token {tid} (test-monitor) was revoked"},
        )
        assert answers["expired"][1]["detail"].endswith("has expired")
        assert answers["mistyped"][0] == 401
        assert "unknown API token" in answers["mistyped"][1]["detail"]
        assert answers["garbage"][1]["detail"].startswith("malformed API token")
        for _status, answer in answers.values():
            assert tok not in json.dumps(answer)


def test_the_client_pins_the_cluster_ca_and_fails_over_to_another_node(tmp_path: Path) -> None:
    with node(tmp_path / "a") as mine, node(tmp_path / "b", secret=b"o" * 32) as other:
        tok = token(mine, "monitor")
        # a server of another cluster is never sent the token: its CA is not the pinned one
        with pytest.raises(ClusterUnreachable) as e:
            call(client(mine, tok, f"127.0.0.1@{other.port}"), "GET", "/v1/state")
        assert "is not a node of this cluster" in str(e.value)
        # a dead address first, then a live node: answered by the live one
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
        dead.close()
        c = client(mine, tok, f"127.0.0.1@{dead_port}", f"127.0.0.1@{mine.port}")
        status, answer = call(c, "GET", "/v1/state")
        assert (status, answer["node"]) == (200, "node1")
        assert c.current == f"127.0.0.1@{mine.port}"


def test_the_live_stream_sends_the_state_then_new_timeline_entries(tmp_path: Path) -> None:
    with node(tmp_path) as n:
        tok = token(n, "monitor")

        async def first_two() -> list[tuple[str, Any]]:
            c = client(n, tok)
            got = []
            try:
                async for kind, data in c.stream():
                    got.append((kind, data))
                    if len(got) == 1:
                        break
            finally:
                await c.aclose()
            return got

        ((kind, data),) = asyncio.run(asyncio.wait_for(first_two(), DEADLINE))
        assert kind == "state"
        assert data["cluster"] == "demo"


def test_the_client_downloads_raw_bytes(tmp_path: Path) -> None:
    """`download` answers the bytes as sent (a package is a zip, not JSON or text)."""
    with node(tmp_path) as n:
        c = client(n, token(n, "monitor"))

        async def go() -> list[tuple[int, bytes]]:
            try:
                return [await c.download("/v1/health"), await c.download("/v1/nowhere")]
            finally:
                await c.aclose()

        (status, data), (missing, _) = asyncio.run(go())
    assert status == 200
    assert json.loads(data) == {"status": "ok"}
    assert missing == 404
