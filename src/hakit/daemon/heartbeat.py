"""The heartbeat process: sends and receives heartbeats and decides membership, isolated.

It runs as its own OS process (`python -m hakit.daemon.heartbeat`), started and supervised by
`hakit daemon`, with real-time scheduling and locked memory when allowed, and does nothing but
heartbeats: no disk I/O, no scripts, no logging to files. So a daemon busy with scripts,
checkers, replication or a slow disk never delays a heartbeat nor a loss decision.

Protocol with the parent, JSON lines:
- parent -> child on stdin: first `{"init": {...}}`, then `{"payload": HEX}` (state published
  to peers in every heartbeat), `{"peers": {PEER: {NETWORK: ADDRESS}}}` (new peers: a cluster
  configuration applied live) and `{"ping": T}` keepalives; end of file means "exit now".
- child -> parent on stdout: `{"ready": ...}`, `{"event": ...}` for every membership change
  (with the wall-clock time it was decided), `{"snapshot": ...}` after each tick that changed
  something and at least every `interval`.
Writes to the parent never block: they are buffered in memory, bounded; when the parent does not
read, snapshots are skipped (counted) — events are kept up to the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hakit.adapters.realtime import make_realtime
from hakit.adapters.udp import PortTaken, open_heartbeat_socket
from hakit.core import membership as m
from hakit.core.heartbeat import (
    Engine,
    NetworkAction,
    NetworkHeard,
    NetworkSilent,
    Rejected,
    Settings,
)
from hakit.latency import Latency

MAX_PARENT_BUFFER = 4 * 1024 * 1024
GAP_BUCKETS = (0.1, 0.2, 0.21, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.5, 2.0, 5.0)
"""Upper bounds (s) of the heartbeat gap histogram: the time between two heartbeats accepted
from a peer on a network (docs/metrics.md)."""
TICKS_PER_INTERVAL = 4
BIND_RETRY = 2.0  # s between two attempts to bind a network whose port is taken


def _event(action: m.Action | NetworkAction, wall: float) -> dict[str, Any]:
    kind = {
        m.PeerUp: "peer-up",
        m.PeerLost: "peer-lost",
        m.PeerRestarted: "peer-restarted",
        m.LinkUp: "link-up",
        m.LinkDown: "link-down",
        NetworkSilent: "network-silent",
        NetworkHeard: "network-heard",
    }[type(action)]
    return {
        "at": wall,
        "kind": kind,
        "peer": getattr(action, "peer", None),
        "network": getattr(action, "network", None),
        "message": action.reason,
    }


def peer_snapshot(p: m.Peer, now: float, wall: float) -> dict[str, Any]:
    def wall_of(t: float | None) -> float | None:
        return None if t is None else wall - (now - t)

    return {
        "state": p.state.value,
        "alive": p.state is m.PeerState.ALIVE,
        "since": wall_of(p.since),
        "networks": {n: p.link(n).up for n in p.networks},
        "last_heard": {n: wall_of(p.link(n).last_heard) for n in p.networks},
        "heard": {n: p.link(n).heard for n in p.networks},
        "boot": p.boot.hex() if p.boot else None,
        "clock_offset": p.clock_offset,
        "protocol": p.protocol or None,
        "release": p.release or None,
        "payload": p.payload.hex(),
    }


@dataclass
class Runner:
    engine: Engine
    addresses: dict[str, str]
    port: int
    out: asyncio.WriteTransport
    socks: dict[str, socket.socket] = field(default_factory=dict)
    bind_errors: dict[str, str] = field(default_factory=dict)
    send_ok: dict[str, bool] = field(default_factory=dict)
    send_errors: Counter[str] = field(default_factory=Counter)
    skipped_snapshots: int = 0
    last_parent: float = field(default_factory=time.monotonic)
    dirty: bool = True
    last_reject_log: dict[str, float] = field(default_factory=dict)
    gaps: dict[tuple[str, str], Latency] = field(default_factory=dict)  # (peer, network)
    heard_at: dict[tuple[str, str], float] = field(default_factory=dict)

    def emit(self, obj: dict[str, Any], *, droppable: bool = False) -> None:
        if self.out.is_closing():
            return
        if self.out.get_write_buffer_size() > (
            MAX_PARENT_BUFFER // 2 if droppable else MAX_PARENT_BUFFER
        ):
            self.skipped_snapshots += 1
            return
        self.out.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    def handle(self, actions: Sequence[m.Action | NetworkAction | Rejected], wall: float) -> None:
        for a in actions:
            if isinstance(a, Rejected | m.Dropped):
                reason = str(a.reason)
                last = self.last_reject_log.get(reason, 0.0)
                if wall - last >= 1.0:  # at most one line per reason per second
                    self.last_reject_log[reason] = wall
                    self.emit(
                        {
                            "reject": {
                                "at": wall,
                                "network": a.network,
                                "reason": reason,
                                "detail": a.detail,
                            }
                        }
                    )
                continue
            self.dirty = True
            self.emit({"event": _event(a, wall)})

    def snapshot(self, now: float, wall: float) -> dict[str, Any]:
        st = self.engine.statistics()
        return {
            "at": wall,
            "peers": {
                n: peer_snapshot(p, now, wall)
                | {"gaps": {net: h.snapshot() for (pn, net), h in self.gaps.items() if pn == n}}
                for n, p in st.peers.items()
            },
            "local_networks": {
                n: n in self.socks and self.send_ok.get(n, True) for n in self.addresses
            },
            "network_problems": {
                **self.engine.silent_networks,
                **self.bind_errors,
            },
            "stats": {
                "sent": st.sent,
                "received": st.received,
                "accepted": st.accepted,
                "rejected": st.rejected,
                "send_errors": dict(self.send_errors),
                "bind_errors": self.bind_errors,
                "skipped_snapshots": self.skipped_snapshots,
                "parent_silent_for": round(time.monotonic() - self.last_parent, 3),
            },
        }

    def bind(self, loop: asyncio.AbstractEventLoop, wall: float) -> None:
        """Bind every network not bound yet; report each new failure and each recovery."""
        for net, addr in self.addresses.items():
            if net in self.socks:
                continue
            try:
                sock = open_heartbeat_socket(addr, self.port)
            except PortTaken as e:  # names the holder
                err = str(e)
            except OSError as e:  # the kernel's reason
                err = f"cannot bind {addr}:{self.port}/udp: {e.strerror or e}"
            else:
                err = ""
            if err:
                if self.bind_errors.get(net) != err:
                    self.bind_errors[net] = err
                    self.emit_event("network-error", net, f"network {net}: {err}", wall)
                self.engine.deaf.add(net)
                continue
            self.socks[net] = sock
            loop.add_reader(sock.fileno(), self.on_readable, net, sock)
            self.engine.deaf.discard(net)
            if self.bind_errors.pop(net, None) is not None:
                self.dirty = True
                self.emit_event(
                    "network-bound", net, f"network {net}: {addr}:{self.port}/udp bound now", wall
                )

    def emit_event(self, kind: str, network: str, message: str, wall: float) -> None:
        self.dirty = True
        self.emit(
            {
                "event": {
                    "at": wall,
                    "kind": kind,
                    "peer": None,
                    "network": network,
                    "message": message,
                }
            }
        )

    def on_readable(self, network: str, sock: socket.socket) -> None:
        for _ in range(64):  # bounded batch per wake-up
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.handle(
                self.engine.receive(data, network, time.monotonic(), time.time()), time.time()
            )
            self.count_gap(network)
            if self.engine.payload_changed:
                # A peer's module changed state: the daemon must know now, not at the next
                # periodic snapshot.
                self.engine.payload_changed = False
                now, wall = time.monotonic(), time.time()
                self.emit({"snapshot": self.snapshot(now, wall)}, droppable=True)

    def count_gap(self, network: str) -> None:
        """The time since the previous heartbeat accepted from the same peer on `network`."""
        for name, peer in self.engine.peers.items():
            link = peer.links.get(network)
            if link is None or link.last_heard is None:
                continue
            key = (name, network)
            before = self.heard_at.get(key)
            if before == link.last_heard:
                continue
            self.heard_at[key] = link.last_heard
            if before is not None:
                gaps = self.gaps.get(key)
                if gaps is None:
                    gaps = self.gaps[key] = Latency(GAP_BUCKETS)
                gaps.add(link.last_heard - before)

    def send_round(self) -> None:
        for o in self.engine.outgoing(time.time()):
            sock = self.socks.get(o.network)
            if sock is None:
                continue
            try:
                sock.sendto(o.data, (o.address, self.port))
                if not self.send_ok.get(o.network, True):
                    self.dirty = True
                self.send_ok[o.network] = True
            except OSError as e:
                self.send_errors[f"{o.network}: {e.strerror}"] += 1
                if self.send_ok.get(o.network, True):
                    self.dirty = True
                self.send_ok[o.network] = False


async def run(init: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    settings = Settings(
        cluster=init["cluster"],
        secret=bytes.fromhex(init["secret"]),
        local=init["local"],
        interval=float(init["interval"]),
        timeout=float(init["timeout"]),
        peers=init["peers"],
        local_networks=tuple(init["addresses"]),
    )
    engine = Engine(
        settings, boot=bytes.fromhex(init["boot"]), seq=int(init["seq"]), now=time.monotonic()
    )
    w_transport, _ = await loop.connect_write_pipe(
        asyncio.Protocol, os.fdopen(1, "wb", buffering=0)
    )
    runner = Runner(engine, dict(init["addresses"]), int(init["port"]), w_transport)
    runner.bind(loop, time.time())
    sched = make_realtime() if init.get("realtime") else "normal scheduling (realtime: false)"
    gc.collect()
    gc.freeze()  # long-lived objects out of the collector's way: shorter, rarer pauses
    runner.emit(
        {"ready": {"pid": os.getpid(), "scheduling": sched, "bind_errors": runner.bind_errors}}
    )

    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    held: list[dict[str, Any]] = []

    async def from_parent() -> None:
        while True:
            line = await reader.readline()
            if not line:
                return  # parent gone: stop at once
            runner.last_parent = time.monotonic()
            msg = json.loads(line)
            if "payload" in msg:
                engine.payload = bytes.fromhex(msg["payload"])
            if "peers" in msg:  # a cluster configuration applied live
                engine.reconfigure(msg["peers"], time.monotonic())
                runner.dirty = True
            if "hold" in msg:
                held[:] = msg["hold"]
                if held:
                    import hakit.adapters.vip  # noqa: F401  (loaded now, not when it must be fast)

    async def pulses() -> None:
        interval = settings.interval
        tick = interval / TICKS_PER_INTERVAL
        next_send = time.monotonic()
        last_snapshot = 0.0
        next_bind = next_send + BIND_RETRY
        while True:
            now = time.monotonic()
            if runner.bind_errors and now >= next_bind:
                runner.bind(loop, time.time())
                next_bind = now + BIND_RETRY
            if now >= next_send:
                runner.send_round()
                next_send += interval
                if next_send < now:  # we were delayed: do not burst to catch up
                    next_send = now + interval
            wall = time.time()
            runner.handle(list(engine.tick(now)), wall)
            if runner.dirty or now - last_snapshot >= interval:
                runner.emit({"snapshot": runner.snapshot(now, wall)}, droppable=True)
                runner.dirty = False
                last_snapshot = now
            await asyncio.sleep(max(0.0, min(tick, next_send - time.monotonic())))

    try:
        async with asyncio.TaskGroup() as tg:
            pulse_task = tg.create_task(pulses())
            await from_parent()
            pulse_task.cancel()
        # The daemon is gone (killed, crashed, or stopped): whatever VIPs it held must not stay
        # up while the peer takes over.
        if held:
            from hakit.adapters.vip import Vip, release_all

            for line in release_all([Vip(**v) for v in held]):
                sys.stderr.write(f"heartbeat process: {line}\n")
    finally:
        for sock in runner.socks.values():
            loop.remove_reader(sock.fileno())
            sock.close()


def _read_first_line(fd: int, limit: int = 1 << 20) -> bytes:
    """Read exactly one line from `fd`, byte by byte, so nothing after it is consumed."""
    buf = bytearray()
    while len(buf) < limit:
        b = os.read(fd, 1)
        if not b or b == b"\n":
            break
        buf += b
    return bytes(buf)


def main() -> None:
    line = _read_first_line(0)
    if not line:
        return
    init = json.loads(line)["init"]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(init))


if __name__ == "__main__":
    main()
