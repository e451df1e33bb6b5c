"""The witness server process: UDP requests in, lease decisions out, everything bounded.

One asyncio loop, one TaskGroup. A datagram is decoded, checked and answered inside the
socket's callback, with no I/O on the way but the reply itself: the log lines go through a
bounded queue to a writer thread, the status file is written in a worker thread at most five
times a second. So a slow disk never delays an answer, and an answer never waits for anything
but the CPU.

Files (the `HAKIT_VAR` and `HAKIT_LOG` roots of `hakit.paths`):
- `$HAKIT_VAR/witness/state.json`: what the witness holds, rewritten atomically at each change
  and at least every 2 s; removed on a clean stop. `hakit witness state` reads it.
- `$HAKIT_VAR/witness/latest.json`: which node served each module alone (the other nodes'
  copies are outdated, see `hakit.core.witness`), written durably *before* the grant that
  records it is sent, and read at start: a restart never forgets it.
- `$HAKIT_VAR/witness/witness.lock`: one witness per machine (flock, holds the PID).
- `$HAKIT_LOG/witness.jsonl`: one JSON object per grant, release, expiry or refusal (and per
  start and stop), with the same sentence as on stderr (the journal under systemd).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

from hakit.adapters.statefile import StateFileError, read_json, write_json
from hakit.adapters.udp import IP_FREEBIND, IPV6_FREEBIND
from hakit.config.witness import WitnessFile, load_witness
from hakit.core import witness as arbiter
from hakit.errors import HakitError
from hakit.paths import Paths, open_log
from hakit.wire.heartbeat import make_boot_id
from hakit.wire.witness import (
    DecodeError,
    Reject,
    Reply,
    decode_request,
    derive_key,
    encode_reply,
)

STATUS_EVERY = 2.0  # s: the status file is rewritten at least this often
STATUS_MIN_GAP = 0.2  # s: and at most this often (a burst of changes is one write)
STALE_AFTER = 10.0  # s: a status file older than this means the witness is hung or gone
TICK = 0.25  # s: how often expiries are noticed (for the log and the status)
LOG_QUEUE = 10_000  # lines waiting for the writer thread; more are dropped (and counted)
REJECT_LOG_EVERY = 10.0  # s: at most one line per rejection reason
REFUSED_LOG_EVERY = 10.0  # s: at most one refusal line per (cluster, module, node)
MAX_REPLY_BACKLOG = 256 * 1024  # bytes queued for sending; beyond, replies are dropped
STOP_TIMEOUT = 5.0


def state_dir(paths: Paths) -> Path:
    return paths.var / "witness"


def state_path(paths: Paths) -> Path:
    return state_dir(paths) / "state.json"


def latest_path(paths: Paths) -> Path:
    return state_dir(paths) / "latest.json"


def load_latest(path: Path) -> dict[tuple[str, str], str]:
    """The `latest` marks kept in `path` ({} if it does not exist); `StateFileError` naming the
    file when it cannot be read or is not what the witness wrote."""
    raw = read_json(path)
    if raw is None:
        return {}
    entries = raw.get("latest") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not all(
        isinstance(e, list) and len(e) == 3 and all(isinstance(x, str) for x in e) for e in entries
    ):
        raise StateFileError(
            f'{path}: not a witness marks file (expected {{"latest": [[cluster, module, '
            "node], ...]}}); restore it or remove it (the witness then forgets which copies "
            "are outdated)"
        )
    return {(c, m): n for c, m, n in entries}


def save_latest(path: Path, latest: Mapping[tuple[str, str], str]) -> None:
    write_json(path, {"latest": [[c, m, n] for (c, m), n in sorted(latest.items())]})


def log_path(paths: Paths) -> Path:
    return paths.log / "witness.jsonl"


class WitnessNotRunning(HakitError):
    """No witness runs on this machine (or it stopped updating its state)."""

    exit_code = 3


# --- logging off the hot path -----------------------------------------------------------------


class WitnessLog:
    """Lines for stderr and records for `witness.jsonl`, written by one thread from a bounded
    queue: the event loop never waits for a terminal or a disk."""

    def __init__(self, path: Path, stderr: TextIO) -> None:
        self.path = path
        self.stderr = stderr
        self.dropped = 0
        self._queue: queue.Queue[tuple[str, str, dict[str, Any]] | None] = queue.Queue(LOG_QUEUE)
        self._thread = threading.Thread(target=self._run, name="witness-log", daemon=True)

    def start(self) -> None:
        self._file = open_log(self.path)
        self._thread.start()

    def emit(self, level: str, message: str, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait((level, message, record))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            level, message, record = item
            stamp = time.strftime("%H:%M:%S", time.localtime(record["time"]))
            with contextlib.suppress(OSError, ValueError):
                self.stderr.write(f"{stamp} {level} witness: {message}\n")
                self.stderr.flush()
            with contextlib.suppress(OSError, ValueError):
                self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
                self._file.flush()

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=STOP_TIMEOUT)
        self._thread.join(STOP_TIMEOUT)
        self._file.close()


@contextlib.contextmanager
def witness_log(path: Path, stderr: TextIO) -> Iterator[WitnessLog]:
    log = WitnessLog(path, stderr)
    log.start()
    try:
        yield log
    finally:
        log.close()


@contextlib.contextmanager
def single_witness(directory: Path) -> Iterator[None]:
    """One witness per machine (per `HAKIT_VAR`): a second one would answer with other leases."""
    directory.mkdir(parents=True, exist_ok=True)
    lock_path = directory / "witness.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise HakitError(
                f"a witness is already running here (pid {other}); stop it first (lock {lock_path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


# --- the server -------------------------------------------------------------------------------


def open_socket(address: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to `address:port` (the address may appear later)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            # `::` and `0.0.0.0` may both be listed: keep IPv6 sockets IPv6-only
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.setblocking(False)
        sock.bind((address, port))
    except OSError as e:
        sock.close()
        raise HakitError(
            f"cannot listen on {address} port {port}/udp: {e.strerror or e} "
            "(another program on that port? change `port` in witness.yaml)"
        ) from None
    return sock


def _backlog(transport: asyncio.DatagramTransport) -> int:
    """Bytes waiting to be sent (asyncio's datagram transports have it; typeshed lacks it)."""
    size = getattr(transport, "get_write_buffer_size", None)
    return int(size()) if callable(size) else 0


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, server: WitnessServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # not isinstance: CPython 3.11's selector datagram transport does not subclass it
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.transport is not None:
            self.server.receive(data, addr, self.transport)

    def error_received(self, exc: Exception) -> None:
        self.server.counters["socket_errors"] += 1


@dataclass
class WitnessServer:
    """The running witness: the arbiter and its counters; I/O is in `serve`."""

    config: WitnessFile
    log: WitnessLog
    now: float = field(default_factory=time.monotonic)
    wall_start: float = field(default_factory=time.time)
    boot: bytes = field(default_factory=lambda: make_boot_id(time.time_ns(), os.urandom(8)))
    counters: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    state: arbiter.Arbiter = field(init=False)
    keys: dict[str, bytes] = field(init=False)
    _last_reject_log: dict[str, float] = field(default_factory=dict)
    _last_refused_log: dict[tuple[str, str, str], float] = field(default_factory=dict)
    latest_file: Path | None = None  # where the `latest` marks are kept (None: memory only)

    def __post_init__(self) -> None:
        kept = load_latest(self.latest_file) if self.latest_file is not None else {}
        self.state = arbiter.new_arbiter(self.now, self.config.config.quarantine, kept)
        self.keys = {c: derive_key(s, c) for c, s in self.config.secrets.items()}

    # -- the log --------------------------------------------------------------------------

    def say(self, message: str, kind: str, level: str = "INFO") -> None:
        """A service line (start, quarantine over, stop), on stderr and in witness.jsonl."""
        record = {
            "time": time.time(),
            "kind": kind,
            "cluster": None,
            "module": None,
            "node": None,
            "op": None,
            "granted": None,
            "message": message,
        }
        self.log.emit(level, message, record)

    def note(self, n: arbiter.Note, wall: float, now: float) -> None:
        """One decision line; repeated refusals of the same node are limited to one per 10 s."""
        if n.kind == "refused":
            key = (n.cluster, n.module, n.node)
            last = self._last_refused_log.get(key)
            if last is not None and now - last < REFUSED_LOG_EVERY:
                return
            if len(self._last_refused_log) > 4096:  # bounded: forget the oldest half
                for k, _ in sorted(self._last_refused_log.items(), key=lambda kv: kv[1])[:2048]:
                    del self._last_refused_log[k]
            self._last_refused_log[key] = now
        record = {
            "time": wall,
            "kind": n.kind,
            "cluster": n.cluster,
            "module": n.module,
            "node": n.node,
            "op": n.op,
            "granted": n.granted,
            "message": n.message,
        }
        self.log.emit("WARNING" if n.kind == "expired" else "INFO", n.message, record)

    def _reject(self, reason: Reject, detail: str, addr: tuple[Any, ...], now: float) -> None:
        self.rejected[reason.value] += 1
        self.changed.set()
        last = self._last_reject_log.get(reason.value)
        if last is None or now - last >= REJECT_LOG_EVERY:
            self._last_reject_log[reason.value] = now
            self.say(
                f"dropped a datagram from {addr[0]}:{addr[1]}: {reason.value} ({detail}); "
                f"{self.rejected[reason.value]} dropped for this reason since the start",
                "rejected",
                "WARNING",
            )

    # -- datagrams ------------------------------------------------------------------------

    def receive(
        self, data: bytes, addr: tuple[Any, ...], transport: asyncio.DatagramTransport
    ) -> None:
        """Decode, check, decide and answer one datagram (no I/O but the answer)."""
        self.counters["received"] += 1
        now, wall = time.monotonic(), time.time()
        try:
            req = decode_request(data, self.keys)
        except DecodeError as e:
            self._reject(e.reason, e.detail, addr, now)
            return
        self.state, rejection = arbiter.admit(self.state, req, now, wall)
        if rejection is not None:
            self._reject(rejection.reason, rejection.detail, addr, now)
            return
        try:
            new, decision = arbiter.decide(self.state, req, now)
        except arbiter.UnexpectedRequest as e:  # a bug: loud, and no answer rather than a guess
            self.counters["internal_errors"] += 1
            self.say(f"internal error, request not answered: {e}", "error", "ERROR")
            return
        if new.latest != self.state.latest and self.latest_file is not None:
            try:  # durably before the grant that relies on it (rare: a change of mark)
                save_latest(self.latest_file, new.latest)
            except StateFileError as e:
                self.counters["internal_errors"] += 1
                self.say(f"request not answered: {e}", "error", "ERROR")
                return
        self.state = new
        reply = Reply(
            req.cluster,
            req.node,
            req.module,
            req.op,
            req.boot,
            req.seq,
            decision.granted,
            decision.holder,
            decision.remaining,
            decision.reason,
            self.boot,
        )
        if _backlog(transport) > MAX_REPLY_BACKLOG:
            self.counters["replies_dropped"] += 1
        else:
            transport.sendto(encode_reply(reply, self.keys[req.cluster]), addr)
            self.counters["answered"] += 1
        self.counters["granted" if decision.granted else "not_granted"] += 1
        for n in decision.notes:
            self.note(n, wall, now)
        if decision.notes:
            self.changed.set()

    def tick(self) -> None:
        now, wall = time.monotonic(), time.time()
        self.state, notes = arbiter.expire(self.state, now)
        for n in notes:
            self.note(n, wall, now)
        if notes:
            self.changed.set()

    # -- status ---------------------------------------------------------------------------

    def status(self, listening: list[str]) -> dict[str, Any]:
        now, wall = time.monotonic(), time.time()
        leases = arbiter.describe(self.state, now)
        clusters: dict[str, Any] = {}
        for name in self.config.config.clusters:
            mods = leases.get(name, {})
            for item in mods.values():
                item["expires_at"] = round(wall + item["remaining"], 3) if item["holder"] else None
            clusters[name] = {"leases": mods}
        q = self.state.quarantine
        return {
            "pid": os.getpid(),
            "boot": self.boot.hex(),
            "config": str(self.config.path),
            "started_at": self.wall_start,
            "written_at": wall,
            "uptime": round(now - self.state.started, 3),
            "listen": listening,
            "quarantine": q,
            "quarantine_left": round(max(0.0, self.state.started + q - now), 3),
            "clusters": clusters,
            "counters": {
                "received": self.counters["received"],
                "answered": self.counters["answered"],
                "granted": self.counters["granted"],
                "not_granted": self.counters["not_granted"],
                "replies_dropped": self.counters["replies_dropped"],
                "socket_errors": self.counters["socket_errors"],
                "internal_errors": self.counters["internal_errors"],
                "log_lines_dropped": self.log.dropped,
                "rejected": {r.value: self.rejected[r.value] for r in Reject},
            },
        }


async def serve(config: WitnessFile, paths: Paths, log: WitnessLog, stop: asyncio.Event) -> None:
    """Run the witness until `stop` is set."""
    cfg = config.config
    server = WitnessServer(config, log, latest_file=latest_path(paths))
    loop = asyncio.get_running_loop()
    socks = [open_socket(str(a), cfg.port) for a in cfg.listen]
    transports: list[asyncio.DatagramTransport] = []
    status_file = state_path(paths)
    listening = [f"[{a}]:{cfg.port}" if a.version == 6 else f"{a}:{cfg.port}" for a in cfg.listen]
    try:
        for sock in socks:
            transport, _ = await loop.create_datagram_endpoint(lambda: _Endpoint(server), sock=sock)
            transports.append(transport)
        server.say(
            f"witness started (pid {os.getpid()}): listening on {', '.join(listening)} (UDP) "
            f"for cluster(s) {', '.join(cfg.clusters)}; quarantine: no new lease for "
            f"{cfg.quarantine:g} s (leases granted before a restart must run out first)",
            "started",
        )
        server.changed.set()  # the status file appears at once: `hakit witness state` works

        async def status_writer() -> None:
            last_error = ""
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(server.changed.wait(), STATUS_EVERY)
                server.changed.clear()
                if stop.is_set():
                    return
                try:
                    await asyncio.to_thread(write_json, status_file, server.status(listening))
                    last_error = ""
                except StateFileError as e:
                    if str(e) != last_error:
                        last_error = str(e)
                        server.say(str(e), "error", "ERROR")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), STATUS_MIN_GAP)

        async def ticker() -> None:
            announced = False
            while not stop.is_set():
                server.tick()
                if not announced and not server.state.in_quarantine(time.monotonic()):
                    announced = True
                    server.changed.set()
                    server.say("quarantine over: leases may be granted", "quarantine-over")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), TICK)
            server.changed.set()  # wake the status writer so that it sees the stop

        async with asyncio.TaskGroup() as tg:
            tg.create_task(status_writer())
            tg.create_task(ticker())
    finally:
        for t in transports:
            t.close()
        for sock in socks:
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            status_file.unlink()
        c = server.counters
        server.say(
            f"witness stopped: {c['received']} datagrams received, {c['answered']} answered, "
            f"{sum(server.rejected.values())} dropped",
            "stopped",
        )


