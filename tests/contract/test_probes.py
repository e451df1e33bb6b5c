"""The real probes against real resources of this machine (loopback only), and the fake
against the same contract: a probe says up or down in one sentence, within its timeout."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from hakit.adapters.probes import ProbeContext, ProbePort, RealProbes
from hakit.config.checkers import Checker, CheckerBase, CustomChecker
from hakit.testing.fakes import FakeProbes

ROOT = os.geteuid() == 0


def checker(**kw: Any) -> CheckerBase:
    base = {"name": "c", "interval": 1.0, "timeout": 1.0}
    return TypeAdapter(Checker).validate_python(base | kw)


def ctx(tmp: Path, **kw: Any) -> ProbeContext:
    return ProbeContext(bin_dir=tmp, env={"HAKIT_MODULE": "web"}, **kw)


def probe(p: ProbePort, c: CheckerBase, context: ProbeContext) -> tuple[bool, str, float]:
    start = time.monotonic()
    ok, detail = asyncio.run(p.probe(c, context))
    return ok, detail, time.monotonic() - start


@pytest.fixture
def listener() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tcp_up_and_down(tmp_path: Path, listener: int) -> None:
    ok, detail, _ = probe(RealProbes(), checker(type="tcp", port=listener), ctx(tmp_path))
    assert ok
    assert f"127.0.0.1:{listener} accepts connections" in detail
    port = free_port()
    ok, detail, _ = probe(RealProbes(), checker(type="tcp", port=port), ctx(tmp_path))
    assert not ok
    assert detail == f"connection refused on 127.0.0.1:{port}"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(2)
        code = 503 if self.path == "/down" else 200
        body = b"status: ok\n" if self.path != "/other" else b"status: starting\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def web() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


def test_http_status_body_and_timeout(tmp_path: Path, web: str) -> None:
    p, c = RealProbes(), ctx(tmp_path)
    ok, detail, _ = probe(p, checker(type="http", url=f"{web}/ok", body="status: ok"), c)
    assert ok, detail
    assert "answered 200" in detail
    ok, detail, _ = probe(p, checker(type="http", url=f"{web}/down"), c)
    assert not ok
    assert detail == f"{web}/down answered 503 (expected 200)"
    ok, detail, _ = probe(p, checker(type="http", url=f"{web}/other", body="status: ok"), c)
    assert not ok
    assert "without /status: ok/ in its body" in detail
    ok, detail, took = probe(p, checker(type="http", url=f"{web}/slow", timeout=0.3), c)
    assert not ok
    assert took < 1.5
    assert "no answer within 0.3 s" in detail or "Timeout" in detail


@pytest.mark.skipif(not ROOT, reason="ICMP needs a raw socket (root)")
def test_ping_loopback_and_a_silent_address(tmp_path: Path) -> None:
    ok, detail, _ = probe(RealProbes(), checker(type="ping", address="127.0.0.1"), ctx(tmp_path))
    assert ok, detail
    assert "127.0.0.1 answers ping" in detail
    ok, detail, _ = probe(RealProbes(), checker(type="ping", address="::1"), ctx(tmp_path))
    assert ok, detail
    # an address of the loopback range that nothing answers for: 127.0.0.1 answers for all of
    # 127/8, so use a documentation address through a namespace with only a down loopback
    ns = f"hk-probe-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        code = (
            "import asyncio,sys; from hakit.adapters.probes import ping; "
            "ok, d = asyncio.run(ping('127.0.0.1', 0.3)); print(ok, d); sys.exit(0 if ok else 1)"
        )
        r = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 1, r.stdout + r.stderr
        assert "127.0.0.1" in r.stdout
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


@pytest.mark.skipif(not ROOT or not shutil.which("ip"), reason="needs root and iproute2")
def test_interface_link_states_in_a_namespace_of_our_own() -> None:
    ns = f"hk-probe-if-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:

        def ip(*args: str) -> None:
            subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)

        ip("link", "add", "a0", "type", "veth", "peer", "name", "b0")
        ip("link", "set", "lo", "up")

        def look(name: str) -> tuple[bool, str]:
            code = (
                "import sys; from pathlib import Path; from hakit.adapters.probes import "
                "interface; ok, d = interface(Path('/sys/class/net'), sys.argv[1]); print(d); "
                "sys.exit(0 if ok else 1)"
            )
            r = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-c", code, name],
                capture_output=True,
                text=True,
                timeout=30,
            )
            return r.returncode == 0, r.stdout.strip()

        assert look("lo") == (True, "lo is up with its link")
        assert look("a0") == (False, "a0 is down")
        ip("link", "set", "a0", "up")  # its peer is down: no carrier
        ok, detail = look("a0")
        assert not ok
        assert detail.startswith("a0 has no link")
        ip("link", "set", "b0", "up")
        deadline = time.monotonic() + 5
        while look("a0")[0] is False and time.monotonic() < deadline:
            time.sleep(0.05)
        assert look("a0") == (True, "a0 is up with its link")
        assert look("nope0") == (False, "no interface nope0")
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


def test_process_by_name_regex_and_counts(tmp_path: Path) -> None:
    tag = f"hakit-probe-{os.getpid()}"
    script = tmp_path / tag
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    procs = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", tag])
        for _ in range(2)
    ]
    try:
        p, c = RealProbes(), ctx(tmp_path)
        ok, detail, _ = probe(p, checker(type="process", regex=f"time.sleep.* {tag}$"), c)
        assert ok, detail
        assert detail == f"2 processes /time.sleep.* {tag}$/"
        ok, detail, _ = probe(p, checker(type="process", regex=f" {tag}$", max=1), c)
        assert not ok
        assert detail == f"2 processes / {tag}$/ (at most 1 expected)"
        ok, detail, _ = probe(p, checker(type="process", regex=f" {tag}$", min=3), c)
        assert detail == f"2 processes / {tag}$/ (at least 3 expected)"
        name = os.path.basename(sys.executable)
        ok, detail, _ = probe(p, checker(type="process", process=name), c)
        assert ok, detail  # at least this test's own interpreter
        for pr in procs:
            pr.kill()
            pr.wait(10)
        ok, detail, _ = probe(p, checker(type="process", regex=f" {tag}$"), c)
        assert not ok
        assert detail == f"0 processes / {tag}$/ (at least 1 expected)"
    finally:
        for pr in procs:
            pr.kill()
            pr.wait(10)


def test_custom_program_exit_status_timeout_and_environment(tmp_path: Path) -> None:
    (tmp_path / "check_app").write_text(
        '#!/bin/sh\necho "checking $HAKIT_MODULE"\n[ "$1" = good ] && exit 0\necho broken; exit 3\n'
    )
    (tmp_path / "hang").write_text('#!/bin/sh\nsleep 30 &\necho $! > "$1"\nsleep 30\n')
    for f in ("check_app", "hang"):
        (tmp_path / f).chmod(0o755)
    p, c = RealProbes(), ctx(tmp_path)
    ok, detail, _ = probe(p, checker(type="custom", command=["check_app", "good"]), c)
    assert ok
    assert detail.startswith("check_app exited 0 (")
    assert detail.endswith("): checking web")
    ok, detail, _ = probe(p, checker(type="custom", command=["check_app", "bad"]), c)
    assert not ok
    assert detail.startswith("check_app exited 3 (")
    assert detail.endswith("): broken")
    pidfile = tmp_path / "child.pid"
    ok, detail, took = probe(
        p, checker(type="custom", command=["hang", str(pidfile)], timeout=0.5), c
    )
    assert not ok
    assert took < 2.0
    assert "hang still running after 0.45 s: killed" in detail
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        state = Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0]
        if state == "Z":
            break  # killed, waiting for its reaper
        time.sleep(0.02)
    else:
        assert not Path(f"/proc/{child}").exists(), "the program's child survived"
    ok, detail, _ = probe(p, checker(type="custom", command=["missing"]), c)
    assert not ok
    assert "cannot run" in detail


def test_custom_stream_program(tmp_path: Path) -> None:
    (tmp_path / "watch").write_text(
        '#!/bin/sh\necho "up fine"\necho "noise"\necho "down disk full"\nsleep 0.6\nexit 4\n'
    )
    (tmp_path / "watch").chmod(0o755)
    c = checker(type="custom", command=["watch"], mode="stream", timeout=0.4)
    assert isinstance(c, CustomChecker)

    async def collect() -> list[tuple[bool, str]]:
        out = []
        async with asyncio.timeout(10):
            async for r in RealProbes().stream(c, ctx(tmp_path)):
                out.append(r)
        return out

    assert asyncio.run(collect()) == [
        (True, "fine"),
        (False, "disk full"),
        (False, "watch said nothing for 0.4 s"),
        (False, "watch exited 4"),
    ]


def test_vip_and_module_probes_use_the_context(tmp_path: Path) -> None:
    missing: list[str] = []
    states: dict[str, dict[str, tuple[str, str]]] = {"db": {"n1": ("PRIM", "ready")}}
    c = ctx(tmp_path, missing_vips=lambda: list(missing), module_states=states.get)
    for p in (RealProbes(), FakeProbes()):
        assert probe(p, checker(type="vip"), c)[:2] == (True, "every VIP present")
    missing.append("10.0.0.100/24")
    ok, detail, _ = probe(RealProbes(), checker(type="vip"), c)
    assert (ok, detail) == (False, "VIP 10.0.0.100/24 not on this node")
    assert not probe(FakeProbes(), checker(type="vip"), c)[0]
    p = RealProbes()
    assert probe(p, checker(type="module", module="db"), c)[:2] == (
        True,
        "module db is PRIM ready on n1",
    )
    states["db"] = {"n1": ("WAIT", "not-ready"), "n2": ("SECOND", "ready")}
    assert probe(p, checker(type="module", module="db"), c)[:2] == (
        False,
        "module db is WAIT not-ready on n1, SECOND ready on n2",
    )
    assert probe(p, checker(type="module", module="other"), c)[:2] == (
        False,
        "module other is not installed on this node",
    )


@pytest.mark.parametrize("make", [RealProbes, FakeProbes])
def test_contract_a_probe_answers_a_sentence_within_its_timeout(
    make: type[ProbePort], tmp_path: Path, listener: int
) -> None:
    p = make()
    for c in (checker(type="tcp", port=listener, timeout=0.5), checker(type="vip")):
        ok, detail, took = probe(p, c, ctx(tmp_path))
        assert isinstance(ok, bool)
        assert detail
        assert took < 0.5 + 0.5


@pytest.mark.skipif(not ROOT, reason="ICMP needs a raw socket (root)")
def test_ping_alone_is_bounded_by_its_limit() -> None:
    """`ping()` is also called without the checker's timeout around it (the ping witness)."""
    from hakit.adapters.probes import ping

    ns = f"hk-probe-pl-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for args in (
            ["link", "add", "a0", "type", "veth", "peer", "name", "b0"],
            ["addr", "add", "10.254.0.1/24", "dev", "a0"],
            ["link", "set", "a0", "up"],
            ["link", "set", "b0", "up"],
        ):
            subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)
        # 10.254.0.2 is on the link but nobody has it: the echo leaves, no answer ever comes
        code = (
            "import asyncio,time; from hakit.adapters.probes import ping; t=time.monotonic(); "
            "ok, d = asyncio.run(ping('10.254.0.2', 0.3)); print(ok, round(time.monotonic()-t, 1))"
        )
        r = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
        )
        ok, took = r.stdout.split()
        assert ok == "False"
        assert 0.2 <= float(took) < 2.0
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
    assert asyncio.run(ping("127.0.0.1", 1.0))[0]
