"""The shipped examples' scripts against real processes (no nginx needed: a stand-in master
that behaves as nginx's does — it starts a new worker as soon as one dies)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from importlib import resources
from pathlib import Path

from hakit.waiting import wait_until

# a master process: one worker at a time, a new one as soon as a worker dies (nginx's rule);
# every worker's PID appended to workers.txt
MASTER = textwrap.dedent("""\
    import os, signal, sys, time
    log = sys.argv[1]
    def worker():
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            while True:
                time.sleep(1)
        with open(log, "a") as f:
            f.write(f"{pid}\\n")
    def respawn(*_):
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if not pid:
                break
            worker()
    signal.signal(signal.SIGCHLD, respawn)
    for _ in range(4):
        worker()
    while True:
        time.sleep(0.001)
""")


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_farm_web_forced_stop_leaves_no_worker_behind(tmp_path: Path) -> None:
    """Found by `hakit lab chaos --scenario farm --seed 27` (round 6, the daemon killed): the
    forced stop killed the workers before the master, the master started a new worker in
    between, and that orphan kept port 80: the node could never start nginx again."""
    workers = tmp_path / "workers.txt"
    # daemonized as nginx is (its parent gone): the kill leaves no zombie to wait for
    (tmp_path / "master.py").write_text(MASTER)
    started = subprocess.run(
        ["sh", "-c", f"{sys.executable} {tmp_path}/master.py {workers} >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    master = int(started.stdout)
    try:
        wait_until(lambda: workers.exists() and len(workers.read_text().split()) >= 4, 10, "")
        (tmp_path / "nginx.pid").write_text(f"{master}\n")
        with resources.as_file(resources.files("hakit") / "examples" / "farm-web") as folder:
            script = folder / "bin" / "stop_both"
            r = subprocess.run(
                ["sh", str(script), "UP", "STOP", "force"],
                env={**os.environ, "WEB_ROOT": str(tmp_path)},
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        assert r.returncode == 0, r.stdout + r.stderr
        pids = [int(p) for p in workers.read_text().split()]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(_gone(p) for p in pids):
            time.sleep(0.05)
        assert _gone(master)
        assert [p for p in pids if not _gone(p)] == []
    finally:
        left = [int(p) for p in workers.read_text().split()] if workers.exists() else []
        for p in [master, *left]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
