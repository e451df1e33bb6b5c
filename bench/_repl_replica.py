"""The replication processes of bench/replication.py: `Bench` (where everything lives, what
was started, the delay proxy of --rtt-ms) and `Replica` (directory A replicated to B by a
primary and a secondary `ReplicatorProcess`).

Not a benchmark itself; `python bench/replication.py` finds it next to the script."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import MeasureError
from _repl_base import (
    EVENT_TIMEOUT,
    GEN,
    HOST,
    SYNC_TIMEOUT,
    cpu_seconds,
    empty_dir,
    free_port,
    mounts_under,
    say,
)

from hakit.lab.delay import DelayProxy
from hakit.testing.replication import ReplicatorProcess

if TYPE_CHECKING:
    from _repl_pgbench import Postgres


def wait_event(
    p: ReplicatorProcess,
    name: str,
    after: int,
    timeout: float = EVENT_TIMEOUT,
    fail_on: tuple[str, ...] = ("error",),
) -> dict[str, Any]:
    """The first event `name` at index >= `after`; MeasureError on an event of `fail_on`, on
    the process's exit or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    seen = after
    while True:
        events = p.events[seen:]
        for ev in events:
            if ev.get("event") == name:
                return ev
            if ev.get("event") in fail_on:
                raise MeasureError(
                    f"{p.role} replication process: {ev} while waiting for {name!r}{stderr_tail(p)}"
                )
        seen += len(events)
        if p.proc.poll() is not None:
            time.sleep(0.1)  # let the reader thread collect the last events
            if not any(ev.get("event") == name for ev in p.events[seen:]):
                raise MeasureError(
                    f"{p.role} replication process exited ({p.proc.returncode}) while waiting "
                    f"for {name!r}; last events {p.events[-5:]}{stderr_tail(p)}"
                )
        if time.monotonic() > deadline:
            raise MeasureError(
                f"{p.role} replication process: no {name!r} within {timeout:g} s; last events "
                f"{p.events[-5:]}{stderr_tail(p)}"
            )
        time.sleep(0.01)


def stderr_tail(p: ReplicatorProcess, lines: int = 8) -> str:
    tail = [line for line in p.stderr if "Ignoring invalid max threads" not in line][-lines:]
    return ("\n--- stderr ---\n" + "\n".join(tail)) if tail else ""


