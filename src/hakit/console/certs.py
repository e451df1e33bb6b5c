"""The console's HTTPS certificate: the user's own (`--cert/--key`), or a self-signed one made
at the first start in the state folder (ECDSA P-256, 825 days, the host's name, `localhost`,
127.0.0.1, ::1 and the listening address as subject alternative names). Its SHA-256
fingerprint is logged at start so that a browser's warning can be checked against it."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hakit.adapters.statefile import write_file
from hakit.console.store import ConsoleError

VALIDITY = datetime.timedelta(days=825)


def _names(listen_host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    dns = {socket.gethostname().lower(), "localhost"}
    ips = {"127.0.0.1", "::1"}
    try:
        ipaddress.ip_address(listen_host)
        if listen_host not in ("0.0.0.0", "::"):
            ips.add(listen_host)
    except ValueError:
        if listen_host:
            dns.add(listen_host.lower())
    names += [x509.DNSName(d) for d in sorted(dns)]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in sorted(ips)]
    return names


def self_signed(cert_path: Path, key_path: Path, listen_host: str) -> None:
    """Write a new self-signed certificate and its key (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hakit"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"hakit console on {socket.gethostname()}"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_names(listen_host)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_file(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
        what="console key",
    )
    write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, what="cert")


def fingerprint(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """TLS 1.2+ (browsers), the certificate and key given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert_path), str(key_path))
    except (OSError, ssl.SSLError) as e:
        raise ConsoleError(
            f"cannot load the certificate {cert_path} with key {key_path}: {e}"
        ) from None
    return ctx
