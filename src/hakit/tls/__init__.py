"""Cluster TLS: a CA and node certificates derived from the cluster secret, and TLS contexts.

Every node holds the same `cluster.key`; from it and the cluster's name each node derives the
same Ed25519 CA key and the *byte-identical* CA certificate (Ed25519 signatures are
deterministic and every field is fixed), so there is nothing to distribute, copy or expire
besides the secret itself. Each node's certificate (its key derived from the secret and the
node's name, its name `<node>.<cluster>.hakit` in the subject alternative name) is issued in
memory when a process needs it. Rotating the secret rotates every key and certificate.

Contexts are TLS 1.3 only and always mutual: a server requires a client certificate of the
cluster CA and tells which node it is (`peer_node`), a client checks the server's name.
Nothing is written to disk: the key and certificate reach OpenSSL through an anonymous memory
file (`memfd`), closed once loaded. See docs/security.md and ADR 0003.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import ip_address

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "NodeIdentity",
    "NotAMember",
    "ca_fingerprint",
    "client_context",
    "identity",
    "join_client_context",
    "join_server_context",
    "member_node",
    "peer_node",
    "server_context",
]

SUFFIX = "hakit"
_NOT_BEFORE = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


def _derive(secret: bytes, label: str) -> bytes:
    """32 bytes for one purpose (HMAC-SHA256 with a distinct label, as every hakit key)."""
    return hmac.new(secret, b"hakit tls v1|" + label.encode(), hashlib.sha256).digest()


def dns_name(node: str, cluster: str) -> str:
    return f"{node}.{cluster}.{SUFFIX}".lower()


def _serial(seed: bytes) -> int:
    return int.from_bytes(hashlib.sha256(seed).digest()[:16], "big") | 1


@dataclass(frozen=True)
class NodeIdentity:
    """One node's TLS identity: PEM of the CA certificate, its certificate and its key."""

    cluster: str
    node: str
    ca_pem: str
    cert_pem: bytes
    key_pem: bytes

    @property
    def name(self) -> str:
        return dns_name(self.node, self.cluster)

    def server_name(self, node: str) -> str:
        """The name a client checks when it connects to `node` (`server_hostname`)."""
        return dns_name(node, self.cluster)


@lru_cache(maxsize=16)
def identity(
    secret: bytes, cluster: str, node: str, addresses: tuple[str, ...] = ()
) -> NodeIdentity:
    """The CA and `node`'s certificate, the same on every node for the same secret; the node's
    `addresses` are added as IP names (for tools that check the host name of an address, as
    Prometheus does with the CA file of `hakit cluster ca`)."""
    ca_key = Ed25519PrivateKey.from_private_bytes(_derive(secret, f"ca|{cluster}"))
    ca_subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, SUFFIX),
            x509.NameAttribute(NameOID.COMMON_NAME, f"hakit cluster {cluster} CA"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(_serial(b"ca|" + cluster.encode()))
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, None)
    )
    key = Ed25519PrivateKey.from_private_bytes(_derive(secret, f"node|{cluster}|{node}"))
    name = dns_name(node, cluster)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_subject)
        .public_key(key.public_key())
        .serial_number(_serial(f"node|{cluster}|{node}".encode()))
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), *(x509.IPAddress(ip_address(a)) for a in addresses)]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, None)
    )
    return NodeIdentity(
        cluster=cluster,
        node=node,
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM).decode(),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def ca_fingerprint(ca_pem: str) -> str:
    """SHA-256 (hex) of the CA's public key, DER SubjectPublicKeyInfo: what a join token
    carries so that the new node can recognise the cluster's members (kubeadm's
    `discovery-token-ca-cert-hash` is the same digest)."""
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    spki = ca.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


class NotAMember(Exception):
    """The server's certificate is not one of the cluster the join token was made for."""


def member_node(cert_der: bytes, ca_pem: str, ca_hash: str, cluster: str) -> str:
    """The node a join server's certificate (`getpeercert(binary_form=True)`, whose key the TLS
    handshake proved it holds) names, after checking that the CA it sent (`ca_pem`) is the one
    whose fingerprint the token carries and that it signed the certificate; `NotAMember`
    otherwise. Needed because the joiner has no CA to give OpenSSL yet, only its hash."""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError as e:
        raise NotAMember(f"unreadable certificate: {e}") from None
    actual = ca_fingerprint(ca_pem)
    if not hmac.compare_digest(actual, ca_hash):
        raise NotAMember(
            f"its cluster CA has the fingerprint sha256:{actual}, the token expects "
            f"sha256:{ca_hash}"
        )
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise NotAMember(f"its certificate is not signed by the cluster CA ({e})") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise NotAMember("its certificate names no node") from None
    suffix = f".{cluster}.{SUFFIX}".lower()
    for name in san.get_values_for_type(x509.DNSName):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    raise NotAMember(f"its certificate names no node of cluster {cluster}")


def _load_chain(ctx: ssl.SSLContext, ident: NodeIdentity) -> None:
    fd = os.memfd_create("hakit-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, ident.cert_pem + ident.key_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _context(purpose: int, ident: NodeIdentity) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ident.ca_pem)
    _load_chain(ctx, ident)
    return ctx


def server_context(ident: NodeIdentity, *, tools: bool = False) -> ssl.SSLContext:
    """Accepts only clients with a certificate of this cluster's CA (TLS 1.3); with `tools`
    also clients without a certificate (the node API: they must then show an API token)."""
    ctx = _context(ssl.PROTOCOL_TLS_SERVER, ident)
    if tools:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(ident: NodeIdentity) -> ssl.SSLContext:
    """Presents this node's certificate; checks the server's name (`server_hostname`)."""
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT, ident)
    ctx.check_hostname = True
    return ctx


def join_server_context(ident: NodeIdentity) -> ssl.SSLContext:
    """The join listener: TLS 1.3 with this node's certificate, no client certificate (a node
    that joins has none yet: its join token authenticates it, inside the channel)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_NONE
    _load_chain(ctx, ident)
    return ctx


def join_client_context() -> ssl.SSLContext:
    """The joining node: TLS 1.3; the server's certificate is checked by `member_node` against
    the CA fingerprint of the token (OpenSSL cannot: the joiner has only the hash)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_node(cert: Mapping[str, object] | None, cluster: str, nodes: Iterable[str]) -> str | None:
    """Which of `nodes` a verified peer certificate (`SSLSocket.getpeercert()`) names, or None.

    DNS names compare without case; a certificate of another cluster never matches.
    """
    if not cert:
        return None
    san = cert.get("subjectAltName", ())
    names = {str(v).lower() for k, v in san if k == "DNS"} if isinstance(san, tuple) else set()
    for node in nodes:
        if dns_name(node, cluster) in names:
            return node
    return None
