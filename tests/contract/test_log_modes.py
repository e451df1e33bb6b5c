"""Logs are readable by root and the log's group only (finding 8: they were world-readable)."""

from __future__ import annotations

import stat
from pathlib import Path

from hakit.daemon.logs import daemon_logging
from hakit.paths import open_log


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_a_new_log_and_its_folder_are_not_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "log" / "hakit.log"
    with open_log(path) as f:
        f.write("x\n")
    assert mode(path) == 0o640
    assert mode(path.parent) == 0o750


def test_existing_logs_with_wider_modes_are_narrowed_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    folder.mkdir(mode=0o755)
    folder.chmod(0o777)
    path = folder / "events.jsonl"
    path.write_text("old\n")
    path.chmod(0o666)
    with open_log(path) as f:
        f.write("new\n")
    assert mode(path) == 0o640
    assert mode(folder) == 0o750
    assert path.read_text() == "old\nnew\n"


def test_the_daemon_logs_are_0640(tmp_path: Path) -> None:
    with daemon_logging(tmp_path, "node1", to_stderr=False):
        pass
    assert mode(tmp_path / "hakit.log") == 0o640
    assert mode(tmp_path / "events.jsonl") == 0o640
    assert mode(tmp_path) & 0o027 == 0  # pytest made it 0700: narrower is kept
