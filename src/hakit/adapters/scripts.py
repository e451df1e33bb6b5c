"""Module scripts (start_prim, stop_prim, ...): run one, bounded in time, logged to its own file.

A script runs in its own session and process group, with stdin from /dev/null, in its own
folder, with a minimal environment (PATH, LANG) plus what the caller gives (the HAKIT_*
variables). Its stdout and stderr go straight to a log file of its own,
`LOG_DIR/YYYYmmdd-HHMMSS.ffffff-NAME.log` (UTC), between a header (command line, HAKIT_*
variables) and a footer (how it ended); at most `keep_logs` such files are kept per folder.
No pipe: a script that leaves a daemon behind (it started the application) cannot hold us.

When the script does not finish within its timeout, its whole process group gets SIGTERM,
then, after a grace of min(5 s, timeout/2), SIGKILL if any of it is still alive. Processes that
the script started and that remain when it exits normally are left alone: they are usually the
application. Nothing here blocks the event loop: file work runs on a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import os
import re
import shlex
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
KEEP_LOGS = 200
MAX_GRACE = 5.0  # s between SIGTERM and SIGKILL on timeout
POLL = 0.02  # s, while waiting for a terminated process group to go away
LOG_RE = re.compile(r"\d{8}-\d{6}\.\d{6}-.+\.log")
LOG_MODE = 0o600


@dataclass(frozen=True)
class ScriptResult:
    """How one run of a script ended, with one line that says it (`reason`)."""

    name: str
    argv: tuple[str, ...]
    returncode: int | None
    timed_out: bool
    missing: bool
    duration: float
    log_path: Path | None
    reason: str

    @property
    def ok(self) -> bool:
        """Exited 0 in time, or is an optional script that does not exist."""
        return self.missing or (self.returncode == 0 and not self.timed_out)

    # -- the ways a run ends, shared with the fake so both say the same -----------------------

    @classmethod
    def absent(cls, name: str, argv: Sequence[str]) -> ScriptResult:
        return cls(name, tuple(argv), None, False, True, 0.0, None, f"no {name} script ({argv[0]})")

    @classmethod
    def unrunnable(
        cls, name: str, argv: Sequence[str], why: str, log_path: Path | None = None
    ) -> ScriptResult:
        return cls(
            name, tuple(argv), None, False, False, 0.0, log_path, f"cannot run {name}: {why}"
        )

    @classmethod
    def not_executable(cls, name: str, argv: Sequence[str]) -> ScriptResult:
        script = argv[0]
        return cls.unrunnable(
            name, argv, f"{script} is not executable: chmod +x {shlex.quote(script)}"
        )

    @classmethod
    def exited(
        cls,
        name: str,
        argv: Sequence[str],
        returncode: int,
        duration: float,
        log_path: Path | None,
        said: str = "",
    ) -> ScriptResult:
        """`said`: the last line the script printed, told with a failure (its reason)."""
        text = f"{name} {ending(returncode)} after {duration:.2f} s"
        if returncode != 0 and said:
            text += f": {said}"
        return cls(
            name,
            tuple(argv),
            returncode,
            False,
            False,
            duration,
            log_path,
            _with_log(text, log_path),
        )

    @classmethod
    def timeout(
        cls,
        name: str,
        argv: Sequence[str],
        returncode: int | None,
        duration: float,
        limit: float,
        killed: bool,
        log_path: Path | None,
    ) -> ScriptResult:
        how = "terminated (SIGTERM)"
        if killed:
            how += f", then killed (SIGKILL) after {grace(limit):g} s"
        return cls(
            name,
            tuple(argv),
            returncode,
            True,
            False,
            duration,
            log_path,
            _with_log(
                f"{name} did not finish within {limit:g} s: its processes were {how}", log_path
            ),
        )


class ScriptRunner(Protocol):
    async def run(
        self,
        name: str,
        script: Path,
        args: Sequence[str],
        env: Mapping[str, str],
        timeout: float,  # noqa: ASYNC109 - the script's limit, enforced on its processes
        log_dir: Path,
    ) -> ScriptResult:
        """Run `script args...` as `name`; never raises for what the script does."""
        ...


def grace(timeout: float) -> float:
    return min(MAX_GRACE, timeout / 2)


def ending(returncode: int) -> str:
    if returncode >= 0:
        return f"exited {returncode}"
    try:
        sig = signal.Signals(-returncode).name
    except ValueError:
        sig = f"signal {-returncode}"
    return f"was killed by {sig}"


def _with_log(text: str, log_path: Path | None) -> str:
    return f"{text} (log: {log_path})" if log_path is not None else text


def log_name(name: str, now: dt.datetime) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "script"
    return f"{now:%Y%m%d-%H%M%S.%f}-{safe}.log"


# -- file work (worker thread) ----------------------------------------------------------------


def _check(
    name: str, script: Path, args: Sequence[str]
) -> tuple[Path, tuple[str, ...], ScriptResult | None]:
    """The absolute path, the argv and, if it cannot be run, an early result for `script`."""
    script = script.absolute()
    argv = (str(script), *args)
    return script, argv, _early(name, script, argv)


def _early(name: str, script: Path, argv: Sequence[str]) -> ScriptResult | None:
    """A result if `script` cannot be run: missing (ok) or not runnable (a failure)."""
    if not script.exists():
        if os.path.lexists(script):
            target = os.readlink(script)
            return ScriptResult.unrunnable(
                name, argv, f"{script} is a symbolic link to {target}, which does not exist"
            )
        return ScriptResult.absent(name, argv)
    if script.is_dir():
        return ScriptResult.unrunnable(name, argv, f"{script} is a directory, not a script")
    if not os.access(script, os.X_OK):
        return ScriptResult.not_executable(name, argv)
    return None


def _open_log(
    log_dir: Path, name: str, argv: Sequence[str], env: Mapping[str, str], timeout: float, keep: int
) -> tuple[Path, int]:
    """Create the run's log file with its header; trim the folder to `keep` logs."""
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = dt.datetime.now(dt.UTC)
    base = log_name(name, now)
    path = log_dir / base
    for n in range(2, 100):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, LOG_MODE)
            break
        except FileExistsError:
            path = log_dir / f"{base.removesuffix('.log')}-{n}.log"
    else:
        raise FileExistsError(errno.EEXIST, "too many logs with the same name", str(path))
    lines = [
        f"# hakit script {name}, started {now.isoformat(timespec='milliseconds')}",
        f"# command: {shlex.join(argv)}",
        f"# folder: {Path(argv[0]).parent}, timeout: {timeout:g} s",
        *(f"# {k}={v}" for k, v in sorted(env.items()) if k.startswith("HAKIT_")),
        "",
    ]
    try:
        os.write(fd, "\n".join(lines).encode())
        _trim(log_dir, keep)
    except OSError:
        os.close(fd)
        raise
    return path, fd


