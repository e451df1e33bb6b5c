"""The work units of `pytest -n 2 --dist loadgroup` (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import FIRST, GROUPS, unit_of

ROOT = Path(__file__).resolve().parents[2]


def test_every_grouped_file_and_first_folder_exists() -> None:
    """A renamed file would silently leave its group (and run beside what it must not)."""
    assert [p for p in GROUPS if not (ROOT / p).is_file()] == []
    assert [d for d in FIRST if not (ROOT / d).is_dir()] == []


def test_a_test_runs_in_its_group_else_with_its_file() -> None:
    assert unit_of("tests/package/test_deb.py::test_x") == "package"
    assert unit_of("tests/lab/test_flood_lab.py::test_x") == unit_of(
        "tests/daemon/test_daemon_loopback.py::test_y[a]"
    )
    assert unit_of("tests/unit/test_wire.py::test_x[a@b]") == "tests/unit/test_wire.py"
    assert unit_of("tests/unit/test_wire.py::C::test_x") == "tests/unit/test_wire.py"
    assert unit_of("tests/unit/test_wire.py::test_x@named") == "named"  # xdist_group, passed on
