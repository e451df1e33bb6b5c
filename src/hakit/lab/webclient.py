"""A small HTTP client for farm tests and demos: who served each connection.

Run inside a lab client (`hakit lab exec LAB client1 -- python3 -m hakit.lab.webclient …`).
Each connection sends one `GET /`, expects a 200 answer and reads the `X-Served-By` header the
example modules set (or the page text `served by NODE`). Connections are made from the given
source addresses in turn (many client addresses), each from a fresh ephemeral port. Prints one
JSON object: `{"served": {NODE: count}, "failed": n, "errors": {...}, "by_source": {addr: [nodes…]},
"elapsed": s, "first_ok_after": s}`.

`--hold N` opens N keep-alive connections, prints who serves each, then on every line read
from stdin sends one more request on each and prints who answered (to check that long-lived
connections survive a rebalance). Every wait is bounded.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import socket
import sys
import time
from collections import Counter
from typing import Any

SERVED = re.compile(rb"(?im)^x-served-by:\s*(\S+)\s*$")
BODY = re.compile(rb"served by (\S+)")
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def _served(reply: bytes) -> str | None:
    m = SERVED.search(reply) or BODY.search(reply)
    return m.group(1).decode() if m else None


def request(sock: socket.socket, host: str, keep: bool, limit: float) -> str:
    conn = "keep-alive" if keep else "close"
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: {conn}\r\n\r\n".encode())
    deadline = time.monotonic() + limit
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if m and len(body) >= int(m.group(1)):
                break
    status = STATUS.match(data)
    if status is None or status.group(1) != b"200":
        line = data.split(b"\r\n", 1)[0][:60].decode(errors="replace")
        raise OSError(f"not a 200 answer: {line!r} ({len(data)} bytes)")
    who = _served(data)
    if who is None:
        raise OSError(f"no answer naming the node ({len(data)} bytes)")
    return who


def connect(host: str, port: int, source: str | None, limit: float) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    if source:
        sock.bind((source, 0))
    sock.settimeout(limit)
    try:
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def sources_of(spec: str | None) -> list[str | None]:
    """`10.100.1.150-10.100.1.199` or a comma-separated list; none: the default address."""
    if not spec:
        return [None]
    out: list[str | None] = []
    for part in spec.split(","):
        if "-" in part:
            a, b = (ipaddress.IPv4Address(x.strip()) for x in part.split("-"))
            out += [str(ipaddress.IPv4Address(i)) for i in range(int(a), int(b) + 1)]
        else:
            out.append(part.strip())
    return out


def run_many(host: str, port: int, count: int, sources: list[str | None], limit: float) -> Any:
    served: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    by_source: dict[str, list[str]] = {}
    start = time.monotonic()
    first_ok: float | None = None
    for i in range(count):
        src = sources[i % len(sources)]
        t0 = time.monotonic()
        try:
            with connect(host, port, src, limit) as s:
                who = request(s, host, False, limit)
        except OSError as e:
            errors[type(e).__name__ + ": " + str(e)[:60]] += 1
            continue
        if first_ok is None:
            first_ok = t0 - start
        served[who] += 1
        by_source.setdefault(src or "default", []).append(who)
    return {
        "served": dict(served),
        "failed": sum(errors.values()),
        "errors": dict(errors),
        "by_source": by_source,
        "elapsed": round(time.monotonic() - start, 3),
        "first_ok_after": None if first_ok is None else round(first_ok, 3),
    }


def hold(host: str, port: int, count: int, sources: list[str | None], limit: float) -> None:
    socks: list[socket.socket | None] = []
    first: list[str | None] = []
    for i in range(count):
        try:
            c = connect(host, port, sources[i % len(sources)], limit)
            first.append(request(c, host, True, limit))
            socks.append(c)
        except OSError:
            first.append(None)
            socks.append(None)
    print(json.dumps({"round": 0, "served": first}), flush=True)
    n = 0
    for _ in sys.stdin:
        n += 1
        now: list[str | None] = []
        for i, s in enumerate(socks):
            if s is None:
                now.append(None)
                continue
            try:
                now.append(request(s, host, True, limit))
            except OSError:
                now.append(None)
                s.close()
                socks[i] = None
        print(json.dumps({"round": n, "served": now}), flush=True)
    for left in socks:
        if left is not None:
            left.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python3 -m hakit.lab.webclient")
    ap.add_argument("host")
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--count", type=int, default=100, help="connections (at most 100000)")
    ap.add_argument("--sources", help="source addresses: A-B range or a,b,c")
    ap.add_argument("--timeout", type=float, default=3.0, help="per connection, seconds")
    ap.add_argument("--hold", type=int, default=0, help="keep N connections open (see above)")
    a = ap.parse_args(argv)
    count = max(1, min(a.count, 100_000))
    sources = sources_of(a.sources)
    if a.hold:
        hold(a.host, a.port, min(a.hold, 1000), sources, a.timeout)
        return
    print(json.dumps(run_many(a.host, a.port, count, sources, a.timeout)))


if __name__ == "__main__":
    main()
