"""The POSIX conformance tier: the same checks on a plain directory and on a replicated one
(a primary's FUSE mount replicating over loopback to a secondary, built as in
test_replication_process.py) must observe the same results; then both replicas must be the same.

The checks (tests/contract/posix_checks.py) record what they observe, not what they expect:
the plain directory on the same disk is the reference. Differences that are inherent to the
mount are marked on their single check with the reason (docs/replication.md, "What the
mount does not do"). Needs root and /dev/fuse.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.contract.posix_checks import GROUPS, Obs, run_group, run_nobody
from tests.contract.test_replication_process import (
    Rig,
    assert_identical,
    pair,
    underneath,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse"
)

INHERENT: dict[tuple[str, str], str] = {
    ("owners", "4 ctime moves on chown -1 -1"): (
        "libfuse's high-level API drops a change of ctime alone (chown(-1, -1)): no operation "
        "reaches the daemon"
    ),
    ("open_flags", "6 O_TMPFILE"): "libfuse 3.14's high-level API has no O_TMPFILE (ENOTSUP)",
}
"""Single checks whose difference is inherent to the mount: (group, check) -> the reason
(docs/replication.md, "What the mount does not do"). Each is its own test, expected to fail."""


@dataclass
class Runs:
    plain: dict[str, Obs]
    replicated: dict[str, Obs]
    rig: Rig
    pri: Any
    p: Path
    s: Path


def _run_all(root: Path) -> dict[str, Obs]:
    out = {name: run_group(name, root) for name in GROUPS}
    out["as_nobody"] = run_nobody(root)
    return out


@pytest.fixture(scope="module")
def runs() -> Iterator[Runs]:
    # not under pytest's (0700) temporary directory: the non-root user must reach it
    rig = Rig(Path(tempfile.mkdtemp(prefix="hakit-posix-")))
    try:
        os.chmod(rig.tmp, 0o755)
        plain = rig.dir("plain")
        pri, _sec, p, s, _port = pair(rig)
        os.chmod(plain, 0o755)
        os.chmod(p, 0o755)
        yield Runs(_run_all(plain), _run_all(p), rig, pri, p, s)
    finally:
        rig.teardown()
        shutil.rmtree(rig.tmp)


def _diff(a: Obs, b: Obs) -> list[str]:
    return [
        f"{k}: plain {a.get(k, '<none>')!r} / replicated {b.get(k, '<none>')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "<none>") != b.get(k, "<none>")
    ]


GROUP_NAMES = [*GROUPS, "as_nobody"]


@pytest.mark.parametrize("group", GROUP_NAMES)
def test_the_replicated_directory_behaves_as_a_plain_one(runs: Runs, group: str) -> None:
    plain, replicated = runs.plain[group], runs.replicated[group]
    inherent = {check for g, check in INHERENT if g == group}
    diff = [line for line in _diff(plain, replicated) if line.split(": plain ")[0] not in inherent]
    assert "stopped by" not in plain, (plain, diff)
    assert "failed" not in plain, (plain, diff)
    assert len(plain) >= 3, plain  # the group did run its checks
    assert not diff, f"{len(diff)} differences:\n" + "\n".join(diff)


@pytest.mark.parametrize(
    ("group", "check"),
    [
        pytest.param(g, c, marks=pytest.mark.xfail(strict=True, reason=why), id=f"{g}: {c}")
        for (g, c), why in INHERENT.items()
    ],
)
def test_inherent_differences(runs: Runs, group: str, check: str) -> None:
    plain, replicated = runs.plain[group], runs.replicated[group]
    assert check in plain, f"no check {check!r} in {group}"
    assert plain[check] == replicated.get(check)


EXACT_TIMES = ("times/h", "times/l")
"""Entries whose times the checks set last (a write is dated by each side's own clock)."""


def _special(root: Path) -> dict[str, tuple[int, ...]]:
    """Type and device number of what is neither a file nor a directory, and the exact mtime of
    EXACT_TIMES (the trees' comparison has neither)."""
    out: dict[str, tuple[int, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                out[rel] = (st.st_mode, st.st_rdev)
            if rel in EXACT_TIMES:
                out[rel + " mtime"] = (st.st_mtime_ns,)
    return out


def test_both_replicas_are_identical_after_the_checks(runs: Runs) -> None:
    real = underneath(runs.pri, runs.p)
    assert assert_identical(runs.pri, runs.p, runs.s) > 50
    special = _special(real)
    assert all(f"{rel} mtime" in special for rel in EXACT_TIMES)
    assert special == _special(runs.s)


def test_writers_through_several_names_of_one_file_do_not_block_each_other(runs: Runs) -> None:
    """Each change through one name invalidates the others' kernel caches; two writers (and a
    chmod) through different names at once must all finish, and the names then agree."""
    d = runs.p / "concurrent"
    d.mkdir()
    names = [d / "a", d / "b", d / "c"]
    names[0].write_bytes(b"")
    for n in names[1:]:
        os.link(names[0], n)
    errors: list[BaseException] = []

    def writer(path: Path, tag: bytes) -> None:
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                for i in range(300):
                    os.pwrite(fd, tag * 5000, (i % 16) * 3001)  # partial pages
                    if i % 50 == 0:
                        os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as e:
            errors.append(e)

    def chmodder(path: Path) -> None:
        try:
            for i in range(300):
                os.chmod(path, 0o600 | (i % 2) * 0o044)
                os.lstat(names[0])
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=writer, args=(names[0], b"A"), daemon=True),
        threading.Thread(target=writer, args=(names[1], b"B"), daemon=True),
        threading.Thread(target=chmodder, args=(names[2],), daemon=True),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a writer is blocked"
    assert not errors, errors
    seen = {(os.lstat(n).st_mode, os.lstat(n).st_size, n.read_bytes()) for n in names}
    assert len(seen) == 1, "the names disagree"
    assert_identical(runs.pri, runs.p, runs.s)
