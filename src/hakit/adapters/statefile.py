"""Small JSON state files that survive a crash or a power cut at any instant.

`write_json` writes a temporary file next to the target, flushes it to disk, renames it over the
target and flushes the directory: a reader sees the old content or the new one, never a mix.
A crash before the rename leaves the temporary file behind; it is ignored by `read_json` and
replaced by the next `write_json`. Files are created with mode 0600 (state is root's business).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from hakit.errors import HakitError

MODE = 0o600


class StateFileError(HakitError):
    """A state file cannot be read or written, or its content is not valid JSON."""


def tmp_path(path: Path) -> Path:
    """Where `write_json` prepares the next content of `path` (same directory: same filesystem)."""
    return path.with_name(f".{path.name}.tmp")


def write_json(path: Path, obj: Any) -> None:
    """Replace `path` with `obj` as JSON, atomically and durably (fsync file, rename, fsync dir)."""
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()  # TypeError: caller's bug
    write_file(path, data, what="state file", why="hakit keeps its state there")


def write_file(
    path: Path,
    data: bytes,
    mode: int = MODE,
    *,
    what: str = "file",
    why: str = "check the disk",
) -> None:
    """Replace `path` with `data` (mode `mode`), atomically and durably: a reader (or a power
    cut) sees the old content or the new one, never a mix. Also configuration files
    (`cluster.yaml` applied or received at a join, `cluster.key`)."""
    tmp = tmp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # a leftover temporary file may have another mode
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        hint = ""
        if not path.parent.is_dir():
            hint = f": the directory {path.parent} does not exist"
        raise StateFileError(
            f"cannot write {what} {path}: {e.strerror or e}{hint} "
            f"({why}: check the disk, its free space and the permissions)"
        ) from e


def read_json(path: Path) -> Any | None:
    """The content of `path`, or None if it does not exist; `StateFileError` if unreadable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateFileError(
            f"cannot read state file {path}: {e.strerror or e} (check its permissions and the disk)"
        ) from e
    try:
        return json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        # RecursionError: arrays nested thousands deep, which hakit never writes
        what = "it is empty" if not data.strip() else f"it is not valid JSON ({str(e)[:200]})"
        raise StateFileError(
            f"state file {path} is corrupt: {what}. hakit wrote it atomically, so something else "
            f"changed or damaged it. Inspect it, then restore it or move it aside "
            f"(`mv {path} {path}.bad`): hakit then acts as if this node had no saved state"
        ) from e


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
