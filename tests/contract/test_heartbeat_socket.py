"""The heartbeat socket is exclusive: a local non-root user can neither share it nor shadow it,
and a port taken before hakit binds it is refused with the holder named."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

from hakit.adapters.udp import PortTaken, open_heartbeat_socket
from hakit.waiting import wait_until

NOBODY = 65534
# the attacker's interpreter: one that uid 65534 may run (not a virtualenv under /root)
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a uid 65534 process")

TRY_BINDS = """
import socket, sys
port = int(sys.argv[1])
for fam, addr, opts in [
    (4, "127.0.0.1", ()), (4, "0.0.0.0", ()), (4, "127.0.0.1", ("ra",)), (4, "0.0.0.0", ("ra",)),
    (4, "127.0.0.1", ("rp",)), (4, "0.0.0.0", ("ra", "rp")), (6, "::", ()), (6, "::", ("ra", "rp")),
    (4, "0.0.0.0", ("ra", "dev")),
]:
    s = socket.socket(socket.AF_INET6 if fam == 6 else socket.AF_INET, socket.SOCK_DGRAM)
    if "ra" in opts: s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if "rp" in opts: s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if "dev" in opts: s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
    try:
        s.bind((addr, port))
        print("BOUND", addr, *opts)
    except OSError as e:
        print("refused", addr, *opts, e.strerror)
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_non_root_process_cannot_bind_the_heartbeat_port_in_any_way() -> None:
    port = free_port()
    sock = open_heartbeat_socket("127.0.0.1", port)
    try:
        r = subprocess.run(
            [PYTHON, "-c", TRY_BINDS, str(port)],
            user=NOBODY,
            group=NOBODY,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        lines = r.stdout.splitlines()
        assert len(lines) == 9, r.stdout + r.stderr
        assert not [ln for ln in lines if ln.startswith("BOUND")], r.stdout
        # and the datagrams still reach hakit's socket
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.sendto(b"hb", ("127.0.0.1", port))
        sock.setblocking(True)
        sock.settimeout(5)
        assert sock.recv(10) == b"hb"
    finally:
        sock.close()


def test_a_port_taken_before_hakit_is_refused_naming_the_holder() -> None:
    port = free_port()
    holder = subprocess.Popen(
        [
            PYTHON,
            "-c",
            textwrap.dedent("""
                import socket, sys
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", int(sys.argv[1])))
                print("bound", flush=True)
                sys.stdin.read()
            """),
            str(port),
        ],
        user=NOBODY,
        group=NOBODY,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "bound\n"
        with pytest.raises(PortTaken) as e:
            open_heartbeat_socket("127.0.0.1", port)
        msg = str(e.value)
        assert f"cannot bind 127.0.0.1:{port}/udp: address already in use" in msg
        assert f"pid {holder.pid} (python" in msg
        assert "uid 65534) on 0.0.0.0" in msg
    finally:
        holder.kill()
        holder.wait(10)
        for pipe in (holder.stdin, holder.stdout):
            if pipe is not None:
                pipe.close()
    # once the holder is gone the port binds
    sock = wait_until(lambda: _try_bind(port), 5, "the port free again")
    assert sock is not None
    sock.close()


def _try_bind(port: int) -> socket.socket | None:
    try:
        return open_heartbeat_socket("127.0.0.1", port)
    except PortTaken:
        return None