def _trim(log_dir: Path, keep: int) -> None:
    with os.scandir(log_dir) as entries:
        logs = sorted(e.name for e in entries if LOG_RE.fullmatch(e.name) and e.is_file())
    for old in logs[: max(0, len(logs) - keep)]:
        with contextlib.suppress(FileNotFoundError):
            (log_dir / old).unlink()


MAX_SAID = 200  # characters of a failed script's last line in its reason


def last_line(path: Path) -> str:
    """The last line a script printed (not the log's own `# ` lines), cut to MAX_SAID."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [x.strip() for x in tail.splitlines() if x.strip() and not x.startswith("# ")]
    said = lines[-1] if lines else ""
    return said if len(said) <= MAX_SAID else said[: MAX_SAID - 1] + "…"


def _append(path: Path, text: str) -> None:
    with contextlib.suppress(OSError), path.open("a", encoding="utf-8") as f:
        f.write(f"\n# {text}\n")


def _spawn_failure(script: Path, e: OSError) -> str:
    if e.errno == errno.ENOEXEC:
        return f"{script} is neither a program nor a script starting with #! (add e.g. #!/bin/sh)"
    if isinstance(e, FileNotFoundError):
        try:
            first = script.read_bytes()[:200].split(b"\n", 1)[0].decode(errors="replace")
        except OSError:
            first = "?"
        return f"the interpreter of {script} was not found (first line: {first!r})"
    if isinstance(e, PermissionError):
        return f"{script}: permission denied (is its filesystem mounted noexec?)"
    return f"{script}: {e.strerror or e}"


def _live_members(pgid: int) -> bool:
    """Does process group `pgid` still have a process that is not a zombie?"""
    with os.scandir("/proc") as entries:
        pids = [e.name for e in entries if e.name.isdigit()]
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


class ProcessScriptRunner:
    """The real `ScriptRunner`: one process group per run, a log file per run."""

    def __init__(self, keep_logs: int = KEEP_LOGS, base_env: Mapping[str, str] | None = None):
        self.keep_logs = keep_logs
        self.base_env = dict(BASE_ENV if base_env is None else base_env)

    async def run(
        self,
        name: str,
        script: Path,
        args: Sequence[str],
        env: Mapping[str, str],
        timeout: float,  # noqa: ASYNC109 - the script's limit, enforced on its processes
        log_dir: Path,
    ) -> ScriptResult:
        if timeout <= 0:
            raise ValueError(f"timeout of {name} must be positive, not {timeout}")
        script, argv, early = await asyncio.to_thread(_check, name, script, args)
        if early is not None:
            return early
        full_env = {**self.base_env, **env}
        try:
            log_path, fd = await asyncio.to_thread(
                _open_log, log_dir, name, argv, full_env, timeout, self.keep_logs
            )
        except OSError as e:
            why = f"cannot create its log file in {log_dir}: {e.strerror or e}"
            return ScriptResult.unrunnable(name, argv, why)
        start = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=asyncio.subprocess.STDOUT,
                cwd=script.parent,
                env=full_env,
                start_new_session=True,
            )
        except OSError as e:
            result = ScriptResult.unrunnable(name, argv, _spawn_failure(script, e), log_path)
            await asyncio.to_thread(_append, log_path, result.reason)
            return result
        finally:
            os.close(fd)
        try:
            result = await self._wait(proc, name, argv, timeout, start, log_path)
        except BaseException:  # cancelled: the owner is going away, leave nothing behind
            if proc.returncode is None or _live_members(proc.pid):
                _killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())
            raise
        await asyncio.to_thread(
            _append, log_path, result.reason.removesuffix(f" (log: {log_path})")
        )
        return result

    async def _wait(
        self,
        proc: asyncio.subprocess.Process,
        name: str,
        argv: tuple[str, ...],
        timeout: float,  # noqa: ASYNC109 - the script's limit, enforced on its processes
        start: float,
        log_path: Path,
    ) -> ScriptResult:
        rc: int | None
        try:
            rc = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            rc = proc.returncode  # it may have ended just as time ran out
        if rc is not None:
            said = await asyncio.to_thread(last_line, log_path) if rc != 0 else ""
            return ScriptResult.exited(name, argv, rc, time.monotonic() - start, log_path, said)
        pgid = proc.pid  # the session leader: its process group has its pid
        _killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace(timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace(timeout))
        # the script is gone (or not); what it started may linger a little
        lingering = await asyncio.to_thread(_live_members, pgid)
        while lingering and time.monotonic() < deadline:
            await asyncio.sleep(POLL)
            lingering = await asyncio.to_thread(_live_members, pgid)
        killed = proc.returncode is None or lingering
        if killed:
            _killpg(pgid, signal.SIGKILL)
        rc = await proc.wait()
        return ScriptResult.timeout(
            name, argv, rc, time.monotonic() - start, timeout, killed, log_path
        )
