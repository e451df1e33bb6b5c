"""How pytest-xdist shares the tests among its workers: `pytest -n 2 --dist loadgroup`.

With `--dist loadgroup` the work units are our own (`FileGroups`): each test file is one unit,
run on one worker one test after the other as without xdist, so a file's module fixtures (its
lab, its etcd, its browser) are made once and its fixed names (its lab's, `tcluster`, …) are
never used twice at once; the files of a group in GROUPS make one unit together. Without xdist,
or with another `--dist`, nothing here changes anything.

Why not `pytest.mark.xdist_group`: with pytest 9.2 pytest-xdist 3.8 ignores it without a word
(it marks a test by rewriting the node id, which pytest no longer reads: pytest-xdist issue
1386), and the controller that makes the work units sees node ids, not marks. A mark that
xdist does pass on (`…@NAME`) is still honoured.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import settings

# Files that must not run beside each other: a group's files run on one worker, one by one.
GROUPS = {
    # apt-get install/remove on this machine: one at a time (best: a run of its own, -m package)
    "tests/package/test_deb.py": "package",
    # a Chromium each: never two at once on two cores
    "tests/console/test_console_browser.py": "browser",
    "tests/console/test_console_ha.py": "browser",
    # the two that load the machine on purpose (CPU hogs, a flood of every port) and the one
    # that measures failure detection to the pulse (timeout + interval): never side by side
    "tests/daemon/test_daemon_loopback.py": "timing",
    "tests/lab/test_flood_lab.py": "timing",
    "tests/lab/test_cluster_lab.py": "timing",
    "tests/lab/test_soak_lab.py": "timing",  # a busy core and replication at full speed
}

# Slowest first, so that the quick files fill the end of the run: the order of the work units.
FIRST = ("tests/package/", "tests/lab/", "tests/console/", "tests/daemon/", "tests/contract/")


def unit_of(nodeid: str) -> str:
    """The work unit of a test: its group, else its file."""
    if nodeid.rfind("@") > nodeid.rfind("]"):  # an xdist_group mark, where xdist passes it on
        return nodeid.rsplit("@", 1)[1]
    path = nodeid.split("::", 1)[0]
    return GROUPS.get(path, path)


def _rank(item: pytest.Item) -> int:
    path = item.nodeid.split("::", 1)[0]
    return next((i for i, d in enumerate(FIRST) if path.startswith(d)), len(FIRST))


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist") and config.getoption("dist", None) == "loadgroup":
        # the units in collection order (slowest first, below), not by their number of tests
        config.option.loadscopereorder = False


if os.environ.get("PYTEST_XDIST_WORKER"):
    # beside a lab test on two cores a property example may take more than hypothesis's
    # 200 ms: not a failure of ours (a test's own @settings(deadline=...) still applies)
    settings.register_profile("xdist", deadline=timedelta(seconds=2))
    settings.load_profile("xdist")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # in a worker xdist sets `dist` to "no", and `loadgroup` to whether it was loadgroup
    if os.environ.get("PYTEST_XDIST_WORKER") and getattr(config.option, "loadgroup", False):
        items.sort(key=_rank)  # stable: each file's tests keep their order


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # before xdist's own; no hook without xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileGroups(LoadScopeScheduling):  # type: ignore[misc]  # xdist has no types
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    return FileGroups(config, log)
