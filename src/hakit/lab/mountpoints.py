"""Directories of this machine that the labs use as mount points (their hosts' /etc/hakit,
/var/lib/hakit, /var/log/hakit, /srv, private paths): made when missing, and removed again
(if empty) only when no lab is left — never while a lab uses them, since removing a directory
on this machine detaches what other mount namespaces mounted on it."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from hakit.lab.errors import LabError
from hakit.lab.namespaces import RUNTIME_DIR, locked, netns_list, release_runtime_mount
from hakit.lab.topology import lab_of_netns

MOUNTPOINTS = RUNTIME_DIR / ".mountpoints"  # directories made on this machine, to remove
GLOBAL_LOCK = RUNTIME_DIR / ".lock"  # held by `up` and `down` of every lab


def ensure_mountpoint(path: str) -> None:
    """Make directory `path` exist on this machine (a bind mount needs a mount point);
    remember the directories created, removed again when the last lab goes."""
    p = Path(path)
    if p.is_dir():
        return
    if p.exists() or p.is_symlink():
        raise LabError(f"private path {path} exists on this machine and is not a directory")
    created = []
    q = p
    while not q.exists():
        created.append(str(q))
        q = q.parent
    p.mkdir(parents=True)
    _remember(created)


def remove_with_last_lab(paths: Iterable[str | Path]) -> None:
    """Remove the directories `paths`, made on this machine beside the labs (e.g. by the
    Debian package's test), as the labs' own mount points: now if no lab is left and they are
    empty, else when the last lab goes down."""
    with locked(GLOBAL_LOCK, "removing directories the labs may use"):
        _remember([str(p) for p in paths])
        release_if_last()


def release_if_last() -> None:
    """With no lab left on the machine: unmount /run/hakit-lab and remove the (still empty)
    mount points the labs created. Callers hold GLOBAL_LOCK."""
    if any(lab_of_netns(n) for n in netns_list()):
        return
    with contextlib.suppress(FileNotFoundError):
        if any(p.is_dir() for p in RUNTIME_DIR.iterdir()):
            return
    release_runtime_mount()
    try:
        created = list(json.loads(MOUNTPOINTS.read_text()))
    except (OSError, ValueError):
        return
    for d in sorted(created, key=lambda s: s.count("/"), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(d)  # only if empty
    MOUNTPOINTS.unlink(missing_ok=True)


def _remember(created: Iterable[str]) -> None:
    known: list[str] = []
    with contextlib.suppress(OSError, ValueError):
        known = list(json.loads(MOUNTPOINTS.read_text()))
    MOUNTPOINTS.parent.mkdir(parents=True, exist_ok=True)
    MOUNTPOINTS.write_text(json.dumps(sorted(set(known) | set(created))) + "\n")
