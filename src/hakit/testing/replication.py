"""A replication process driven from a test or a benchmark, without the daemon (blocking API).

Starts `python -m hakit.daemon.replicator` with an init object, collects its events in a
thread, and offers `wait_for(event)`, `command(...)` and `stop()`. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from hakit.replication.stream import export_identity
from hakit.tls import identity

SECRET = b"\x5a" * 32
CLUSTER = "lab"
NODES = {"primary": ("node1", "node2"), "secondary": ("node2", "node1")}  # role -> (us, peer)


@dataclass
class ReplicatorProcess:
    role: str
    dirs: list[dict[str, Any]]
    state_dir: str
    mode: str = "sync"
    listen: tuple[str, int] | None = None
    base: str = ""
    preserve: str = ""  # secondary: keep the entries the resync changes in this folder
    ack_timeout: float = 0.8
    bandwidth: int = 0
    module: str = "m"
    secret: bytes = SECRET  # another one: a node of another cluster
    peer_addresses: tuple[str, ...] = ("127.0.0.1",)
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        os.makedirs(self.state_dir, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hakit.daemon.replicator"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._cond = threading.Condition()
        init = {
            "role": self.role,
            "module": self.module,
            "tls": export_identity(identity(self.secret, CLUSTER, NODES[self.role][0])),
            "peer": NODES[self.role][1],
            "peer_addresses": list(self.peer_addresses),
            "dirs": self.dirs,
            "mode": self.mode,
            "state_dir": self.state_dir,
            "ack_timeout": self.ack_timeout,
            "bandwidth": self.bandwidth,
            "listen": list(self.listen) if self.listen else None,
            "base": self.base,
            "preserve": self.preserve,
            "preserve_why": "test: diverged copy" if self.preserve else "",
        }
        self._write(init)
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _write(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self.events.append(ev)
                self._cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())

    def wait_for(self, event: str, timeout: float = 30.0, after: int = 0) -> dict[str, Any]:
        """The first `event` at index >= `after` in the event list (AssertionError on timeout
        or on an `error` event)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events[after:]:
                    if ev["event"] == event:
                        return ev
                    if ev["event"] == "error" and event != "error":
                        raise AssertionError(f"replicator failed: {ev['message']}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no {event!r} within {timeout} s; events: {self.events[-10:]}; "
                        f"stderr: {self.stderr[-10:]}"
                    )
                self._cond.wait(left)

    def mark(self) -> int:
        """Index to pass as `after` to wait for an event that comes after this point."""
        with self._cond:
            return len(self.events)

    def connect(self, port: int, peer_gen: str = "", my_gen: str = "g1") -> None:
        self._write(
            {
                "cmd": "connect",
                "host": "127.0.0.1",
                "port": port,
                "peer_gen": peer_gen,
                "my_gen": my_gen,
            }
        )

    def command(self, **cmd: Any) -> None:
        self._write(cmd)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            try:
                self._write({"cmd": "stop"})
                self.proc.wait(timeout)
            except (OSError, ValueError, subprocess.TimeoutExpired):  # ValueError: stdin closed
                self.kill()
        self.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.close()

    def close(self) -> None:
        """Once the process has exited: collect the rest of its output, close the pipes."""
        if self.proc.poll() is None:
            return
        for t in self._readers:
            t.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()
