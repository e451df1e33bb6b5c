"""State files: what was written is read back whole, whatever happened in between."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hakit.adapters import statefile
from hakit.adapters.statefile import StateFileError, read_json, write_json
from hakit.waiting import wait_until

STATE = {"generation": 17, "role": "PRIM", "peers": ["node2"], "note": "é"}


def test_round_trip_private_and_readable(tmp_path: Path) -> None:
    path = tmp_path / "mirror.json"
    assert read_json(path) is None
    write_json(path, STATE)
    assert read_json(path) == STATE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_json(path, {"generation": 18})
    assert read_json(path) == {"generation": 18}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror.json"]


@pytest.mark.parametrize(
    ("content", "what"),
    [(b'{"generation": 1', "not valid JSON"), (b"", "it is empty"), (b"\xff\xfe", "not valid")],
    ids=["truncated", "empty", "binary"],
)
def test_corrupt_file_is_an_actionable_error(tmp_path: Path, content: bytes, what: str) -> None:
    path = tmp_path / "mirror.json"
    path.write_bytes(content)
    with pytest.raises(StateFileError) as info:
        read_json(path)
    message = str(info.value)
    assert message.startswith(f"state file {path} is corrupt: ")
    assert what in message
    assert f"mv {path} {path}.bad" in message


def test_leftover_temporary_file_is_ignored_then_replaced(tmp_path: Path) -> None:
    """A crash after writing the temporary file but before the rename changes nothing."""
    path = tmp_path / "mirror.json"
    write_json(path, STATE)
    leftover = statefile.tmp_path(path)
    leftover.write_text('{"generation": 99, "rol')  # half-written by a crashed writer
    leftover.chmod(0o644)
    assert read_json(path) == STATE
    write_json(path, {"generation": 18})
    assert read_json(path) == {"generation": 18}
    assert not leftover.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_unserialisable_value_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "mirror.json"
    write_json(path, STATE)
    with pytest.raises(TypeError):
        write_json(path, {"when": object()})
    assert read_json(path) == STATE
    assert not statefile.tmp_path(path).exists()


def test_missing_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "mirror.json"
    with pytest.raises(StateFileError, match=r"cannot write state file .*nowhere.* does not exist"):
        write_json(path, STATE)


WRITER = """
import sys
from pathlib import Path
from hakit.adapters.statefile import write_json
path, round_ = Path(sys.argv[1]), int(sys.argv[2])
pad = "x" * 100_000  # large enough for a kill to land mid-write
for n in range(1, 1_000_000):
    write_json(path, {"round": round_, "n": n, "pad": pad})
"""


def test_killed_writer_never_leaves_a_torn_file(tmp_path: Path) -> None:
    path = tmp_path / "mirror.json"
    for round_ in range(5):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(round_)])
        try:

            def progressed(round_: int = round_) -> bool:
                value = read_json(path)
                return value is not None and value["round"] == round_ and value["n"] > 3

            wait_until(progressed, 20, "the writer to write a few versions")
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(10)
        value = read_json(path)  # never raises: old or new, never a mix
        assert value is not None
        assert value["pad"] == "x" * 100_000
        json.dumps(value)
