"""Part 5 of bench/replication.py: the channel's mutual TLS vs plain TCP on the same frames,
both ends in this process.

Not a benchmark itself; `python bench/replication.py` finds it next to the script."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import MeasureError, stats
from _repl_base import HOST, percentile, rotated, say
from _repl_replica import Bench

from hakit.replication.apply import Applier
from hakit.replication.channel import Mode, Receiver, Sender, hello, read_hello
from hakit.replication.listener import Listener
from hakit.replication.stream import TlsStream
from hakit.tls import client_context, identity, server_context
from hakit.wire.replication import Kind, Op

# -- 5. the channel: TLS vs plain TCP on the same frames -------------------------------------------

CHANNEL_SECRET = b"bench" * 8
CHANNEL_WINDOW = 32  # 64 KiB writes in flight


class Channel:
    """A Sender and a Receiver applying to a real directory, over TLS (the product) or plain
    TCP (the baseline, only here)."""

    def __init__(self, root: Path, tls: bool) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self.receiver = Receiver("bench", Applier([self.fd]), Mode.SYNC)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        primary = identity(CHANNEL_SECRET, "bench", "node1")
        if tls:
            self.listener: Listener | None = Listener(
                (HOST, 0),
                server_context(identity(CHANNEL_SECRET, "bench", "node2")),
                "bench",
                "node1",
                [HOST],
                self._session,
                lambda peer, why, n: say(f"  channel: refused {peer}: {why}"),
            )
            self._start(self.listener.serve, self.stop)
            ctx = client_context(primary)
            name = primary.server_name("node2")
            self.sender = Sender.connect(HOST, self.listener.port, "bench", ctx, name, 10.0)
            return
        self.listener = None
        self.server = socket.create_server((HOST, 0))
        self._start(self._plain)
        sock = socket.create_connection(self.server.getsockname()[:2], timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(hello("bench"))
        if sock.recv(2) != b"Y\x00":
            raise MeasureError("plain channel: no welcome")
        self.sender = Sender(sock, 10.0)
        self._start(self.sender._read)

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def _session(self, conn: TlsStream, peer: str, module: str) -> None:
        if self.receiver.welcome(conn, module):
            self.receiver.serve(conn, self.stop)

    def _plain(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            module = read_hello(conn, time.monotonic() + 10)
            if self.receiver.welcome(conn, module):
                self.receiver.serve(conn, self.stop)

    def close(self) -> None:
        self.sender.close("benchmark over")
        self.stop.set()
        if self.listener is not None:
            self.listener.close()
        else:
            self.server.close()
        for t in self.threads:
            t.join(15)
        self.receiver.applier.forget()
        os.close(self.fd)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def channel_run(root: Path, tls: bool, mib: int, small_ops: int) -> dict[str, Any]:
    rss0 = _rss_kib()
    ch = Channel(root, tls)
    try:
        s = ch.sender
        if s.send(Op(Kind.CREATE, 0, (0o644, -1, -1), (b"0/big",))) != 0:
            raise MeasureError("channel: CREATE failed on the replica")
        block = os.urandom(64 * 1024)
        n = mib * 16
        cpu0, t0 = time.process_time(), time.perf_counter()
        window: list[int] = []
        for i in range(n):
            window.append(s.submit(Op(Kind.WRITE, 0, (i * len(block),), (b"0/big", block))))
            if len(window) >= CHANNEL_WINDOW and s.wait(window.pop(0)).ints[0]:
                raise MeasureError("channel: a write failed on the replica")
        for q in window:
            s.wait(q)
        secs, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        small = os.urandom(4096)
        lat: list[float] = []
        for i in range(small_ops):
            t = time.perf_counter()
            s.send(Op(Kind.WRITE, 0, (i * 4096,), (b"0/big", small)))
            lat.append((time.perf_counter() - t) * 1e6)
        lat.sort()
        return {
            "tls": tls,
            "stream_mb_per_s": n * len(block) / secs / 1e6,
            "cpu_s_per_gb": cpu / (n * len(block) / 1e9),
            "small_p50_us": percentile(lat, 50),
            "small_p99_us": percentile(lat, 99),
            "rss_growth_mib": (_rss_kib() - rss0) / 1024,
        }
    finally:
        ch.close()
        shutil.rmtree(root, ignore_errors=True)


def part_channel(bench: Bench, args: argparse.Namespace, result: dict[str, Any]) -> None:
    mib = max(16, args.size_mib // 4)
    small_ops = args.lat_ops * 2
    say(f"5. channel: TLS vs plain TCP, {mib} MiB in 64 KiB writes, {small_ops} 4 KiB writes")
    samples: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for config in rotated(["tls", "plain"], r):
            sample = channel_run(bench.root / f"channel-{config}", config == "tls", mib, small_ops)
            sample["round"] = r
            samples.append(sample)
            say(
                f"  round {r + 1} {config:5}: {sample['stream_mb_per_s']:7.0f} MB/s, "
                f"{sample['cpu_s_per_gb']:5.2f} CPU s/GB, "
                f"4 KiB p50 {sample['small_p50_us']:5.0f} us"
            )
    result["samples"]["channel"] = samples
    summary: dict[str, Any] = {"mib": mib, "small_ops": small_ops}
    keys = ("stream_mb_per_s", "cpu_s_per_gb", "small_p50_us", "small_p99_us", "rss_growth_mib")
    for config in ("tls", "plain"):
        mine = [x for x in samples if x["tls"] == (config == "tls")]
        summary[config] = {k: stats([x[k] for x in mine]) for k in keys}
    for k in keys:
        plain = summary["plain"][k]["median"]
        summary[f"{k}_ratio"] = summary["tls"][k]["median"] / plain if plain else None
    result["summary"]["channel"] = summary
