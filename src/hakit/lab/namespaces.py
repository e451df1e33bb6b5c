"""Effects on namespaces, mounts and processes, each bounded in time; errors raise `LabError`.

Thin wrappers over `ip`, `nsenter`, `unshare`, `mount`/`umount` and `/proc`. Nothing here
decides anything: `lab.Lab` says what to create or remove, `topology` says how it is named.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hakit.lab.errors import LabError

NETNS_DIR = Path("/run/netns")
RUNTIME_DIR = Path("/run/hakit-lab")  # private mount holding the mount/UTS namespace files
COMMAND_TIMEOUT = 20.0
TOOLS = {
    "ip": "iproute2",
    "nft": "nftables",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "mount": "mount",
    "umount": "mount",
}
# Environment variables that would point a host's hakit away from its own private paths.
HOST_ENV_DROP = ("HAKIT_ETC", "HAKIT_VAR", "HAKIT_LOG")


# -- running commands ------------------------------------------------------------------------


def run(
    argv: Sequence[str],
    *,
    what: str,
    input: str | None = None,
    timeout: float = COMMAND_TIMEOUT,
    env: dict[str, str] | None = None,
) -> str:
    """Run argv, return its stdout; any failure is a `LabError` naming `what` and the command."""
    cmd = shlex.join(argv)
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
            env=env,
        )
    except FileNotFoundError as e:
        pkg = TOOLS.get(argv[0], argv[0])
        raise LabError(f"{what}: {argv[0]} not found (install the {pkg} package)") from e
    except subprocess.TimeoutExpired as e:
        raise LabError(f"{what}: `{cmd}` did not finish within {timeout:g} s") from e
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip() or "no output"
        raise LabError(f"{what}: `{cmd}` exited with {proc.returncode}: {detail}")
    return proc.stdout


def check_environment() -> None:
    """The lab needs root and the iproute2, nftables and util-linux tools."""
    if os.geteuid() != 0:
        raise LabError(
            "hakit lab needs root (it creates network and mount namespaces): run it with sudo"
        )
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise LabError(f"hakit lab needs these packages: apt-get install {' '.join(missing)}")


def host_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a command run inside a lab host: ours minus the path overrides."""
    env = {k: v for k, v in os.environ.items() if k not in HOST_ENV_DROP}
    env.update(extra or {})
    return env


# -- network namespaces --------------------------------------------------------------------


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def netns_list() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def netns_add(name: str) -> None:
    run(["ip", "netns", "add", name], what=f"creating network namespace {name}")


