"""Cluster TLS on real loopback sockets: mutual, TLS 1.3, names checked, others refused."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from cryptography import x509

from hakit.tls import NodeIdentity, client_context, identity, peer_node, server_context

SECRET = bytes(range(32))


def test_every_node_derives_the_same_ca_and_distinct_node_certificates() -> None:
    a = identity(SECRET, "shop", "node1")
    b = identity(SECRET, "shop", "node2")
    assert a.ca_pem == b.ca_pem
    assert a.cert_pem != b.cert_pem
    assert a.key_pem != b.key_pem
    identity.cache_clear()
    assert identity(SECRET, "shop", "node1") == a  # deterministic, not cached state
    assert identity(SECRET, "other", "node1").ca_pem != a.ca_pem
    assert identity(bytes(32), "shop", "node1").ca_pem != a.ca_pem
    cert = x509.load_pem_x509_certificate(a.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node1.shop.hakit"]


@contextmanager
def server(ident: NodeIdentity, peers: list[str]) -> Iterator[tuple[int, list[object]]]:
    """A TLS server on loopback that records the peer node (or the error) of each connection."""
    ctx = server_context(ident)
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(5)
    seen: list[object] = []

    def serve() -> None:
        try:
            conn, _ = lsock.accept()
        except OSError as e:
            seen.append(e)
            return
        with conn:
            conn.settimeout(5)
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    seen.append(peer_node(tls.getpeercert(), ident.cluster, peers))
                    seen.append(tls.version())
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError) as e:
                seen.append(e)

    t = threading.Thread(target=serve)
    t.start()
    try:
        yield lsock.getsockname()[1], seen
    finally:
        t.join(10)
        lsock.close()


def connect(ident: NodeIdentity, port: int, server_node: str) -> bytes:
    ctx = client_context(ident)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with raw, ctx.wrap_socket(raw, server_hostname=ident.server_name(server_node)) as tls:
        return tls.recv(16)


def test_mutual_tls_13_names_the_client_node() -> None:
    with server(identity(SECRET, "shop", "node2"), ["node1"]) as (port, seen):
        assert connect(identity(SECRET, "shop", "node1"), port, "node2") == b"ok"
    assert seen == ["node1", "TLSv1.3"]


def test_a_client_of_the_cluster_that_is_not_an_expected_peer_is_not_named() -> None:
    with server(identity(SECRET, "shop", "node2"), ["node1"]) as (port, seen):
        connect(identity(SECRET, "shop", "node3"), port, "node2")
    assert seen[0] is None


def test_the_client_refuses_a_server_with_another_name() -> None:
    with (
        server(identity(SECRET, "shop", "node3"), ["node1"]) as (port, _),
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        connect(identity(SECRET, "shop", "node1"), port, "node2")


@pytest.mark.parametrize("client_secret", [bytes(32), SECRET])
def test_another_clusters_certificates_are_refused_both_ways(client_secret: bytes) -> None:
    cluster = "shop" if client_secret != SECRET else "other"
    with (
        server(identity(SECRET, "shop", "node2"), ["node1"]) as (port, seen),
        pytest.raises((ssl.SSLError, OSError)),
    ):
        connect(identity(client_secret, cluster, "node1"), port, "node2")
    assert seen
    assert isinstance(seen[0], (ssl.SSLError, OSError))


def test_a_client_without_a_certificate_is_refused() -> None:
    ident = identity(SECRET, "shop", "node2")
    with server(ident, ["node1"]) as (port, seen):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=ident.ca_pem)
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        tls = ctx.wrap_socket(raw, server_hostname=ident.server_name("node2"))
        # TLS 1.3: the server's refusal of the client arrives after the handshake
        with raw, tls, pytest.raises((ssl.SSLError, OSError)):
            tls.recv(16)
    assert seen
    assert isinstance(seen[0], (ssl.SSLError, OSError))
