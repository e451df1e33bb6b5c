"""The TCP node API on real loopback sockets: mutual TLS with node certificates only, signatures
bound to the target node and boot, headers checked before any body, bounded bodies."""

from __future__ import annotations

import asyncio
import json
import secrets
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from hakit.adapters.nodeapi import NodeApi, NodeUnreachable
from hakit.api.app import create_app
from hakit.api.guard import BODY_LIMIT, Guard
from hakit.api.server import HANDSHAKE_TIMEOUT, PENDING_PER_ADDRESS, tcp_server
from hakit.tls import client_context, identity
from hakit.waiting import wait_until
from hakit.wire.apiauth import Verifier, api_key, sign
from tests.api.test_api import Source

SECRET = b"k" * 32
CLUSTER = "demo"
NODES = ("node1", "node2")
DEADLINE = 10.0


@dataclass
class Served:
    node: str
    boot: str
    port: int


@contextmanager
def serving(node: str, *, cert_of: str | None = None, boot: str = "boot-1") -> Iterator[Served]:
    """A node's TCP API on 127.0.0.1 (its certificate: `cert_of`'s, by default its own)."""
    app = Guard(
        create_app(Source(), {"node": node, "boot": boot}),
        Verifier(api_key(SECRET, CLUSTER), node, boot),
        time.time,
    )
    server = tcp_server(app, identity(SECRET, CLUSTER, cert_of or node), lambda: NODES)
    with running(server) as port:
        yield Served(node, boot, port)


