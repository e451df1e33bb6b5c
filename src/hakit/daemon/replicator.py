"""The replication process of one mirror module on one node (`python -m hakit.daemon.replicator`).

Its own OS process, at normal priority, started by the module's runner: on the primary it
serves the FUSE mounts and sends every modification to the secondary; on the secondary it
receives and applies them to the real directories, which it makes read-only for everyone else
(a read-only bind mount over each directory; it writes through handles opened before).

Protocol with the parent, JSON lines:
- parent -> child on stdin: first the init object (role, directories, filters, mode, this
  node's TLS identity — never the cluster secret —, the peer's name and addresses...), then
  commands: `connect` (primary: reach the secondary and resynchronise it),
  `disconnect`, `verify` (primary), `stop`. End of file means the daemon died: a primary then
  *fences* itself — every further modification fails with EIO, so an application left running
  can never write what nobody replicates (the peer is taking over) — and waits to be killed
  by the next daemon's reconciliation; a secondary stops.
- child -> parent on stdout: `{"event": ...}` lines (mounted, listening, connected, alone,
  diverged, progress, synced, resync-failed, lost, refused, verify, stopped, error), and
  `stats` (the counters of the metrics, every STATS_EVERY seconds when they changed).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hakit.core.filters import PathFilter
from hakit.replication.apply import Applier, parent_of
from hakit.replication.channel import ChannelError, Mode, Receiver, Sender
from hakit.replication.listener import Listener
from hakit.replication.preserve import Keeper
from hakit.replication.primary import Replicated, Replicator, State
from hakit.replication.resync import Resync, ResyncError
from hakit.replication.scan import SUM_BLOCK, block_sums, walk
from hakit.replication.stream import TlsStream, import_identity
from hakit.replication.tracker import ActivityLog, Tracker
from hakit.replication.verify import verify
from hakit.tls import NodeIdentity, client_context, server_context
from hakit.wire.replication import (
    Kind,
    Op,
    ack,
    encode_entries,
    pack_pairs,
    unpack_pairs,
    unpack_ranges,
)

MOUNT_WAIT = 10.0
STOP_WAIT = 30.0  # secondary: for the session to finish what it is applying
EPOCH = 2.0  # seconds between activity-log epochs
STATS_EVERY = 2.0  # seconds between two `stats` events (docs/metrics.md)
_out_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, "at": time.time(), **fields}) + "\n"
    with _out_lock, contextlib.suppress(OSError, ValueError):  # the daemon may be gone
        sys.stdout.write(line)
        sys.stdout.flush()


@dataclass(frozen=True)
class Init:
    role: str  # primary | secondary
    module: str
    tls: NodeIdentity  # this node's certificate and key, and the cluster's CA
    peer: str  # the module's other node: the only one the channel accepts
    peer_addresses: list[str]  # secondary: its addresses, the only sources accepted
    dirs: list[dict[str, Any]]  # path, exclude, exclude_regex, only, only_regex, require
    mode: Mode
    state_dir: Path
    ack_timeout: float
    bandwidth: int
    listen: tuple[str, int] | None
    base: str  # primary: generation to track from if no journal exists
    preserve: str  # secondary: folder to keep the diverged entries in ("" = none)
    preserve_why: str
    hold: bool = False  # primary: hold writes after a break until the daemon's word

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Init:
        listen = raw.get("listen")
        return cls(
            role=raw["role"],
            module=raw["module"],
            tls=import_identity(raw["tls"]),
            peer=str(raw["peer"]),
            peer_addresses=[str(a) for a in raw.get("peer_addresses", ())],
            dirs=raw["dirs"],
            mode=Mode(raw["mode"]),
            state_dir=Path(raw["state_dir"]),
            ack_timeout=float(raw["ack_timeout"]),
            bandwidth=int(raw.get("bandwidth", 0)),
            listen=(listen[0], int(listen[1])) if listen else None,
            base=str(raw.get("base", "")),
            preserve=str(raw.get("preserve") or ""),
            preserve_why=str(raw.get("preserve_why") or ""),
            hold=bool(raw.get("hold", False)),
        )


def _filter(d: dict[str, Any]) -> PathFilter:
    enc = os.fsencode
    return PathFilter(
        exclude=tuple(enc(p) for p in d.get("exclude", ())),
        exclude_regex=tuple(d.get("exclude_regex", ())),
        only=tuple(enc(p) for p in d.get("only", ())),
        only_regex=tuple(d.get("only_regex", ())),
    )


# --- checks before taking a directory ----------------------------------------------------------


def check_required(dirs: list[dict[str, Any]]) -> None:
    for d in dirs:
        if not os.path.isdir(d["path"]):
            raise RuntimeError(f"replicated directory {d['path']} does not exist")
        for rel in d.get("require", ()):
            if not os.path.lexists(os.path.join(d["path"], rel)):
                raise RuntimeError(
                    f"required file {rel} is missing in {d['path']}: not replicating (is the "
                    "directory's file system mounted? is it the right directory?)"
                )


def holders(path: str) -> list[str]:
    """Processes with a working directory, open file or mapping inside `path` (they would
    bypass a mount made over it)."""
    me = os.getpid()
    prefix = os.path.realpath(path)
    found: list[str] = []
    own_ns = os.readlink("/proc/self/ns/mnt")
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        base = f"/proc/{pid}"
        try:
            if os.readlink(f"{base}/ns/mnt") != own_ns:
                continue  # another mount namespace: the same path is another directory
        except OSError:
            continue
        links: list[str] = []
        with contextlib.suppress(OSError):
            links.append(os.readlink(f"{base}/cwd"))
        with contextlib.suppress(OSError):
            links += [os.readlink(f"{base}/fd/{fd}") for fd in os.listdir(f"{base}/fd")]
        with contextlib.suppress(OSError), open(f"{base}/maps") as f:
            links += [ln.split(maxsplit=5)[-1].strip() for ln in f if "/" in ln]
        if any(x == prefix or x.startswith(prefix + "/") for x in links):
            with contextlib.suppress(OSError), open(f"{base}/comm") as f:
                found.append(f"{pid} ({f.read().strip()})")
                continue
            found.append(pid)
    return found


def mounted(path: str, fstype_prefix: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            if parts[4] == path and parts[sep + 1].startswith(fstype_prefix):
                return True
    return False


def unmount(path: str, fstype_prefix: str) -> str:
    """Unmount our mount over `path`; lazily if busy. Returns what was done ("" = nothing)."""
    if not mounted(path, fstype_prefix):
        return ""
    r = subprocess.run(["umount", path], capture_output=True, text=True, check=False)
    if r.returncode == 0:
        return "unmounted"
    subprocess.run(["umount", "-l", path], capture_output=True, text=True, check=False)
    return f"lazily unmounted (busy: {r.stderr.strip()})"


# --- state kept between runs -------------------------------------------------------------------


def _state_path(init: Init) -> Path:
    return init.state_dir / "replication.json"


def load_state(init: Init) -> dict[str, Any]:
    try:
        return dict(json.loads(_state_path(init).read_text()))
    except (OSError, ValueError):
        return {}


def save_state(init: Init, **fields: Any) -> None:
    from hakit.adapters.statefile import write_json

    write_json(_state_path(init), load_state(init) | fields)


# --- primary -----------------------------------------------------------------------------------


class Primary:
    def __init__(self, init: Init) -> None:
        self.init = init
        check_required(init.dirs)
        for d in init.dirs:
            busy = holders(d["path"])
            if busy:
                raise RuntimeError(
                    f"processes use {d['path']} from before replication starts (their writes "
                    f"would not be replicated): {', '.join(busy[:5])}; stop them first"
                )
        init.state_dir.mkdir(parents=True, exist_ok=True)
        save_state(init, role="primary", clean=False)
        self.tracker = Tracker(init.state_dir / "tracking.journal")
        self.tracker.start(init.base)
        self.activity = ActivityLog(init.state_dir / "activity.journal")
        self.activity.start("")
        self.dirs = [
            Replicated(i, d["path"], os.open(d["path"], os.O_RDONLY | os.O_DIRECTORY), _filter(d))
            for i, d in enumerate(init.dirs)
        ]
        self.rep = Replicator(self.dirs, self.tracker, lambda ev: emit(**ev))  # type: ignore[arg-type]
        self.rep.activity = self.activity
        self.rep.on_diverged = self._repair_soon
        self.rep.hold_on_loss = init.hold
        self.threads: list[threading.Thread] = []
        self._connecting = threading.Lock()
        self._target: dict[str, Any] | None = None
        self._repair = threading.Event()
        self.tls = client_context(init.tls)
        self._counted: Sender | None = None  # the sender whose counters `stats` adds
        self._before = (0, 0)  # operations and bytes of the senders before it

    def mount(self) -> None:
        from hakit.replication.fs import serve

        # New entries get the mode the application asked for, its umask applied (by the
        # kernel, and again in `fs`): ours must not mask it further. Our own files have
        # explicit modes, and our directories exist by now.
        os.umask(0)
        for d in self.dirs:
            t = serve(d, self.rep, self.init.module)
            self.threads.append(t)
            deadline = time.monotonic() + MOUNT_WAIT
            while not mounted(d.path, "fuse.hakit"):
                errors = getattr(t, "errors", [])
                if errors or not t.is_alive() or time.monotonic() > deadline:
                    self.unmount_all()
                    raise RuntimeError(
                        f"could not mount the replication layer over {d.path}: {errors[0]!r}"
                        if errors
                        else "timed out"
                    )
                time.sleep(0.02)
        emit("mounted", dirs=[d.path for d in self.dirs])

    def unmount_all(self) -> list[str]:
        done = []
        for d in self.dirs:
            what = unmount(d.path, "fuse.hakit")
            if what:
                done.append(f"{d.path}: {what}")
        for t in self.threads:
            t.join(timeout=5)
        return done

    def connect(self, cmd: dict[str, Any]) -> None:
        """Reach the secondary and resynchronise it (in a thread; one at a time)."""
        self._target = cmd
        threading.Thread(target=self._connect, args=(cmd,), daemon=True).start()

    def _connect(self, cmd: dict[str, Any]) -> None:
        if not self._connecting.acquire(blocking=False):
            return
        try:
            if self.rep.state is not State.ALONE:
                return
            try:
                sender = Sender.connect(
                    cmd["host"],
                    int(cmd["port"]),
                    self.init.module,
                    self.tls,
                    self.init.tls.server_name(self.init.peer),
                    self.init.ack_timeout,
                )
            except ChannelError as e:
                emit("resync-failed", reason=str(e))
                return
            sender.semi = self.init.mode is Mode.SEMI
            extra = self._activity_of(sender) if sender.unclean_peer else {}
            based = (
                self.tracker.active
                and bool(self.tracker.base)
                and self.tracker.base == cmd.get("peer_gen")
            )
            trust = based and extra is not None
            why = (
                "no tracking for the secondary's generation"
                if not based
                else "secondary stopped uncleanly as a primary, without a usable activity log"
                if extra is None
                else f"tracked changes since the secondary's generation, and the {len(extra)} "
                "files it was writing when it stopped uncleanly as a primary"
                if extra
                else "tracked changes since the secondary's generation"
            )
            emit("connected", peer=f"{cmd['host']}:{cmd['port']}", trust=trust, why=why)
            self.rep.attach(sender)
            resync = Resync(
                self.rep,
                trust,
                self.init.bandwidth,
                lambda p: emit("progress", **p),
                extra=extra or {},
            )
            try:
                progress = resync.run()
            except (ResyncError, ChannelError, OSError) as e:
                self.rep.detach(f"resynchronisation failed: {e}")
                emit("resync-failed", reason=str(e))
                return
            self.tracker.reset(str(cmd.get("my_gen", "")))
            emit("synced", **progress.as_dict())
        finally:
            self._connecting.release()

    @staticmethod
    def _activity_of(sender: Sender) -> dict[bytes, list[tuple[int, int]] | None] | None:
        """The regions an unclean secondary may hold unreplicated (None: not available)."""
        try:
            reply = sender.query(Op(Kind.ACTIVITY, 0), timeout=60)
        except ChannelError:
            return None
        if reply.kind is not Kind.ACTIVITY_LIST or reply.ints[0]:
            return None
        return {path: unpack_ranges(r) or None for path, r in unpack_pairs(reply.blobs[0])}

    def epochs(self, stop: threading.Event) -> None:
        """Forget, every EPOCH seconds, the in-flight regions acknowledged since."""
        while not stop.wait(EPOCH):
            self.rep.new_epoch(limit=60.0)

    def _repair_soon(self) -> None:
        self._repair.set()

    def repair_loop(self, stop: threading.Event) -> None:
        """The secondary failed to apply something while ready: resend what is marked."""
        while not stop.is_set():
            if not self._repair.wait(0.5):
                continue
            self._repair.clear()
            if self.rep.state is not State.READY or self.rep.sender is None:
                continue
            with self.rep.order:
                self.rep.state = State.RESYNCING
            try:
                Resync(self.rep, True, self.init.bandwidth).run()
                emit("repaired")
            except (ResyncError, ChannelError, OSError) as e:
                self.rep.detach(f"repair failed: {e}")

    def verify(self) -> None:
        def run() -> None:
            sender = self.rep.sender
            if sender is None or self.rep.state is not State.READY:
                emit("verify", ok=False, error="no ready secondary to compare with")
                return
            try:
                emit("verify", **verify(self.rep))
            except (ChannelError, OSError) as e:
                emit("verify", ok=False, error=str(e))

        threading.Thread(target=run, daemon=True).start()

    def stats(self) -> dict[str, Any]:
        """What the metrics show (only read here: counters and a histogram, no I/O)."""
        sender = self.rep.sender
        old = self._counted
        if sender is not None and sender is not old:
            if old is not None:
                self._before = (self._before[0] + old.sent_ops, self._before[1] + old.sent_bytes)
            self._counted = old = sender
        waiting, lag = sender.backlog() if sender is not None else (0, 0.0)
        return {
            "state": self.rep.state.value,
            "ops": self._before[0] + (old.sent_ops if old else 0),
            "bytes": self._before[1] + (old.sent_bytes if old else 0),
            "waiting": waiting,
            "lag": round(lag, 3),
            "fsync": self.rep.fsync_latency.snapshot(),
        }

    def stop(self) -> None:
        self.rep.answer_held(False)  # never acknowledged: the application gets EIO
        done = self.unmount_all()  # returns once the application's operations are finished
        clean = self.rep.state is not State.ALONE or self.rep.sender is None
        self.rep.detach("the primary stops", planned=True)
        self.tracker.close()
        if clean:
            self.activity.drop()  # nothing in flight any more
        self.activity.close()
        save_state(self.init, role="primary", clean=clean)
        emit("stopped", unmounted=done)


# --- secondary ---------------------------------------------------------------------------------


class Secondary:
    def __init__(self, init: Init) -> None:
        self.init = init
        assert init.listen is not None
        for d in init.dirs:  # empty is normal here (first synchronisation); missing is not
            if not os.path.isdir(d["path"]):
                raise RuntimeError(f"replicated directory {d['path']} does not exist")
        init.state_dir.mkdir(parents=True, exist_ok=True)
        state = load_state(init)
        self.unclean = state.get("role") == "primary" and not state.get("clean", True)
        for d in init.dirs:
            # left by a secondary that was killed: our handle must be on the directory itself,
            # not on the read-only bind over it (every write would fail with EROFS)
            _unbind(d["path"])
        self.roots = [os.open(d["path"], os.O_RDONLY | os.O_DIRECTORY) for d in init.dirs]
        self.filters = [_filter(d) for d in init.dirs]
        self.applier = Applier(self.roots)
        self.keeper: Keeper | None = None
        if init.preserve:
            paths = [d["path"] for d in init.dirs]
            self.keeper = Keeper(self.roots, paths, Path(init.preserve), init.preserve_why)
            self.applier.keeper = self.keeper
        self.stop_event = threading.Event()
        self.conn: TlsStream | None = None  # the latest authenticated primary
        self._conn_lock = threading.Lock()
        # One session at a time applies (and owns the applier's cached descriptors): a new
        # primary's session waits for the previous one to end.
        self._session = threading.Lock()
        self.receiver: Receiver | None = None  # the current session's (metrics)
        self._before = (0, 0)  # operations applied and bytes received by the sessions before
        self.listener = Listener(
            init.listen,
            server_context(init.tls),
            init.tls.cluster,
            init.peer,
            init.peer_addresses,
            self.session,
            _report_refused,
        )
        for d in init.dirs:
            self._protect(d["path"])
        os.umask(0)  # entries are created with the primary's modes (state files: explicit)
        emit("listening", address=f"{init.listen[0]}:{init.listen[1]}", unclean=self.unclean)

    def _protect(self, path: str) -> None:
        """Read-only for everyone but us: a read-only bind mount over the directory."""
        if mounted(path, "") and _is_our_bind(path):
            return
        for args in (["mount", "--bind", path, path], ["mount", "-o", "remount,bind,ro", path]):
            r = subprocess.run(args, capture_output=True, text=True, check=False)
            if r.returncode:
                raise RuntimeError(f"cannot make {path} read-only: {r.stderr.strip()}")

    def answer(self, op: Op) -> Op:
        if op.kind is Kind.LIST:
            try:
                entries = list(walk(self.roots, lambda i, r: self.filters[i].replicated(r)))
            except OSError as e:
                return Op(Kind.LISTING, op.seq, (e.errno or 5,), (b"",))
            return Op(Kind.LISTING, op.seq, (0,), (encode_entries(entries),))
        if op.kind is Kind.ACTIVITY:
            if not self.unclean:
                return Op(Kind.ACTIVITY_LIST, op.seq, (0,), (b"",))
            try:
                log = ActivityLog(self.init.state_dir / "activity.journal")
            except (OSError, RuntimeError):
                return Op(Kind.ACTIVITY_LIST, op.seq, (5,), (b"",))
            if not log.active:  # unclean, but from before activity logs were kept
                return Op(Kind.ACTIVITY_LIST, op.seq, (2,), (b"",))
            return Op(Kind.ACTIVITY_LIST, op.seq, (0,), (pack_pairs(log.exported()),))
        if op.kind is Kind.SUMS:
            try:
                with parent_of(self.roots, op.path) as (d, name):
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
                try:
                    sums = block_sums(fd, unpack_ranges(op.blobs[1]), op.ints[0] or SUM_BLOCK)
                finally:
                    os.close(fd)
            except OSError as e:
                return Op(Kind.CHECKSUMS, op.seq, (e.errno or 5,), (b"",))
            return Op(Kind.CHECKSUMS, op.seq, (0,), (sums,))
        return ack(op.seq, 22)

    def serve(self) -> None:
        self.listener.serve(self.stop_event)

    def session(self, conn: TlsStream, peer: str, module: str) -> None:
        """An authenticated primary (in the listener's thread for it, which closes it): it
        replaces the current one, if any, then applies its stream until it ends."""
        # small answers (acknowledgements, checksums) must not wait for a delayed ACK
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._conn_lock:
            old, self.conn = self.conn, conn
        if old is not None:
            with contextlib.suppress(OSError):
                old.shutdown(socket.SHUT_RDWR)
        try:
            with self._session:
                with self._conn_lock:
                    current = self.conn is conn and not self.stop_event.is_set()
                if current:
                    self._serve(conn, peer, module)
        finally:
            with self._conn_lock:
                if self.conn is conn:
                    self.conn = None

    def _serve(self, conn: TlsStream, peer: str, module: str) -> None:
        receiver = Receiver(
            self.init.module,
            self.applier,
            self.init.mode,
            answer=self.answer,
            on_done=self._synced,
            on_progress=_relay_progress,
            unclean=self.unclean,
        )
        old, self.receiver = self.receiver, receiver
        if old is not None:
            self._before = (self._before[0] + old.applied, self._before[1] + old.received_bytes)
        try:
            if not receiver.welcome(conn, module):
                emit("refused", peer=peer, reason=f"asks for module {module!r}", count=1)
                return
        except OSError:
            return
        emit("connected", peer=peer)
        why = "the primary closed the connection"
        try:
            receiver.serve(conn, self.stop_event)
        except Exception as e:  # FrameError, OSError: the stream is unusable
            why = f"replication stream broken: {e!r}"
        finally:
            self.applier.forget()  # here only: this session owns the cached descriptors
        if self.keeper is not None:
            self.keeper.save()  # what was kept so far, if the resynchronisation stopped
        if receiver.fatal:
            emit("lost", reason=f"cannot apply: {receiver.fatal}", fatal=True)
            self.stop_event.set()  # the replica gives up: no other session
            self.listener.close()
            return
        if not self.stop_event.is_set():
            emit("lost", reason=why, fatal=False)

    def stats(self) -> dict[str, Any]:
        r = self.receiver
        return {
            "state": "connected" if self.conn is not None else "listening",
            "ops": self._before[0] + (r.applied if r else 0),
            "bytes": self._before[1] + (r.received_bytes if r else 0),
        }

    def _synced(self) -> None:
        keeper, self.keeper = self.keeper, None
        if keeper is not None:
            self.applier.keeper = None
            keeper.save()
            emit(
                "preserved",
                folder=str(keeper.dest),
                kept=len(keeper.kept),
                errors=keeper.errors[:5],
            )
        for fd in self.roots:
            os.fsync(fd)
        self.unclean = False
        save_state(self.init, role="secondary", clean=True)
        Tracker(self.init.state_dir / "tracking.journal").drop()
        ActivityLog(self.init.state_dir / "activity.journal").drop()
        emit("synced")

    def stop(self) -> None:
        self.stop_event.set()
        self.listener.close()
        with self._conn_lock:
            conn = self.conn
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        # the session ends (and closes its descriptors) before the directories are released
        if self._session.acquire(timeout=STOP_WAIT):
            self._session.release()
        done = [f"{d['path']}: {w}" for d in self.init.dirs if (w := _unbind(d["path"]))]
        emit("stopped", unmounted=done)


def release(path: str) -> list[str]:
    """Remove what a dead replication process left over `path` (for reconciliation)."""
    out = []
    for fstype in ("fuse.hakit",):
        what = unmount(path, fstype)
        if what:
            out.append(f"{path}: replication mount {what}")
    what = _unbind(path)
    if what:
        out.append(f"{path}: read-only bind {what}")
    return out


def report_stats(stats: Callable[[], dict[str, Any]], stop: threading.Event) -> None:
    """Every STATS_EVERY seconds, the counters of the metrics, when they changed."""
    last: dict[str, Any] | None = None
    while not stop.wait(STATS_EVERY):
        now = stats()
        if now != last:
            emit("stats", **now)
            last = now


def _report_refused(peer: str, reason: str, count: int) -> None:
    emit("refused", peer=peer, reason=reason, count=count)


def _relay_progress(blob: bytes) -> None:
    try:
        fields = json.loads(blob)
    except ValueError:
        return
    if fields:  # an empty one is a barrier (verification)
        emit("progress", **fields)


def _is_our_bind(path: str) -> bool:
    """A read-only mount over `path` of the file system `path` is on (our bind; not a
    read-only file system of its own, which is never unmounted here)."""
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    device = {m[0]: m[2] for m in mounts}  # mount id -> major:minor
    return any(
        m[4] == path and "ro" in m[5].split(",") and device.get(m[1]) == m[2] for m in mounts
    )


def _unbind(path: str) -> str:
    if not _is_our_bind(path):
        return ""
    r = subprocess.run(["umount", path], capture_output=True, text=True, check=False)
    if r.returncode:
        subprocess.run(["umount", "-l", path], capture_output=True, text=True, check=False)
        return "lazily unmounted"
    return "unmounted"


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    first = sys.stdin.readline()
    if not first:
        return 1
    init = Init.parse(json.loads(first))
    try:
        node: Primary | Secondary = Primary(init) if init.role == "primary" else Secondary(init)
        if isinstance(node, Primary):
            node.mount()
    except (RuntimeError, OSError) as e:
        emit("error", message=str(e))
        return 2
    stop = threading.Event()
    if isinstance(node, Primary):
        threading.Thread(target=node.repair_loop, args=(stop,), daemon=True).start()
        threading.Thread(target=node.epochs, args=(stop,), daemon=True).start()
    else:
        threading.Thread(target=node.serve, daemon=True).start()
    threading.Thread(target=report_stats, args=(node.stats, stop), daemon=True).start()
    for line in sys.stdin:
        try:
            cmd = json.loads(line)
        except ValueError:
            continue
        what = cmd.get("cmd")
        if what == "stop":
            stop.set()
            node.stop()
            return 0
        if isinstance(node, Primary):
            if what == "connect":
                node.connect(cmd)
            elif what == "disconnect":
                node.rep.detach(str(cmd.get("reason", "asked by the daemon")))
            elif what in ("release", "refuse"):
                node.rep.answer_held(what == "release")
            elif what == "verify":
                node.verify()
    # end of file: the daemon died
    stop.set()
    if isinstance(node, Primary):
        node.rep.fence("the hakit daemon is gone: modifications refused until it is back")
        emit("fenced")
        while True:  # killed by the next daemon's reconciliation
            time.sleep(3600)
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
