"""Throwaway network namespaces for contract tests, and running code inside one.

`inside(ns)` moves only the calling thread into the namespace (setns) and back: sockets it opens
there, and threads it starts, belong to that namespace. Namespaces are named `hkt-<what>-<pid>-
<random>` and always deleted by the fixture that made them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def unavailable() -> str | None:
    """Why real network adapters cannot be tested here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, netlink, AF_PACKET sockets)"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    return None


def ip(*args: str, ns: str | None = None) -> str:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def ip_json(*args: str, ns: str | None = None) -> Any:
    return json.loads(ip("-j", *args, ns=ns) or "[]")


def new_name(what: str) -> str:
    return f"hkt-{what}-{os.getpid()}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def namespaces(*names: str) -> Iterator[None]:
    """Create the named namespaces (loopback up); delete them all afterwards, whatever happens."""
    made = []
    try:
        for name in names:
            ip("netns", "add", name)
            made.append(name)
            ip("link", "set", "lo", "up", ns=name)
        yield
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the body with this thread in network namespace `ns`."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)