async def _main(config: WitnessFile, paths: Paths, log: WitnessLog) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve(config, paths, log, stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run_witness(config_path: Path, paths: Paths) -> None:
    """Load the configuration (nothing starts on a bad one), then serve until SIGTERM/SIGINT."""
    config = load_witness(config_path)
    with single_witness(state_dir(paths)), witness_log(log_path(paths), sys.stderr) as log:
        asyncio.run(_main(config, paths, log))


# --- reading the status (for `hakit witness state`) --------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(paths: Paths, wall: float | None = None) -> dict[str, Any]:
    """The running witness's status, or `WitnessNotRunning` with what was found instead."""
    path = state_path(paths)
    try:
        status = read_json(path)
    except StateFileError as e:
        raise WitnessNotRunning(str(e)) from None
    if status is None:
        raise WitnessNotRunning(
            f"no witness runs here: {path} does not exist (start one with "
            "`hakit witness run` or `systemctl start hakit-witness`; HAKIT_VAR selects the folder)"
        )
    pid = int(status.get("pid", 0))
    if pid <= 0 or not _alive(pid):
        raise WitnessNotRunning(
            f"no witness runs here: the state in {path} was written by pid {pid}, which is gone "
            "(it was killed or crashed)"
        )
    age = (time.time() if wall is None else wall) - float(status.get("written_at", 0.0))
    if age > STALE_AFTER:
        raise WitnessNotRunning(
            f"the witness (pid {pid}) has not updated {path} for {age:.0f} s "
            f"(it does every {STATUS_EVERY:g} s): it is hung or stopped (SIGSTOP?)"
        )
    return dict(status)
