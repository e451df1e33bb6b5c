"""The operating system's services (a module's `services:` list): start, stop, status, boot.

Two service managers, chosen once per machine: systemd when it runs (`/run/systemd/system`
exists, as `sd_booted` checks), else the System V scripts in `/etc/init.d` that Debian packages
still ship (nginx, apache2, postgresql, mariadb…), so that the same module runs in containers,
in the lab's namespaces and on machines without systemd. Every call is bounded in time and says
what failed in one line (`ServiceError`); nothing here raises anything else.

- start: `systemctl start NAME` / `/etc/init.d/NAME start`, then the service must be active;
- stop: `systemctl stop` / `init.d stop`; forced: `systemctl kill --signal=SIGKILL` then
  `stop` (systemd kills the whole unit) / `init.d stop` (System V scripts know no more);
- active: `systemctl is-active` / `init.d status` exit 0 (LSB);
- disable: the service's own start at boot is switched off (`systemctl disable`, or
  `update-rc.d NAME disable`), since hakit decides where it runs.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hakit.errors import HakitError

SYSTEMD_RUNNING = Path("/run/systemd/system")
INIT_D = Path("/etc/init.d")
TIMEOUT = 90.0  # s for one start or stop
STATUS_TIMEOUT = 10.0
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


class ServiceError(HakitError):
    """A service could not be found, started, stopped or switched; says which and why."""


class ServicePort(Protocol):
    manager: str  # "systemd" or "sysv"

    def exists(self, name: str) -> bool: ...
    def start(self, name: str) -> None: ...
    def stop(self, name: str, force: bool = False) -> None: ...
    def active(self, name: str) -> bool: ...
    def disable(self, name: str) -> str: ...


def _run(argv: Sequence[str], what: str, timeout: float = TIMEOUT) -> tuple[int, str]:
    """(exit status, the end of its output). The output goes to a file, not a pipe: a daemon
    the command starts may keep it open, and must not hold us until the timeout."""
    with tempfile.TemporaryFile() as output:
        try:
            p = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=ENV,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            late = f"`{' '.join(argv)}` still running after {timeout:g} s"
            raise ServiceError(f"{what}: {late}") from None
        except OSError as e:
            raise ServiceError(f"{what}: cannot run {argv[0]}: {e.strerror or e}") from None
        output.seek(max(0, output.tell() - 500))
        return p.returncode, output.read().decode(errors="replace").strip()


def _must(argv: Sequence[str], what: str, timeout: float = TIMEOUT) -> None:
    code, out = _run(argv, what, timeout)
    if code != 0:
        raise ServiceError(f"{what}: `{' '.join(argv)}` exited {code}: {out or 'no output'}")


@dataclass
class Systemd:
    manager: str = field(default="systemd", init=False)

    def exists(self, name: str) -> bool:
        code, out = _run(["systemctl", "show", "-P", "LoadState", name], name, STATUS_TIMEOUT)
        return code == 0 and out.strip() not in ("not-found", "")

    def start(self, name: str) -> None:
        _must(["systemctl", "start", name], f"starting service {name}")

    def stop(self, name: str, force: bool = False) -> None:
        if force:
            _run(["systemctl", "kill", "--signal=SIGKILL", name], f"killing service {name}")
        _must(["systemctl", "stop", name], f"stopping service {name}")

    def active(self, name: str) -> bool:
        return _run(["systemctl", "is-active", "--quiet", name], name, STATUS_TIMEOUT)[0] == 0

    def disable(self, name: str) -> str:
        code, _ = _run(["systemctl", "is-enabled", "--quiet", name], name, STATUS_TIMEOUT)
        if code != 0:
            return f"{name}: not started at boot"
        _must(["systemctl", "disable", name], f"disabling {name} at boot")
        return f"{name}: no longer started at boot (systemctl disable)"


@dataclass
class SysV:
    init_d: Path = INIT_D
    manager: str = field(default="sysv", init=False)

    def _script(self, name: str) -> str:
        if not self.exists(name):
            raise ServiceError(
                f"service {name}: no systemd here and no executable {self.init_d / name}; "
                "install the application's package on this node"
            )
        return str(self.init_d / name)

    def exists(self, name: str) -> bool:
        return os.access(self.init_d / name, os.X_OK)

    def start(self, name: str) -> None:
        _must([self._script(name), "start"], f"starting service {name}")
        if not self.active(name):
            raise ServiceError(f"service {name}: started, but `{self._script(name)} status` fails")

    def stop(self, name: str, force: bool = False) -> None:
        _must([self._script(name), "stop"], f"{'force-' if force else ''}stopping service {name}")

    def active(self, name: str) -> bool:
        return _run([self._script(name), "status"], name, STATUS_TIMEOUT)[0] == 0

    def disable(self, name: str) -> str:
        self._script(name)
        links = list(Path("/etc").glob(f"rc[2345].d/S??{name}"))
        if not links:
            return f"{name}: not started at boot"
        _must(["update-rc.d", name, "disable"], f"disabling {name} at boot")
        return f"{name}: no longer started at boot (update-rc.d disable)"


def this_machine() -> ServicePort:
    """The service manager of this machine: systemd when it runs, else System V scripts."""
    return Systemd() if SYSTEMD_RUNNING.is_dir() else SysV()


def start_all(port: ServicePort, names: Sequence[str]) -> list[str]:
    """Start `names` in order (one already active is left alone); lines that say what was done.
    Stops at the first that fails (`ServiceError`): the later ones need the earlier ones."""
    done = []
    for name in names:
        if port.active(name):
            done.append(f"{name}: already active")
            continue
        port.start(name)
        done.append(f"{name}: started ({port.manager})")
    return done


def stop_all(port: ServicePort, names: Sequence[str], force: bool = False) -> list[str]:
    """Stop `names` in reverse order; every one is tried, the first failure is raised after."""
    done: list[str] = []
    failed: list[ServiceError] = []
    for name in reversed(names):
        try:
            if not force and not port.active(name):
                done.append(f"{name}: not running")
                continue
            port.stop(name, force)
            done.append(f"{name}: {'killed and ' if force else ''}stopped ({port.manager})")
        except ServiceError as e:
            failed.append(e)
    if failed:
        raise ServiceError("; ".join(str(e) for e in failed))
    return done