class Bench:
    """Where everything lives (/tmp/hkbench-repl-PID), and what was started (for cleaning up)."""

    def __init__(self, root: Path, ack_timeout: float) -> None:
        self.root = root
        self.ack_timeout = ack_timeout
        self.procs: list[ReplicatorProcess] = []
        self.clusters: list[Postgres] = []
        self.ports: set[int] = set()
        self.port = 0  # the secondary's listener
        self.connect_port = 0  # where the primary connects: the listener or the delay proxy
        self.proxy_stop: Callable[[], None] | None = None

    def start_delay(self, rtt: float) -> None:
        """A DelayProxy (rtt/2 each way) from `connect_port` to the listener, in a thread."""
        import asyncio

        self.connect_port = free_port(self.ports)
        proxy = DelayProxy((HOST, self.connect_port), (HOST, self.port), rtt / 2)
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            loop.run_until_complete(proxy.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(proxy.close())
            loop.close()

        thread = threading.Thread(target=serve, name="delay-proxy", daemon=True)
        thread.start()
        if not ready.wait(EVENT_TIMEOUT):
            raise MeasureError("the delay proxy did not start")

        def stop() -> None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(EVENT_TIMEOUT)

        self.proxy_stop = stop

    def spawn(self, role: str, path: Path, state: Path, mode: str, **kw: Any) -> ReplicatorProcess:
        p = ReplicatorProcess(
            role,
            [{"path": str(path)}],
            state_dir=str(state),
            mode=mode,
            ack_timeout=self.ack_timeout,
            module="bench",
            **kw,
        )
        self.procs.append(p)
        return p

    def cleanup(self) -> list[str]:
        """Stop PostgreSQL and the replication processes started here, remove the mounts left
        under the root, delete it. Returns warnings (what could not be cleaned)."""
        warnings: list[str] = []
        for c in self.clusters:
            with contextlib.suppress(Exception):
                c.kill()
        for p in self.procs:
            if p.proc.poll() is None:
                with contextlib.suppress(Exception):
                    p.stop(timeout=20)
            if p.proc.poll() is None:
                with contextlib.suppress(Exception):
                    p.kill()
            if p.proc.poll() is None:
                warnings.append(f"replication process {p.proc.pid} did not exit")
        for _ in range(5):
            left = mounts_under(self.root)
            if not left:
                break
            for point in reversed(left):
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        left = mounts_under(self.root)
        if left:
            warnings.append(f"mounts left under {self.root}: {left}; not deleting it")
        else:
            shutil.rmtree(self.root, ignore_errors=True)
            if self.root.exists():
                warnings.append(f"could not delete {self.root}")
        return warnings


class Replica:
    """Directory A replicated to B: the secondary process (listening, B read-only) and the
    primary process (FUSE mounted over A)."""

    def __init__(self, bench: Bench, name: str, mode: str) -> None:
        self.bench = bench
        self.mode = mode
        self.a = bench.root / f"{name}-a"
        self.b = bench.root / f"{name}-b"
        self.sa = bench.root / "state" / f"{name}-a"
        self.sb = bench.root / "state" / f"{name}-b"
        for d in (self.a, self.b, self.sa, self.sb):
            d.mkdir(parents=True, exist_ok=True)
        self.primary: ReplicatorProcess | None = None
        self.secondary: ReplicatorProcess | None = None

    def start_secondary(self) -> None:
        assert self.secondary is None
        p = self.bench.spawn(
            "secondary", self.b, self.sb, self.mode, listen=(HOST, self.bench.port)
        )
        self.secondary = p
        wait_event(p, "listening", 0)

    def start_primary(self) -> None:
        assert self.primary is None
        p = self.bench.spawn("primary", self.a, self.sa, self.mode, base=GEN)
        self.primary = p
        wait_event(p, "mounted", 0)

    def up(self) -> dict[str, Any]:
        """Both processes started and the secondary synchronised."""
        self.start_secondary()
        self.start_primary()
        return self.connect("")

    def connect(self, peer_gen: str) -> dict[str, Any]:
        """Connect the primary to the secondary, whose data is generation `peer_gen` ("" =
        unknown); returns once both report `synced`, with what the resynchronisation did."""
        pri, sec = self.primary, self.secondary
        assert pri is not None
        assert sec is not None
        mp, ms = pri.mark(), sec.mark()
        t0 = time.time()
        pri.connect(self.bench.connect_port, peer_gen=peer_gen, my_gen=GEN)
        conn = wait_event(pri, "connected", mp, fail_on=("error", "resync-failed"))
        done = wait_event(
            pri, "synced", mp, timeout=SYNC_TIMEOUT, fail_on=("error", "resync-failed", "alone")
        )
        wait_event(sec, "synced", ms, fail_on=("error", "lost"))
        return {
            "peer_gen": peer_gen,
            "trust": conn.get("trust"),
            "why": conn.get("why"),
            "seconds": done["at"] - t0,  # command -> the primary's `synced` (its own clock)
            "resync_elapsed_s": done.get("elapsed"),
            "bytes_sent": done.get("bytes_sent"),
            "bytes_compared": done.get("bytes_total"),
            "files_compared": done.get("files_total"),
            "entries_fixed": done.get("entries_fixed"),
            "passes": done.get("pass"),
            "full_compare": done.get("full_compare"),
        }

    def marks(self) -> tuple[int, int]:
        """Where the event lists of (primary, secondary) are now (see `dropped_since`)."""
        assert self.primary is not None
        assert self.secondary is not None
        return self.primary.mark(), self.secondary.mark()

    def dropped_since(self, marks: tuple[int, int]) -> str | None:
        """The reason the primary gave for going alone since `marks`, if it did."""
        assert self.primary is not None
        for ev in self.primary.events[marks[0] :]:
            if ev.get("event") == "alone":
                return str(ev.get("reason"))
        return None

    def cpu(self) -> tuple[float, float]:
        assert self.primary is not None
        assert self.secondary is not None
        return cpu_seconds(self.primary.proc.pid), cpu_seconds(self.secondary.proc.pid)

    def stop_secondary(self) -> None:
        sec = self.secondary
        assert sec is not None
        mp = self.primary.mark() if self.primary is not None else 0
        ms = sec.mark()
        sec.stop(timeout=EVENT_TIMEOUT)
        self.secondary = None
        wait_event(sec, "stopped", ms)
        if self.primary is not None and self.primary.proc.poll() is None:
            wait_event(self.primary, "alone", mp)
        if str(self.b) in mounts_under(self.b):
            raise MeasureError(f"{self.b} is still mounted after the secondary stopped")

    def stop_primary(self) -> None:
        pri = self.primary
        assert pri is not None
        m = pri.mark()
        pri.stop(timeout=EVENT_TIMEOUT)
        self.primary = None
        wait_event(pri, "stopped", m)
        if str(self.a) in mounts_under(self.a):
            raise MeasureError(f"{self.a} is still mounted after the primary stopped")

    def stop(self) -> None:
        if self.primary is not None:
            self.stop_primary()
        if self.secondary is not None:
            self.stop_secondary()

    def crash_primary(self) -> None:
        """SIGKILL the primary's replication process (its FUSE mount is left dead), then
        `umount -l` the dead mount, as a restart after a crash would."""
        pri = self.primary
        assert pri is not None
        pri.kill()
        self.primary = None
        r = subprocess.run(
            ["umount", "-l", str(self.a)], capture_output=True, text=True, check=False
        )
        if r.returncode != 0 or str(self.a) in mounts_under(self.a):
            raise MeasureError(f"umount -l {self.a} after the crash: {r.stderr.strip()}")

    def wipe(self) -> None:
        """Both stopped: empty A, B and both state directories."""
        assert self.primary is None
        assert self.secondary is None
        for d in (self.a, self.b, self.sa, self.sb):
            empty_dir(d)

    def reconnect_after_drop(self, sample: dict[str, Any], marks: tuple[int, int]) -> None:
        """If the primary dropped its secondary since `marks`, mark the sample invalid and
        resynchronise (so that the comparison of A and B still means something)."""
        reason = self.dropped_since(marks)
        if reason is None:
            return
        sample["replica_dropped"] = reason
        say(f"    the primary dropped its secondary during the measurement: {reason}")
        assert self.secondary is not None
        # the secondary may still be busy with the dropped stream (in its fsync): it serves
        # one primary at a time, so wait until it has seen that stream end
        wait_event(self.secondary, "lost", marks[1], timeout=SYNC_TIMEOUT)
        sample["resync_after_drop"] = self.connect(GEN)
