"""The System V side of `services:` (adapters/services.py) against real init scripts: the
order of starts and stops, status, and errors that name the service and what failed."""

from __future__ import annotations

import contextlib
import os
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.adapters.services import ServiceError, SysV, start_all, stop_all

SCRIPT = """\
#!/bin/sh
# a service of the test: a sleeping process with a pid file; every action is logged
pidfile={dir}/{name}.pid
echo "{name} $1" >> {dir}/journal
running() {{ [ -f $pidfile ] && kill -0 "$(cat $pidfile)" 2>/dev/null; }}
case "$1" in
    start) {fail_start} running && exit 0; sleep 300 >/dev/null 2>&1 & echo $! > $pidfile ;;
    stop) {fail_stop} running && kill "$(cat $pidfile)"; rm -f $pidfile ;;
    status) running ;;
    *) exit 3 ;;
esac
"""


@pytest.fixture
def init_d(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "init.d"
    d.mkdir()
    yield d
    for pidfile in tmp_path.glob("init.d/*.pid"):  # whatever a failed test left running
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def service(d: Path, name: str, fail_start: bool = False, fail_stop: bool = False) -> None:
    p = d / name
    p.write_text(
        textwrap.dedent(
            SCRIPT.format(
                dir=d,
                name=name,
                fail_start="echo no port >&2; exit 1;" if fail_start else "",
                fail_stop="echo busy >&2; exit 1;" if fail_stop else "",
            )
        )
    )
    p.chmod(0o755)


def journal(d: Path) -> list[str]:
    return [line for line in (d / "journal").read_text().splitlines() if "status" not in line]


def test_started_in_order_stopped_in_reverse(init_d: Path) -> None:
    for name in ("db", "app"):
        service(init_d, name)
    port = SysV(init_d)
    assert start_all(port, ["db", "app"]) == ["db: started (sysv)", "app: started (sysv)"]
    assert port.active("db")
    assert port.active("app")
    assert start_all(port, ["db"]) == ["db: already active"]
    assert stop_all(port, ["db", "app"]) == ["app: stopped (sysv)", "db: stopped (sysv)"]
    assert not port.active("db")
    assert journal(init_d) == ["db start", "app start", "app stop", "db stop"]
    assert stop_all(port, ["db"]) == ["db: not running"]
    assert stop_all(port, ["db"], force=True) == ["db: killed and stopped (sysv)"]


def test_a_failing_start_stops_the_sequence_and_says_why(init_d: Path) -> None:
    service(init_d, "db", fail_start=True)
    service(init_d, "app")
    with pytest.raises(ServiceError, match=r"starting service db: .* exited 1: no port"):
        start_all(SysV(init_d), ["db", "app"])
    assert journal(init_d) == ["db start"]  # app needs db: not started


def test_every_stop_is_tried_and_the_failures_reported(init_d: Path) -> None:
    service(init_d, "db")
    service(init_d, "app", fail_stop=True)
    port = SysV(init_d)
    start_all(port, ["db", "app"])
    with pytest.raises(ServiceError, match=r"stopping service app: .* exited 1: busy"):
        stop_all(port, ["db", "app"])
    assert not port.active("db")  # tried although app failed before it
    (init_d / "app").unlink()
    service(init_d, "app")
    stop_all(port, ["app"])


def test_a_missing_service_is_named(init_d: Path) -> None:
    port = SysV(init_d)
    assert not port.exists("nope")
    with pytest.raises(ServiceError, match=r"service nope: no systemd here and no executable"):
        start_all(port, ["nope"])
