"""The joining side of `hakit cluster join`: fetch `cluster.yaml` and the secret from a member.

The member is authenticated before anything is sent: its certificate must be signed by the CA
whose fingerprint the token carries (`tls.member_node`); only then does the token go out, over
the TLS channel. Every read is bounded in size and the whole exchange in time.
"""

from __future__ import annotations

import socket
import ssl
import time

from hakit.core.jointoken import Token
from hakit.errors import HakitError
from hakit.tls import NotAMember, join_client_context, member_node
from hakit.wire import join as wire

TIMEOUT = 15.0


class JoinFailed(HakitError):
    exit_code = 1


def _line(tls: ssl.SSLSocket, limit: int, deadline: float) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        tls.settimeout(left)
        chunk = tls.recv(min(65536, limit + 1 - len(buf)))
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise wire.JoinProtocolError(f"a message longer than {limit} bytes")
    return bytes(buf).split(b"\n", 1)[0]


def fetch(address: str, port: int, token: Token, timeout: float = TIMEOUT) -> wire.Admitted:
    """Join through the member at `address`:`port`; its answer, or `JoinFailed` saying why."""
    where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    deadline = time.monotonic() + timeout
    try:
        raw = socket.create_connection((address, port), timeout=timeout)
    except ConnectionRefusedError:
        raise JoinFailed(
            f"nothing listens on {where}: a member opens its join port only while a token made "
            "there with `hakit cluster add-node` is outstanding (this one may be used or "
            "expired, or made on another member), and a firewall must let TCP port "
            f"{port} through (`hakit config ports`)"
        ) from None
    except OSError as e:
        raise JoinFailed(f"cannot reach {where}: {e.strerror or e}") from None
    try:
        with join_client_context().wrap_socket(raw) as tls:
            hello = wire.decode_hello(_line(tls, wire.HELLO_LIMIT, deadline))
            cert = tls.getpeercert(binary_form=True)
            if cert is None:
                raise NotAMember("it presented no certificate")
            node = member_node(cert, hello.ca_pem, token.ca_hash, hello.cluster)
            if node != hello.node:
                raise NotAMember(f"its certificate names {node}, its greeting {hello.node}")
            tls.sendall(wire.request(token.credential))
            answer = wire.decode_answer(_line(tls, wire.ANSWER_LIMIT, deadline))
    except NotAMember as e:
        raise JoinFailed(
            f"{where} is not a member of the cluster this token was made for: {e}. Nothing "
            "was sent; check the address (or someone answers in the member's place)"
        ) from None
    except wire.JoinProtocolError as e:
        raise JoinFailed(f"{where} does not speak hakit's join protocol: {e}") from None
    except TimeoutError:
        raise JoinFailed(f"{where} did not answer within {timeout:g} s") from None
    except (ssl.SSLError, OSError) as e:
        raise JoinFailed(f"{where}: the connection failed: {e}") from None
    finally:
        raw.close()
    if isinstance(answer, str):
        raise JoinFailed(f"{hello.node} refused the join: {answer}")
    return answer
