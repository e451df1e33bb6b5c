"""The daemon's handle on one replication process (see `daemon/replicator.py`).

Starts it with its init object, reads its events (handing each to a callback, keeping the
latest progress), sends commands, and stops it: `stop` command, bounded wait, then SIGKILL.
Its PID is recorded in the module's state folder so that the next daemon can kill a process a
dead daemon left behind (a fenced primary) before cleaning up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hakit.daemon.logs import LOGGER

log = logging.getLogger(LOGGER + ".replication")

STOP_WAIT = 60.0  # unmounting waits for the application's last operations
NOISE = ("Ignoring invalid max threads value",)  # libfuse 3.14 about mfusepy's loop settings


class ReplicationLink:
    def __init__(
        self,
        init: dict[str, Any],
        pid_file: Path,
        on_event: Callable[[dict[str, Any]], None],
    ) -> None:
        self.init = init
        self.role = str(init["role"])
        self.pid_file = pid_file
        self.on_event = on_event
        self.proc: asyncio.subprocess.Process | None = None
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.progress: dict[str, Any] | None = None
        self.stats: dict[str, Any] | None = None  # the latest `stats` event (metrics)
        self.state = "starting"  # primary: alone | resyncing | ready; secondary: listening...
        self.exited: asyncio.Future[int] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.stderr: list[str] = []

    async def start(self, limit: float = 30.0) -> tuple[bool, str]:
        """Start and wait for `mounted` (primary) or `listening` (secondary)."""
        kill_leftover(self.pid_file)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hakit.daemon.replicator",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{self.proc.pid}\n")
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(self.init).encode() + b"\n")
        self.exited = asyncio.get_running_loop().create_future()
        self._tasks = [
            asyncio.create_task(self._read()),
            asyncio.create_task(self._read_stderr()),
        ]
        want = "mounted" if self.role == "primary" else "listening"
        try:
            ev = await self.wait_for({want, "error"}, limit)
        except TimeoutError:
            await self.kill()
            return False, f"replication process did not start within {limit:g} s"
        if ev["event"] == "error":
            await self._reap()
            return False, str(ev["message"])
        self.state = "alone" if self.role == "primary" else "listening"
        return True, ""

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            try:
                ev = json.loads(line)
            except ValueError:
                log.warning("replication process sent garbage: %r", line[:200])
                continue
            kind = ev.get("event")
            if kind == "stats":  # kept, not queued: nobody waits for it
                self.stats = ev
                continue
            if kind == "progress":
                self.progress = ev
            elif kind in ("alone", "resync-failed"):
                self.state = "alone"
                self.progress = None
            elif kind == "connected":
                self.state = "resyncing" if self.role == "primary" else "connected"
            elif kind == "synced":
                self.state = "ready" if self.role == "primary" else "synced"
                self.progress = None
            elif kind == "lost":
                self.state = "listening"
            self.events.put_nowait(ev)
            self.on_event(ev)
        code = await self.proc.wait()
        if self.exited is not None and not self.exited.done():
            self.exited.set_result(code)
        self.pid_file.unlink(missing_ok=True)

    async def _read_stderr(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            if any(n in text for n in NOISE):
                continue
            self.stderr = [*self.stderr[-50:], text]
            log.warning("replication process: %s", text)

    async def wait_for(self, kinds: set[str], limit: float | None) -> dict[str, Any]:
        """The next event of one of `kinds` (events of other kinds are skipped)."""
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0)
            ev = await asyncio.wait_for(self.events.get(), left)
            if ev.get("event") in kinds:
                return ev

    def command(self, **cmd: Any) -> None:
        if self.proc is None or self.proc.stdin is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(OSError, RuntimeError):
            self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, limit: float = STOP_WAIT) -> tuple[bool, str]:
        """Stop: unmount (primary) / unbind (secondary); SIGKILL if it does not end in time."""
        if not self.running:
            await self._reap()
            return True, "not running"
        self.command(cmd="stop")
        try:
            ev = await self.wait_for({"stopped"}, limit)
            detail = "; ".join(ev.get("unmounted") or []) or "stopped"
            ok = True
        except TimeoutError:
            detail = f"replication process did not stop within {limit:g} s: killed"
            ok = False
        await self._reap(kill_after=5.0)
        return ok, detail

    async def kill(self) -> None:
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self._reap()

    async def _reap(self, kill_after: float = 0.0) -> None:
        if self.proc is None:
            return
        try:
            await asyncio.wait_for(self.proc.wait(), kill_after or 5.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(t, 5)
        self.pid_file.unlink(missing_ok=True)


def kill_leftover(pid_file: Path) -> bool:
    """Kill a replication process a previous daemon left running (it fenced itself)."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"hakit.daemon.replicator" not in f.read():
                return False
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return False
    for _ in range(100):  # bounded: up to 5 s for it to disappear
        if not os.path.exists(f"/proc/{pid}"):
            break
        time.sleep(0.05)
    pid_file.unlink(missing_ok=True)
    return True
