"""A TLS connection over a blocking socket that one reader and one writer thread share.

OpenSSL forbids using one `SSL` object from two threads at once, even one reading and one
writing (and CPython's `SSLSocket` does not lock it): the replication channel does exactly
that (the primary reads acknowledgements while its callers send operations; the secondary
reads operations while its fsync and query threads send answers). So the TLS state lives in
memory BIOs and every call into it takes one lock; the socket I/O happens outside that lock.
Records go on the wire in the order they were encrypted (the send lock covers encryption and
`sendall`), which TLS requires.

The socket's timeout applies to each blocking receive or send, as on a plain socket.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from typing import Any

from hakit.tls import NodeIdentity

RECV = 1 << 17


class TlsStream:
    def __init__(
        self,
        sock: socket.socket,
        ctx: ssl.SSLContext,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self.sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._in, self._out, server_side, server_hostname)
        self._lock = threading.Lock()  # every call into the TLS state
        self._send = threading.Lock()  # encryption order = order on the wire
        self._eof = False

    def handshake(self, deadline: float) -> None:
        """Complete the TLS handshake before `deadline` (monotonic); TimeoutError after it,
        ssl.SSLError if the peer is refused (or refuses us), ConnectionError on a close."""
        while True:
            with self._lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                out = self._out.read()
            if out:
                self._sendall_raw(out, deadline)
            if done:
                return
            self._feed(deadline)

    def _left(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("TLS handshake not done in time")
        return left

    def _sendall_raw(self, data: bytes, deadline: float) -> None:
        self.sock.settimeout(self._left(deadline))
        self.sock.sendall(data)

    def _feed(self, deadline: float) -> None:
        self.sock.settimeout(self._left(deadline))
        raw = self.sock.recv(RECV)
        if not raw:
            raise ConnectionError("connection closed during the TLS handshake")
        with self._lock:
            self._in.write(raw)

    def getpeercert(self) -> dict[str, Any] | None:
        with self._lock:
            return self._tls.getpeercert()

    def recv(self, n: int) -> bytes:
        """Up to `n` bytes of plaintext; b"" once the peer closed. TimeoutError as the
        socket's timeout says (nothing is lost: what arrived stays buffered)."""
        while True:
            with self._lock:
                chunks, got, ended = [], 0, False
                while got < n:  # every record already received, not one (16 KiB) per call
                    try:
                        data = self._tls.read(n - got)
                    except ssl.SSLWantReadError:
                        ended = self._eof
                        break
                    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                        ended = True
                        break
                    if not data:  # the end, as some Pythons say it (Debian 12's 3.11.2)
                        ended = True
                        break
                    chunks.append(data)
                    got += len(data)
                if chunks:
                    return b"".join(chunks)
                if ended:
                    return b""
            raw = self.sock.recv(RECV)
            with self._lock:
                if raw:
                    self._in.write(raw)
                else:
                    self._eof = True
                    self._in.write_eof()

    def sendall(self, data: bytes) -> None:
        with self._send:
            with self._lock:
                view = memoryview(data)
                while view:
                    view = view[self._tls.write(view) :]
                out = self._out.read()  # with whatever a read produced (a key update)
            self.sock.sendall(out)

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.sock.setsockopt(level, option, value)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def export_identity(ident: NodeIdentity) -> dict[str, str]:
    """For the replication process's init object (JSON; it never sees the cluster secret)."""
    return {
        "cluster": ident.cluster,
        "node": ident.node,
        "ca": ident.ca_pem,
        "cert": ident.cert_pem.decode(),
        "key": ident.key_pem.decode(),
    }


def import_identity(raw: dict[str, str]) -> NodeIdentity:
    return NodeIdentity(
        cluster=raw["cluster"],
        node=raw["node"],
        ca_pem=raw["ca"],
        cert_pem=raw["cert"].encode(),
        key_pem=raw["key"].encode(),
    )
