"""ScriptRunner contract: ProcessScriptRunner with real scripts, FakeScriptRunner with outcomes.

The same expectations hold for both where they mean something (how a run ends and how that is
said); what only real processes have (environment, log files, process groups) is tested on the
real runner alone. Every process a test starts is gone when it ends (checked by PID).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import pytest

from hakit.adapters.scripts import LOG_RE, ProcessScriptRunner, ScriptResult, ScriptRunner
from hakit.testing.fakes import FakeScriptRunner, Outcome, ScriptCall
from hakit.waiting import wait_until

Behaviour = Literal["ok", "exit3", "hang", "missing", "not-executable"]
ARGS = ("WAIT", "PRIM", "start")
ENV = {"HAKIT_MODULE": "web", "HAKIT_NODE": "node1"}

SCRIPTS: dict[Behaviour, str] = {
    "ok": 'echo "started with $*"\nexit 0\n',
    "exit3": 'echo "port 80 already in use" >&2\nexit 3\n',
    "hang": "sleep 60\n",
    "missing": "",
    "not-executable": "exit 0\n",
}
FAKE: dict[Behaviour, Outcome] = {
    "ok": 0,
    "exit3": 3,
    "hang": "timeout",
    "missing": "missing",
    "not-executable": "not-executable",
}


@dataclass
class ScriptWorld:
    runner: ScriptRunner
    root: Path
    fake: FakeScriptRunner | None = None
    started: list[int] = field(default_factory=list)

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    def script(self, name: str, behaviour: Behaviour, text: str | None = None) -> Path:
        path = self.bin / name
        if self.fake is not None:
            self.fake.will(name, FAKE[behaviour])
        elif behaviour != "missing":
            path.write_text("#!/bin/sh\n" + (text if text is not None else SCRIPTS[behaviour]))
            path.chmod(0o644 if behaviour == "not-executable" else 0o755)
        return path

    def run(self, name: str, script: Path, timeout: float = 10.0) -> ScriptResult:
        return asyncio.run(self.runner.run(name, script, ARGS, ENV, timeout, self.logs))


def dead(pid: int) -> bool:
    """Gone, or a zombie (exited; reaping orphans is init's business)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def conforms(fake: FakeScriptRunner, real: ProcessScriptRunner) -> tuple[ScriptRunner, ...]:
    """Type-checked only: both runners are `ScriptRunner`s."""
    return fake, real


def kill_if_alive(pid: int) -> None:
    if not dead(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def real(tmp_path: Path) -> Iterator[ScriptWorld]:
    world = ScriptWorld(ProcessScriptRunner(), tmp_path)
    world.bin.mkdir()
    yield world
    for pid in world.started:
        kill_if_alive(pid)


@pytest.fixture(params=["fake", "real"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> ScriptWorld:
    if request.param == "fake":
        fake = FakeScriptRunner()
        return ScriptWorld(fake, tmp_path, fake=fake)
    w: ScriptWorld = request.getfixturevalue("real")
    return w


# -- the contract ----------------------------------------------------------------------------


def test_success(world: ScriptWorld) -> None:
    path = world.script("start_prim", "ok")
    r = world.run("start_prim", path)
    assert (r.ok, r.returncode, r.timed_out, r.missing) == (True, 0, False, False)
    assert r.argv == (str(path), *ARGS)
    assert r.reason.startswith("start_prim exited 0 after ")


def test_failure_says_the_exit_status(world: ScriptWorld) -> None:
    r = world.run("start_prim", world.script("start_prim", "exit3"))
    assert (r.ok, r.returncode, r.timed_out, r.missing) == (False, 3, False, False)
    assert re.match(r"start_prim exited 3 after \d+\.\d\d s", r.reason), r.reason


def test_timeout_is_a_failure(world: ScriptWorld) -> None:
    r = world.run("stop_prim", world.script("stop_prim", "hang"), timeout=0.5)
    assert (r.ok, r.timed_out, r.missing) == (False, True, False)
    assert r.reason.startswith("stop_prim did not finish within 0.5 s: its processes were ")
    assert r.duration >= 0.5


def test_missing_script_is_ok(world: ScriptWorld) -> None:
    path = world.script("start_second", "missing")
    r = world.run("start_second", path)
    assert (r.ok, r.missing, r.returncode, r.log_path) == (True, True, None, None)
    assert r.reason == f"no start_second script ({path})"


def test_script_that_is_not_executable_fails_with_the_fix(world: ScriptWorld) -> None:
    path = world.script("start_prim", "not-executable")
    r = world.run("start_prim", path)
    assert (r.ok, r.missing, r.returncode) == (False, False, None)
    assert r.reason == f"cannot run start_prim: {path} is not executable: chmod +x {path}"


# -- the fake only ---------------------------------------------------------------------------


def test_fake_records_calls_and_plays_outcomes_in_order(tmp_path: Path) -> None:
    fake = FakeScriptRunner({"start_prim": [1, 0]}, default="missing")
    script = tmp_path / "start_prim"

    async def go() -> list[ScriptResult]:
        return [
            await fake.run("start_prim", script, ["WAIT", "PRIM", "start"], ENV, 5, tmp_path),
            await fake.run("start_prim", script, ["WAIT", "PRIM", "start"], ENV, 5, tmp_path),
            await fake.run("start_prim", script, ["WAIT", "PRIM", "start"], ENV, 5, tmp_path),
            await fake.run("stop_prim", tmp_path / "stop_prim", ["force"], {}, 5, tmp_path),
        ]

    results = asyncio.run(go())
    assert [(r.ok, r.returncode, r.missing) for r in results] == [
        (False, 1, False),
        (True, 0, False),
        (True, 0, False),  # the last outcome repeats
        (True, None, True),  # unscripted: the default
    ]
    assert fake.names() == ["start_prim"] * 3 + ["stop_prim"]
    assert fake.calls[0] == ScriptCall(
        "start_prim", script, ("WAIT", "PRIM", "start"), ENV, 5, tmp_path
    )


def test_fake_hook_can_block_and_override(tmp_path: Path) -> None:
    release = asyncio.Event()
    seen: list[str] = []

    async def hook(call: ScriptCall) -> Outcome | None:
        seen.append(call.name)
        if call.name == "stop_prim":
            await release.wait()
            return 7
        return None

    fake = FakeScriptRunner(hook=hook)

    async def go() -> tuple[bool, ScriptResult]:
        task = asyncio.create_task(fake.run("stop_prim", tmp_path / "s", [], {}, 5, tmp_path))
        await asyncio.sleep(0)
        blocked = not task.done()
        release.set()
        return blocked, await task

    blocked, result = asyncio.run(go())
    assert (blocked, result.returncode, seen) == (True, 7, ["stop_prim"])


# -- the real runner only --------------------------------------------------------------------


def test_script_gets_args_env_folder_and_no_stdin(real: ScriptWorld) -> None:
    out = real.root / "seen"
    path = real.script(
        "start_prim",
        "ok",
        f"""exec > {out}
echo "args=$*"
echo "module=$HAKIT_MODULE node=$HAKIT_NODE"
echo "path=$PATH lang=$LANG"
echo "home=${{HOME:-unset}}"
echo "cwd=$(pwd)"
echo "stdin=$(readlink /proc/$$/fd/0)"
echo "session=$(cut -d' ' -f6 /proc/$$/stat) pid=$$"
""",
    )
    assert real.run("start_prim", path).ok
    seen = dict(line.split("=", 1) for line in out.read_text().split("\n") if "=" in line)
    assert seen["args"] == "WAIT PRIM start"
    assert seen["module"] == "web node=node1"
    assert (
        seen["path"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin lang=C.UTF-8"
    )
    assert seen["home"] == "unset"  # nothing leaks from the daemon's environment
    assert seen["cwd"] == str(real.bin)
    assert seen["stdin"] == "/dev/null"
    session, pid = seen["session"].split(" pid=")
    assert session == pid  # its own session, hence its own process group


def test_log_file_has_header_output_and_footer(real: ScriptWorld) -> None:
    r = real.run("start_prim", real.script("start_prim", "exit3"))
    assert r.log_path is not None
    assert r.log_path.parent == real.logs
    assert LOG_RE.fullmatch(r.log_path.name)
    assert r.log_path.name.endswith("-start_prim.log")
    assert r.reason.endswith(f"(log: {r.log_path})")
    text = r.log_path.read_text()
    assert f"# command: {real.bin / 'start_prim'} WAIT PRIM start\n" in text
    assert "# HAKIT_MODULE=web\n# HAKIT_NODE=node1\n" in text
    assert "PATH=" not in text
    assert "port 80 already in use\n" in text  # stderr goes to the log
    # the footer and the reason say how it ended, with the last line it printed
    said = r"start_prim exited 3 after \d+\.\d\d s: port 80 already in use"
    assert re.search(rf"\n# {said}\n$", text), text
    assert re.match(said, r.reason), r.reason
    assert stat.S_IMODE(r.log_path.stat().st_mode) == 0o600


def test_timeout_kills_the_whole_process_group(real: ScriptWorld) -> None:
    pids = real.root / "pids"
    text = f"sleep 60 &\necho $! > {pids}\necho $$ >> {pids}\nsleep 60\n"
    path = real.script("stop_prim", "hang", text)
    r = real.run("stop_prim", path, timeout=0.5)
    started = [int(p) for p in pids.read_text().split()]
    real.started += started
    assert r.timed_out
    assert "terminated (SIGTERM)" in r.reason
    assert "SIGKILL" not in r.reason  # they obeyed SIGTERM
    for pid in started:  # the background child too
        wait_until(partial(dead, pid), 5, f"process {pid} to end")
    assert "# stop_prim did not finish within 0.5 s" in (r.log_path or Path()).read_text()


def test_timeout_kills_processes_that_ignore_sigterm(real: ScriptWorld) -> None:
    pids = real.root / "pids"
    text = f"trap '' TERM\nsleep 60 &\necho $! > {pids}\necho $$ >> {pids}\nsleep 60\n"
    path = real.script("stop_prim", "hang", text)
    t0 = time.monotonic()
    r = real.run("stop_prim", path, timeout=0.4)
    elapsed = time.monotonic() - t0
    started = [int(p) for p in pids.read_text().split()]
    real.started += started
    assert r.timed_out
    assert "then killed (SIGKILL) after 0.2 s" in r.reason
    assert r.returncode == -signal.SIGKILL
    assert 0.6 <= elapsed < 5  # timeout + grace, then no waiting for anything
    for pid in started:
        wait_until(partial(dead, pid), 5, f"process {pid} to end")


def test_background_process_outlives_a_successful_script(real: ScriptWorld) -> None:
    """A start script that launches the application returns at once; the application stays."""
    pid_file = real.root / "app.pid"
    path = real.script("start_prim", "ok", f"sleep 60 &\necho $! > {pid_file}\necho started\n")
    r = real.run("start_prim", path)
    app = int(pid_file.read_text())
    real.started.append(app)
    assert r.ok
    assert r.duration < 5  # not held by the child that keeps the log open
    assert not dead(app)


def test_cancelled_run_leaves_no_process(real: ScriptWorld) -> None:
    pids = real.root / "pids"
    path = real.script("start_prim", "hang", f"sleep 60 &\necho $! $$ > {pids}\nsleep 60\n")

    async def go() -> None:
        task = asyncio.create_task(real.runner.run("start_prim", path, [], {}, 30, real.logs))
        deadline = time.monotonic() + 10
        while not (pids.exists() and pids.read_text().count(" ") == 1):
            assert time.monotonic() < deadline, "the script did not start"
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    started = [int(p) for p in pids.read_text().split()]
    real.started += started
    for pid in started:
        wait_until(partial(dead, pid), 5, f"process {pid} to end")


def test_logs_are_rotated(real: ScriptWorld) -> None:
    runner = ProcessScriptRunner(keep_logs=3)
    path = real.script("check", "ok")
    real.logs.mkdir()
    (real.logs / "notes.txt").write_text("not a script log")

    async def go() -> list[ScriptResult]:
        return [await runner.run("check", path, [], {}, 10, real.logs) for _ in range(5)]

    results = asyncio.run(go())
    kept = sorted(p.name for p in real.logs.iterdir())
    assert kept == sorted([r.log_path.name for r in results[-3:] if r.log_path] + ["notes.txt"])


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        ("#!/nonexistent/sh\nexit 0\n", 0o755, "the interpreter of .* was not found"),
        ("echo no shebang\n", 0o755, "neither a program nor a script starting with #!"),
    ],
    ids=["bad-interpreter", "no-shebang"],
)
def test_script_that_cannot_start_says_why(
    real: ScriptWorld, content: str, mode: int, message: str
) -> None:
    path = real.bin / "start_prim"
    path.write_text(content)
    path.chmod(mode)
    r = real.run("start_prim", path)
    assert (r.ok, r.missing, r.returncode) == (False, False, None)
    assert re.search(message, r.reason), r.reason


def test_dangling_symlink_is_not_missing(real: ScriptWorld) -> None:
    path = real.bin / "start_prim"
    path.symlink_to(real.root / "gone")
    r = real.run("start_prim", path)
    assert (r.ok, r.missing) == (False, False)
    assert "symbolic link to" in r.reason


def test_runs_do_not_block_each_other(real: ScriptWorld) -> None:
    """Four scripts of 1 s each run side by side: the runner never blocks the event loop."""
    path = real.script("check", "ok", "sleep 1\n")

    async def go() -> float:
        t0 = time.monotonic()
        rs = await asyncio.gather(*(real.runner.run("check", path, [], {}, 10, real.logs)
                                    for _ in range(4)))  # fmt: skip
        assert all(r.ok for r in rs)
        return time.monotonic() - t0

    assert asyncio.run(go()) < 3  # one after another would take 4 s