@contextmanager
def running(server: Any) -> Iterator[int]:
    """`server` (a `tcp_server`) on a free port of 127.0.0.1, in a thread: the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), DEADLINE, "server start")
        assert server.started
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(DEADLINE)
        sock.close()


def api(s: Served, node: str | None = None, secret: bytes = SECRET) -> NodeApi:
    return NodeApi(secret, CLUSTER, node or s.node, ["127.0.0.1"], s.port, timeout=5, sender="t")


def raw_get(s: Served, ctx: ssl.SSLContext, name: str) -> httpx.Response:
    with httpx.Client(verify=ctx, trust_env=False, timeout=5) as c:
        return c.get(f"https://127.0.0.1:{s.port}/v1/hello", extensions={"sni_hostname": name})


def node_ctx(node: str, cluster: str = CLUSTER, secret: bytes = SECRET) -> ssl.SSLContext:
    return client_context(identity(secret, cluster, node))


def test_a_node_reads_another_over_mutual_tls() -> None:
    with serving("node1") as s:
        r = api(s).request("GET", "/v1/state")
        assert r.status_code == 200
        assert r.url.scheme == "https"
        assert r.json()["cluster"] == "demo"


def test_a_client_without_a_certificate_gets_only_the_open_requests() -> None:
    """A tool (no client certificate) reaches the open requests; everything else needs an API
    token, which this server (no token store) never accepts."""
    with serving("node1") as s:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=identity(SECRET, CLUSTER, "node1").ca_pem)
        assert raw_get(s, ctx, "node1.demo.hakit").json()["node"] == "node1"
        with httpx.Client(verify=ctx, trust_env=False, timeout=5) as c:
            r = c.get(
                f"https://127.0.0.1:{s.port}/v1/state",
                extensions={"sni_hostname": "node1.demo.hakit"},
                headers=signed(s),  # a node's signature does not make a tool a node
            )
        assert (r.status_code, r.json()) == (
            401,
            {"detail": "this API answers only the cluster's nodes"},
        )
        # the same request with a node's certificate is served
        assert raw_get(s, node_ctx("node2"), "node1.demo.hakit").json()["node"] == "node1"


def test_another_clusters_certificate_is_refused() -> None:
    with serving("node1") as s:
        with pytest.raises(httpx.HTTPError):
            raw_get(s, client_context(identity(SECRET, "other", "node2")), "node1.demo.hakit")
        with pytest.raises(NodeUnreachable):
            api(s, secret=b"x" * 32).request("GET", "/v1/state")


def test_a_certificate_of_the_cluster_that_names_no_node_is_refused() -> None:
    with serving("node1") as s, pytest.raises(httpx.HTTPError):
        raw_get(s, node_ctx("intruder"), "node1.demo.hakit")


def test_a_server_with_another_nodes_certificate_is_refused() -> None:
    with serving("node1", cert_of="node2") as s:
        with pytest.raises(NodeUnreachable) as e:
            api(s).request("GET", "/v1/state")
        assert "Hostname mismatch, certificate is not valid for 'node1.demo.hakit'" in str(e.value)


def signed(to: Served, target: str = "/v1/state", method: str = "GET") -> dict[str, str]:
    return sign(
        api_key(SECRET, CLUSTER),
        "t",
        to.node,
        to.boot,
        method,
        target,
        b"",
        time.time(),
        secrets.token_hex(12),
    )


def send(s: Served, headers: dict[str, str], path: str = "/v1/state") -> httpx.Response:
    with httpx.Client(verify=node_ctx("node2"), trust_env=False, timeout=5) as c:
        return c.get(
            f"https://127.0.0.1:{s.port}{path}",
            headers=headers,
            extensions={"sni_hostname": f"{s.node}.demo.hakit"},
        )


def test_a_request_replayed_to_another_node_or_twice_is_refused() -> None:
    with serving("node1") as n1, serving("node2") as n2:
        headers = signed(n1)
        assert send(n1, headers).status_code == 200
        again = send(n1, headers)
        assert (again.status_code, again.json()) == (
            401,
            {"detail": "replayed request (nonce already used)"},
        )
        other = send(n2, headers)
        assert (other.status_code, other.json()) == (
            401,
            {"detail": "request meant for node 'node1', this is 'node2'"},
        )


def test_a_request_replayed_after_a_restart_is_refused() -> None:
    with serving("node1", boot="boot-1") as before:
        headers = signed(before)
    with serving("node1", boot="boot-2") as after:
        r = send(after, headers)
        assert (r.status_code, r.json()) == (
            401,
            {"detail": "request signed for another boot of this daemon (it restarted): retry"},
        )
        assert api(after).request("GET", "/v1/state").status_code == 200  # a new hello


def test_time_nan_and_non_ascii_headers_are_401_not_500() -> None:
    with serving("node1") as s:
        r = send(s, signed(s) | {"X-Hakit-Time": "nan"})
        assert (r.status_code, r.json()) == (
            401,
            {"detail": "malformed x-hakit-time header: not a finite number"},
        )
        status, answer = exchange(s, b"X-Hakit-Auth: \xc3\xa9t\xc3\xa9\r\n" + auth_lines(s))
        assert (status, answer) == (
            401,
            {"detail": "malformed x-hakit-auth header: not printable ASCII"},
        )
        # a raw non-ASCII request target: the HTTP parser's 400, not a 500
        line = b"GET /v1/state?\xff HTTP/1.1\r\nHost: x\r\n"
        with tls_socket(s) as conn:
            conn.sendall(line + auth_lines(s) + b"X-Hakit-Auth: " + b"0" * 64 + b"\r\n\r\n")
            assert conn.recv(65536).startswith(b"HTTP/1.1 400 ")


# --- raw HTTP over TLS: what the server reads before it refuses --------------------------------


def auth_lines(s: Served, target: str = "/v1/state", method: str = "GET") -> bytes:
    return b"".join(
        f"{k}: {v}\r\n".encode()
        for k, v in signed(s, target, method).items()
        if k != "X-Hakit-Auth"
    )


def tls_socket(s: Served) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", s.port), timeout=DEADLINE)
    return node_ctx("node2").wrap_socket(raw, server_hostname=f"{s.node}.demo.hakit")


def read_answer(conn: ssl.SSLSocket) -> tuple[int, Any]:
    """The status and JSON body of the server's answer (waits for it, up to the deadline)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"closed without an answer: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length"))
    while len(body) < length:
        body += conn.recv(65536)
    return int(lines[0].split()[1]), json.loads(body[:length])


def closed(conn: ssl.SSLSocket) -> bool:
    """The server closed the connection (waits for it, up to the deadline)."""
    readable, _, _ = select.select([conn], [], [], DEADLINE)
    try:
        return bool(readable) and conn.recv(1) == b""
    except (ssl.SSLError, ConnectionResetError):
        return True


def exchange(s: Served, header_lines: bytes, path: str = "/v1/state") -> tuple[int, Any]:
    with tls_socket(s) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + header_lines + b"\r\n")
        return read_answer(conn)


