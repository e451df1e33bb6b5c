"""Starts, feeds and restarts the heartbeat process; turns what it reports into daemon state."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hakit.daemon.logs import LOGGER, Event

log = logging.getLogger(LOGGER + ".heartbeat")

RESTART_BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0)
KEEPALIVE_EVERY = 1.0
STARTUP_TIMEOUT = 10.0


@dataclass
class HeartbeatView:
    """What the daemon knows from its heartbeat process (latest snapshot, counters)."""

    snapshot: dict[str, Any] | None = None
    pid: int | None = None
    scheduling: str = ""
    restarts: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # set once heartbeats are received on at least one network (its socket is bound)
    listening: asyncio.Event = field(default_factory=asyncio.Event)


class HeartbeatSupervisor:
    def __init__(
        self,
        init: dict[str, Any],
        node: str,
        record: Callable[[Event], None],
        monotonic_base: float,
        on_snapshot: Callable[[dict[str, Any]], None] = lambda s: None,
    ) -> None:
        self._init = init
        self._node = node
        self._record = record
        self._base = monotonic_base
        self._on_snapshot = on_snapshot
        self._hold: list[dict[str, Any]] = []
        self.view = HeartbeatView()
        self._proc: asyncio.subprocess.Process | None = None
        self._payload: bytes = b""
        self._stopping = False

    def _seq_base(self) -> int:
        # Microseconds since the daemon started: always above any sequence number a previous
        # heartbeat process of this daemon used (it sends at most one round per 20 ms).
        return int((time.monotonic() - self._base) * 1e6)

    async def run(self) -> None:
        """Keep a heartbeat process running until cancelled, restarting it if it dies."""
        failures = 0
        while True:
            started = time.monotonic()
            code = await self._run_once()
            if self._stopping:
                return
            if time.monotonic() - started > 30:
                failures = 0
            delay = RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)]
            failures += 1
            self.view.restarts += 1
            self._record(
                Event(
                    time.time(),
                    self._node,
                    "heartbeat-restart",
                    f"heartbeat process exited (status {code}); restarting in {delay:g} s",
                )
            )
            await asyncio.sleep(delay)

    async def _run_once(self) -> int | None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hakit.daemon.heartbeat",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 22,
        )
        self._proc = proc
        self.view.pid = proc.pid
        assert proc.stdin
        assert proc.stdout
        assert proc.stderr
        init = dict(self._init, seq=self._seq_base())
        proc.stdin.write(json.dumps({"init": init}).encode() + b"\n")
        if self._payload:
            proc.stdin.write(json.dumps({"payload": self._payload.hex()}).encode() + b"\n")
        if self._hold:
            proc.stdin.write(json.dumps({"hold": self._hold}).encode() + b"\n")
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._keepalive(proc))
                tg.create_task(self._stderr(proc))
                await self._stdout(proc)
                # stdout closed: the process is exiting
                raise _Exited()
        except* _Exited:
            pass
        except* (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            if proc.returncode is None:
                proc.kill()
            code = await proc.wait()
            self._proc = None
            self.view.pid = None
        return code

    async def _keepalive(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdin
        while True:
            proc.stdin.write(json.dumps({"ping": time.time()}).encode() + b"\n")
            await proc.stdin.drain()
            await asyncio.sleep(KEEPALIVE_EVERY)

    async def _stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr
        async for line in proc.stderr:
            log.error("heartbeat process: %s", line.decode(errors="replace").rstrip())

    async def _stdout(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout
        async for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                log.error("heartbeat process sent garbage: %r", line[:200])
                continue
            if "snapshot" in msg:
                self.view.snapshot = msg["snapshot"]
                self._listening(msg["snapshot"]["stats"]["bind_errors"])
                self._on_snapshot(msg["snapshot"])
            elif "event" in msg:
                e = msg["event"]
                self._record(
                    Event(
                        e["at"],
                        self._node,
                        e["kind"],
                        e["message"],
                        e.get("peer"),
                        e.get("network"),
                    )
                )
            elif "reject" in msg:
                r = msg["reject"]
                log.warning(
                    "heartbeat dropped on %s: %s (%s)", r["network"], r["reason"], r["detail"]
                )
            elif "ready" in msg:
                r = msg["ready"]
                self.view.scheduling = r["scheduling"]
                log.info("heartbeat process %s ready (%s)", r["pid"], r["scheduling"])
                self._listening(r["bind_errors"])
                if not self.view.listening.is_set():
                    self._record(
                        Event(
                            time.time(),
                            self._node,
                            "network-error",
                            "no heartbeat network could be bound: modules are not started "
                            "until one is (a node that cannot hear its peers must not decide "
                            "they are dead)",
                        )
                    )
                self.view.ready.set()

    def _listening(self, bind_errors: dict[str, str]) -> None:
        if len(bind_errors) < len(self._init["addresses"]):
            self.view.listening.set()

    def publish(self, payload: bytes) -> None:
        """State carried in every heartbeat from now on (module states, later)."""
        self._payload = payload
        self._send({"payload": payload.hex()})

    def reconfigure(self, peers: dict[str, dict[str, str]]) -> None:
        """New peers and addresses, taken by the running heartbeat process at once (and by any
        later one): peers that stay keep their state."""
        self._init = dict(self._init, peers=peers)
        self._send({"peers": peers})

    def hold(self, vips: list[dict[str, Any]]) -> None:
        """VIPs the heartbeat process must release at once if this daemon dies."""
        self._hold = vips
        self._send({"hold": vips})

    def _send(self, msg: dict[str, Any]) -> None:
        proc = self._proc
        if proc and proc.stdin and not proc.stdin.is_closing():
            proc.stdin.write(json.dumps(msg).encode() + b"\n")

    def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc and proc.stdin and not proc.stdin.is_closing():
            proc.stdin.close()  # end of file: the heartbeat process exits at once


class _Exited(Exception):
    pass
