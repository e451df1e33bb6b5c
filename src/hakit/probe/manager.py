"""The health-probe listeners the modules ask for, kept in step with the daemon's status.

Every `every` seconds the manager reads the status document (`StatusSource.status()`): each
module loaded on this node with a `health_probe` gets its listener, a module gone or changed
loses it. A port that cannot be bound (taken by another program) is retried at every pass and
reported once in the module's timeline, then again when it works. Answers use the status of at
most `fresh` seconds ago (one document for every listener), so a flood of probes costs one
status per `fresh` seconds, not one per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hakit.adapters.udp import IP_FREEBIND
from hakit.daemon.logs import Event
from hakit.probe.http import Limits, ProbeListener, Verdict

log = logging.getLogger("hakit.probe")

SERVING = {"mirror": ("PRIM", "ALONE"), "farm": ("UP",)}


def verdict(status: dict[str, Any], module: str) -> Verdict:
    """200 while this node serves `module` (mirror PRIM/ALONE, farm UP, each ready), else 503;
    the body says only module, node, state and status."""
    node = status.get("node")
    mod = (status.get("modules") or {}).get(module) or {}
    mine = (mod.get("nodes") or {}).get(node) or {}
    state, st = str(mine.get("state", "STOP")), str(mine.get("status", "not-ready"))
    serving = st == "ready" and state in SERVING.get(str(mod.get("kind")), ())
    return (200 if serving else 503), {"module": module, "node": node, "state": state, "status": st}


@dataclass(frozen=True)
class Spec:
    port: int
    bind: tuple[str, ...]
    path: str

    @staticmethod
    def of(raw: dict[str, Any]) -> Spec:
        return Spec(int(raw["port"]), tuple(str(a) for a in raw["bind"]), str(raw["path"]))

    def describe(self) -> str:
        where = ", ".join(f"[{a}]" if ":" in a else a for a in self.bind)
        return f"{where} port {self.port} (GET {self.path})"


def listening_socket(address: str, port: int) -> socket.socket:
    """A bound, listening, non-blocking TCP socket (IPv6 only for `::`; FREEBIND for IPv4, so
    an address that comes up later, such as a VIP, can be bound now)."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((address, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class _Running:
    spec: Spec
    listener: ProbeListener


@dataclass
class ProbeManager:
    status: Callable[[], dict[str, Any]]
    record: Callable[[Event], None]
    limits: Limits = field(default_factory=Limits)
    every: float = 1.0
    fresh: float = 0.1

    def __post_init__(self) -> None:
        self.running: dict[str, _Running] = {}
        self.problems: dict[str, str] = {}  # module -> the last bind error reported
        self._closed = asyncio.Event()
        self._cache: tuple[float, dict[str, Any]] | None = None

    def current(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._cache is None or now - self._cache[0] > self.fresh:
            self._cache = (now, self.status())
        return self._cache[1]

    async def run(self) -> None:
        """Until `close()`: keep the listeners in step with the modules. Never raises."""
        try:
            while not self._closed.is_set():
                try:
                    await self.reconcile(self.status())
                except Exception:  # a status or socket surprise: retried, never fatal
                    log.exception("health probes: reconciling failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), self.every)
        finally:
            for name in list(self.running):
                await self._stop(name)

    def close(self) -> None:
        self._closed.set()

    async def reconcile(self, status: dict[str, Any]) -> None:
        wanted: dict[str, Spec] = {}
        for name, mod in (status.get("modules") or {}).items():
            raw = mod.get("health_probe") if isinstance(mod, dict) else None
            if raw:
                wanted[name] = Spec.of(raw)
        for name in list(self.running):
            if wanted.get(name) != self.running[name].spec:
                await self._stop(name)
        for name in list(self.problems):
            if name not in wanted:
                del self.problems[name]
        node = str(status.get("node", ""))
        for name, spec in wanted.items():
            if name not in self.running:
                await self._start(node, name, spec)

    async def _start(self, node: str, name: str, spec: Spec) -> None:
        socks: list[socket.socket] = []
        try:
            for address in spec.bind:
                socks.append(listening_socket(address, spec.port))
        except OSError as e:
            for s in socks:
                s.close()
            why = _why(e)
            message = (
                f"{name}: health probe cannot listen on {spec.describe()}: {why}; retrying "
                "every second (check `ss -ltnp` for the program holding the port)"
            )
            if self.problems.get(name) != message:
                self.problems[name] = message
                self._event(node, name, "module-error", message)
            return
        listener = ProbeListener(spec.path, lambda: verdict(self.current(), name), self.limits)
        try:
            await listener.start(socks)
        except Exception:
            for s in socks:
                s.close()
            raise
        self.running[name] = _Running(spec, listener)
        self.problems.pop(name, None)
        self._event(node, name, "module", f"{name}: health probe listening on {spec.describe()}")

    async def _stop(self, name: str) -> None:
        r = self.running.pop(name)
        await r.listener.close()

    def _event(self, node: str, module: str, kind: str, message: str) -> None:
        self.record(Event(time.time(), node, kind, message, module=module))


def _why(e: OSError) -> str:
    if e.errno is None:
        return str(e)
    return f"{errno.errorcode.get(e.errno, e.errno)} ({os.strerror(e.errno)})"