def test_an_unsigned_128_mib_body_is_refused_before_it_is_read() -> None:
    with serving("node1") as s, tls_socket(s) as conn:
        conn.sendall(
            b"POST /v1/modules?name=x HTTP/1.1\r\nHost: x\r\nContent-Length: 134217728\r\n\r\n"
        )
        conn.sendall(b"\0" * 65536)  # 64 KiB of the 128 MiB, then wait for the answer
        status, answer = read_answer(conn)
        assert status == 401
        assert answer["detail"].startswith("missing authentication headers: x-hakit-node")
        assert closed(conn)


def signed_post(s: Served, path: str) -> bytes:
    headers = signed(s, path, "POST")
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode() + b"".join(
        f"{k}: {v}\r\n".encode() for k, v in headers.items()
    )


def test_a_signed_request_with_an_oversized_length_is_refused_before_its_body() -> None:
    with serving("node1") as s, tls_socket(s) as conn:
        conn.sendall(signed_post(s, "/v1/modules/app/stop") + b"Content-Length: 134217728\r\n\r\n")
        assert read_answer(conn) == (
            413,
            {"detail": f"body of 134217728 bytes, limit {BODY_LIMIT}"},
        )


def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_limit() -> None:
    with serving("node1") as s, tls_socket(s) as conn:
        conn.sendall(signed_post(s, "/v1/modules/app/stop") + b"Transfer-Encoding: chunked\r\n\r\n")
        sent = 0
        while sent <= BODY_LIMIT + 16384:  # the limit and one more chunk, of an endless body
            conn.sendall(b"4000\r\n" + b"\0" * 16384 + b"\r\n")
            sent += 16384
        assert read_answer(conn) == (413, {"detail": f"body over the limit of {BODY_LIMIT} bytes"})
        assert sent < 1024 * 1024
        assert closed(conn)


def test_signed_bodies_up_to_their_limits_pass_larger_ones_get_413() -> None:
    with serving("node1") as s:
        package = b"PK" + b"\0" * (2 * BODY_LIMIT)  # over the ordinary limit, a package
        r = api(s).request("POST", "/v1/modules", params={"name": "x"}, body=package)
        assert (r.status_code, r.json()) == (
            200,
            {"installed": True, "loaded": True, "message": "module x installed"},
        )
        r = api(s).request("POST", "/v1/modules/app/stop", body=b"\0" * (BODY_LIMIT + 1))
        assert (r.status_code, r.json()) == (
            413,
            {"detail": f"body of {BODY_LIMIT + 1} bytes, limit {BODY_LIMIT}"},
        )


def test_a_connection_that_never_completes_its_handshake_is_closed_after_the_deadline() -> None:
    """Before authentication a connection costs the server at most HANDSHAKE_TIMEOUT seconds
    (asyncio's default was 60 s): an idle TCP connection is closed by the server."""
    with serving("node1") as s:
        idle = socket.create_connection(("127.0.0.1", s.port), timeout=DEADLINE + 20)
        with idle:
            started = time.monotonic()
            assert idle.recv(1) == b""  # the server closed it (a timeout would raise)
            waited = time.monotonic() - started
        assert HANDSHAKE_TIMEOUT - 1 < waited < 30, waited
        assert api(s).request("GET", "/v1/state").status_code == 200  # a node still gets in


def test_connections_beyond_the_pending_bound_of_an_address_are_refused() -> None:
    """At most PENDING_PER_ADDRESS connections of one address wait for their handshake; the
    next ones are closed at once, and a node gets in again once they are gone."""
    with serving("node1") as s:
        idle = [
            socket.create_connection(("127.0.0.1", s.port), timeout=DEADLINE)
            for _ in range(PENDING_PER_ADDRESS)
        ]
        try:
            wait_until(lambda: not _accepted(s.port), DEADLINE, "one more refused")
        finally:
            for c in idle:
                c.close()
        wait_until(lambda: _accepted(s.port), DEADLINE, "accepted again")
        assert api(s).request("GET", "/v1/state").status_code == 200


def _accepted(port: int) -> bool:
    """Whether the server keeps a new connection open (it closes refused ones at once)."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as c:
        c.settimeout(0.5)
        try:
            return c.recv(1) != b""
        except TimeoutError:
            return True