def netns_delete(name: str) -> None:
    """Delete a named network namespace, even one mounted several times over (a crashed
    `ip netns add` racing with a new one can stack a second bind mount on the name)."""
    path = netns_path(name)
    for _ in range(8):
        if not is_mountpoint(path):
            break
        umount(path, lazy=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def ip_batch(netns: str, lines: Sequence[str], what: str) -> None:
    if lines:
        run(["ip", "-n", netns, "-batch", "-"], input="\n".join(lines) + "\n", what=what)


# -- namespace identities and processes ----------------------------------------------------


def ns_id(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) identifying the namespace a nsfs file or /proc/PID/ns/* link refers to."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat), None if gone or
    a zombie; with the PID it identifies a process across PID reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid: int | None, started: int | None) -> bool:
    return pid is not None and started is not None and start_time(pid) == started


def pids_in(namespaces: Iterable[tuple[str, tuple[int, int]]]) -> list[int]:
    """Live processes whose net/mnt/uts namespace is one of `namespaces` ((kind, id) pairs) —
    what `ip netns pids` does, for several namespaces and kinds in one pass over /proc."""
    wanted: dict[str, set[tuple[int, int]]] = {kind: set() for kind in ("net", "mnt", "uts")}
    for kind, ident in namespaces:
        wanted[kind].add(ident)
    me = os.getpid()
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        for kind, ids in wanted.items():
            if ids and ns_id(f"/proc/{entry}/ns/{kind}") in ids:
                if start_time(int(entry)) is not None:
                    found.append(int(entry))
                break
    return sorted(found)


def kill_all(find: Callable[[], list[int]], timeout: float = 5.0) -> tuple[list[int], list[int]]:
    """SIGKILL what `find` returns until it returns nothing: (killed PIDs, survivors at the
    deadline). Processes forked meanwhile are found by the next pass."""
    deadline = time.monotonic() + timeout
    killed: list[int] = []
    while True:
        pids = find()
        if not pids:
            return killed, []
        if time.monotonic() > deadline:
            return killed, pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                if pid not in killed:
                    killed.append(pid)
        reap(pids)
        time.sleep(0.02)


def reap(pids: Iterable[int]) -> None:
    """Collect those of `pids` that are our own children (the lab API used in-process)."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


# -- mounts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    mount_id: int
    parent_id: int
    mountpoint: str
    fstype: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mountinfo(pid: int | str = "self") -> list[Mount]:
    mounts = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = left.split()
            fstype = right.split()[0]
            mounts.append(Mount(int(parts[0]), int(parts[1]), _unescape(parts[4]), fstype))
    return mounts


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def mounts_under(path: str | Path, *, include_self: bool = True) -> list[str]:
    """Mount points at or below `path` in our mount namespace, deepest (last mounted) first."""
    p = str(path)
    found = [m.mountpoint for m in mountinfo() if _under(m.mountpoint, p)]
    if not include_self:
        found = [m for m in found if m != p]
    return list(reversed(found))


def is_mountpoint(path: str | Path) -> bool:
    return str(path) in {m.mountpoint for m in mountinfo()}


def umount(path: str | Path, *, lazy: bool = False) -> None:
    argv = ["umount", *(["--lazy"] if lazy else []), str(path)]
    run(argv, what=f"unmounting {path}")


def umount_all_under(path: str | Path) -> None:
    """Unmount everything at or below `path`; lazily if a mount is busy."""
    for mp in mounts_under(path):
        if is_mountpoint(mp):
            try:
                umount(mp)
            except LabError:
                umount(mp, lazy=True)


# -- the runtime directory and persistent mount/UTS namespaces -------------------------------


def ensure_runtime_mount() -> None:
    """Make RUNTIME_DIR a private bind mount of itself, as `ip netns` does for /run/netns:
    binding a mount-namespace file requires a mount that does not propagate into that very
    namespace."""
    RUNTIME_DIR.mkdir(parents=True, exist_ok=True)
    if not is_mountpoint(RUNTIME_DIR):
        run(
            ["mount", "--bind", str(RUNTIME_DIR), str(RUNTIME_DIR)], what=f"preparing {RUNTIME_DIR}"
        )
    run(["mount", "--make-private", str(RUNTIME_DIR)], what=f"preparing {RUNTIME_DIR}")


def release_runtime_mount() -> bool:
    """Unmount RUNTIME_DIR if no namespace file is bound below it any more (no lab left).
    Lazily: our own lock files there are open (they stay the same inodes, since the mount
    is a bind of the directory on itself)."""
    if not is_mountpoint(RUNTIME_DIR) or mounts_under(RUNTIME_DIR, include_self=False):
        return False
    umount(RUNTIME_DIR, lazy=True)
    return True


def create_host_namespaces(
    netns: str, mnt_file: Path, uts_file: Path, setup: dict[str, object]
) -> None:
    """Create a persistent mount + UTS namespace (bound on `mnt_file`, `uts_file`) from inside
    network namespace `netns`, and prepare it with `hakit.lab.nodesetup` (hostname, /sys of
    this netns, private bind mounts)."""
    for f in (mnt_file, uts_file):
        f.touch()
    run(
        [
            "nsenter",
            f"--net={netns_path(netns)}",
            "--",
            "unshare",
            f"--mount={mnt_file}",
            f"--uts={uts_file}",
            "--propagation",
            "private",
            "--",
            sys.executable,
            "-I",
            "-m",
            "hakit.lab.nodesetup",
            json.dumps(setup),
        ],
        what=f"preparing the mount and UTS namespaces of {netns}",
    )


# An installed hakit (a virtualenv, e.g. the Debian package's /opt/venvs/hakit) that the lab
# runs in its nodes, daemons and commands, instead of this Python's hakit.
INSTALLED_ENV = "HAKIT_INSTALLED"


def host_command(argv: Sequence[str]) -> list[str]:
    """`hakit ...` runs as this Python's `-m hakit`, so no installed `hakit` is needed; with
    HAKIT_INSTALLED=VENV as that installation's own `VENV/bin/hakit`."""
    if argv and argv[0] == "hakit":
        return [*hakit_argv(), *argv[1:]]
    return list(argv)


def hakit_argv(env: Mapping[str, str] | None = None) -> list[str]:
    """The command line of `hakit` in the lab's nodes (see INSTALLED_ENV)."""
    venv = (os.environ if env is None else env).get(INSTALLED_ENV)
    if not venv:
        return [sys.executable, "-m", "hakit"]
    exe = Path(venv) / "bin" / "hakit"
    if not os.access(exe, os.X_OK):
        raise LabError(
            f"{INSTALLED_ENV}={venv}: no hakit installation there ({exe} is missing or not "
            f"executable); the Debian package's is /opt/venvs/hakit (docs/install.md)"
        )
    return [str(exe)]


def enter_argv(netns: str, mnt_file: Path, uts_file: Path, wd: str = "/") -> list[str]:
    """The nsenter prefix that runs a command inside a lab host."""
    return [
        "nsenter",
        f"--net={netns_path(netns)}",
        f"--mount={mnt_file}",
        f"--uts={uts_file}",
        f"--wd={wd}",
        "--",
    ]


# -- locks --------------------------------------------------------------------------------------


@contextlib.contextmanager
def locked(path: Path, what: str, timeout: float = 60.0) -> Iterator[None]:
    """An exclusive flock on `path`, waited for at most `timeout` seconds. The holder may
    unlink `path` (`down` does, so lock files do not pile up): a waiter that then gets the
    lock on the unlinked file notices and locks the new file instead."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if time.monotonic() > deadline:
                raise LabError(
                    f"{what}: another `hakit lab` command has held {path} for "
                    f"{timeout:g} s; wait for it to finish and retry"
                ) from None
            time.sleep(0.05)
            continue
        if ns_id(path) == ns_id(f"/proc/self/fd/{fd}"):
            break
        os.close(fd)  # locked a file that was unlinked meanwhile: retry on the new one
    try:
        yield
    finally:
        os.close(fd)
