"""The shipped logrotate policy (packaging/logrotate/hakit) against the daemon's real log
writers: real logrotate, real `daemon_logging`. The daemon keeps its logs open for its whole
life with O_APPEND (`hakit.paths.open_log`), so `copytruncate` must leave a clean file that
the running daemon goes on writing from its start, and the rotated copy must keep the modes."""

from __future__ import annotations

import logging
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from hakit.daemon.logs import LOGGER, Event, Timeline, daemon_logging
from hakit.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "packaging" / "logrotate" / "hakit"

pytestmark = pytest.mark.skipif(
    shutil.which("logrotate") is None, reason="needs logrotate (apt-get install logrotate)"
)


def rotate(tmp: Path, log_dir: Path) -> None:
    """Run logrotate once, forced, with the shipped policy pointed at `log_dir`."""
    text = POLICY.read_text()
    assert "/var/log/hakit/" in text
    conf = tmp / "logrotate.conf"
    conf.write_text(text.replace("/var/log/hakit/", f"{log_dir}/"))
    conf.chmod(0o644)
    r = subprocess.run(
        ["logrotate", "--force", "--state", str(tmp / "state"), str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def lines(p: Path) -> list[str]:
    return p.read_text().splitlines()


def test_copytruncate_leaves_the_running_daemon_writing_a_clean_file(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    log = logging.getLogger(LOGGER + ".test")
    timeline = Timeline("node1")
    hakit_log, events = log_dir / "hakit.log", log_dir / "events.jsonl"

    def write(word: str, n: int) -> None:
        """`n` log lines and `n` timeline events (which hakit.log also gets)."""
        for i in range(n):
            log.info("%s line %d", word, i)
            timeline.record(Event(at=float(i), node="node1", kind="test", message=f"{word} {i}"))
        wait_until(lambda: len(lines(events)) == n, 5, f"{n} {word} events written")
        wait_until(lambda: len(lines(hakit_log)) == 2 * n, 5, f"{2 * n} {word} lines written")

    with daemon_logging(log_dir, "node1", to_stderr=False):
        write("old", 50)
        rotate(tmp_path, log_dir)
        write("new", 3)

    for path in (hakit_log, events):
        data = path.read_bytes()
        assert b"\0" not in data, f"{path.name}: a hole after truncation (not O_APPEND?)"
        assert "old" not in data.decode()
        assert data.decode().count("new") == len(lines(path))
        rotated = path.with_name(path.name + ".1")  # delaycompress: the newest copy stays plain
        old = lines(rotated)
        assert len(old) == (100 if path == hakit_log else 50)
        assert all("old" in line for line in old)
        # the copy and the live file stay readable by root and the log's group only
        assert stat.S_IMODE(rotated.stat().st_mode) == 0o640
        assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_writer_without_o_append_would_leave_a_hole(tmp_path: Path) -> None:
    """What the check above guards against: a log written at its own offset ('w' mode)."""
    log_dir = tmp_path / "log"
    log_dir.mkdir(mode=0o750)
    path = log_dir / "hakit.log"
    with open(path, "w") as f:
        f.write("x" * 1000 + "\n")
        f.flush()
        rotate(tmp_path, log_dir)
        f.write("after\n")
    assert path.read_bytes().startswith(b"\0")
