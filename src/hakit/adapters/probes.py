"""Probes: what each kind of checker looks at, on this node. Effects only, no decisions.

`RealProbes.probe(checker, ctx)` runs one probe and says how it went in one sentence
(`(ok, detail)`); it never raises for a failure of the probed resource, and it never runs longer
than the checker's `timeout` (a program still running then is killed with its whole process
group). A custom checker in `stream` mode is a long-running program: `stream()` yields its
results as they come. The runner (daemon/checkers.py) schedules probes and feeds the results to
the pure checker machines; none of this runs in the heartbeat process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import signal
import socket
import struct
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from hakit.adapters.nodeapi import NodeApi, NodeUnreachable
from hakit.adapters.scripts import BASE_ENV
from hakit.adapters.services import INIT_D, SYSTEMD_RUNNING
from hakit.config.checkers import (
    CheckerBase,
    CustomChecker,
    HttpChecker,
    InterfaceChecker,
    ModuleChecker,
    PingChecker,
    ProcessChecker,
    TcpChecker,
    VipChecker,
)

ProbeResult = tuple[bool, str]
BODY_LIMIT = 65536
KILL_GRACE = 0.5


@dataclass(frozen=True)
class ProbeContext:
    """What probes need from the module and the daemon."""

    bin_dir: Path
    env: Mapping[str, str]  # the module scripts' environment (custom checkers)
    missing_vips: Callable[[], list[str]] = list  # VIPs of the module not on this node
    # module -> {node: (state, status)} as this node knows it; None: not installed here
    module_states: Callable[[str], dict[str, tuple[str, str]] | None] = lambda _: None
    log_dir: Path | None = None


class ProbePort(Protocol):
    async def probe(self, checker: CheckerBase, ctx: ProbeContext) -> ProbeResult: ...

    def stream(
        self, checker: CustomChecker, ctx: ProbeContext
    ) -> AsyncGenerator[ProbeResult, None]: ...


def _ms(start: float) -> str:
    return f"{(time.monotonic() - start) * 1000:.0f} ms"


class RealProbes:
    """The probes of a real node."""

    def __init__(self, proc: Path = Path("/proc"), sys_net: Path = Path("/sys/class/net")):
        self.proc = proc
        self.sys_net = sys_net

    async def probe(self, checker: CheckerBase, ctx: ProbeContext) -> ProbeResult:
        try:
            async with asyncio.timeout(checker.timeout):
                return await self._probe(checker, ctx)
        except TimeoutError:
            return False, f"{checker.describe()}: no answer within {checker.timeout:g} s"

    async def _probe(self, c: CheckerBase, ctx: ProbeContext) -> ProbeResult:
        if isinstance(c, TcpChecker):
            return await tcp(c.host, c.port)
        if isinstance(c, HttpChecker):
            return await http(c)
        if isinstance(c, PingChecker):
            return await ping(str(c.address), c.timeout)
        if isinstance(c, InterfaceChecker):
            return await asyncio.to_thread(interface, self.sys_net, c.interface)
        if isinstance(c, VipChecker):
            missing = await asyncio.to_thread(ctx.missing_vips)
            if missing:
                return False, f"VIP {', '.join(missing)} not on this node"
            return True, "every VIP present"
        if isinstance(c, ProcessChecker):
            if c.unit is not None:
                return await unit(c.unit, c.timeout)
            return await asyncio.to_thread(processes, self.proc, c)
        if isinstance(c, ModuleChecker) and c.cluster is not None:
            return await remote_module(c)
        if isinstance(c, ModuleChecker):
            return module_state(c, ctx.module_states(c.module))
        if isinstance(c, CustomChecker):
            return await program(c, ctx)
        raise TypeError(f"no probe for {type(c).__name__}")

    async def stream(
        self, checker: CustomChecker, ctx: ProbeContext
    ) -> AsyncGenerator[ProbeResult, None]:
        async for r in program_stream(checker, ctx):
            yield r


# --- the probes ----------------------------------------------------------------------------------


async def tcp(host: str, port: int) -> ProbeResult:
    start = time.monotonic()
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        why = os.strerror(e.errno) if e.errno else str(e)  # asyncio words it its own way
        return False, f"{why.lower()} on {host}:{port}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, f"{host}:{port} accepts connections ({_ms(start)})"


async def http(c: HttpChecker) -> ProbeResult:
    start = time.monotonic()
    try:
        async with (
            httpx.AsyncClient(verify=c.verify_tls, timeout=c.timeout, trust_env=False) as client,
            client.stream("GET", c.url) as r,
        ):
            body = b""
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) >= BODY_LIMIT:
                    break
    except httpx.HTTPError as e:
        return False, f"{c.url}: {type(e).__name__}: {e}"
    if r.status_code not in c.status:
        return False, f"{c.url} answered {r.status_code} (expected {_codes(c.status)})"
    if c.body is not None and not re.search(c.body, body.decode(errors="replace")):
        return False, f"{c.url} answered {r.status_code} without /{c.body}/ in its body"
    return True, f"{c.url} answered {r.status_code} ({_ms(start)})"


def _codes(codes: tuple[int, ...]) -> str:
    return " or ".join(str(s) for s in codes)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


_ping_seq = 0


async def ping(address: str, limit: float) -> ProbeResult:
    """One ICMP echo (raw socket: the daemon runs as root) and its reply."""
    global _ping_seq
    _ping_seq = (_ping_seq + 1) & 0xFFFF
    ident, seq = os.getpid() & 0xFFFF, _ping_seq
    v6 = ipaddress.ip_address(address).version == 6
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    req_type, rep_type = (128, 129) if v6 else (8, 0)
    payload = struct.pack("!d", time.monotonic())
    header = struct.pack("!BBHHH", req_type, 0, 0, ident, seq)
    packet = header + payload
    if not v6:  # the kernel computes ICMPv6 checksums itself
        packet = struct.pack("!BBHHH", req_type, 0, _checksum(packet), ident, seq) + payload
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    try:
        sock = socket.socket(family, socket.SOCK_RAW, proto)
    except OSError as e:
        return False, f"ping {address}: cannot open a raw socket ({e.strerror})"
    with sock:
        sock.setblocking(False)
        try:
            await loop.sock_sendto(sock, packet, (address, 0))
            while (left := limit - (time.monotonic() - start)) > 0:
                try:
                    data, src = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), left)
                except TimeoutError:
                    break
                icmp = data if v6 else data[(data[0] & 0x0F) * 4 :]
                if len(icmp) < 8 or src[0] != address:
                    continue
                t, _, _, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
                if t == rep_type and rid == ident and rseq == seq:
                    return True, f"{address} answers ping ({_ms(start)})"
        except OSError as e:
            return False, f"ping {address}: {e.strerror or e}"
    return False, f"no ping answer from {address} within {limit:g} s"


def interface(sys_net: Path, name: str) -> ProbeResult:
    d = sys_net / name
    try:
        oper = (d / "operstate").read_text().strip()
    except OSError:
        return False, f"no interface {name}"
    try:
        carrier = (d / "carrier").read_text().strip() == "1"
    except OSError:  # an interface that is administratively down has no carrier file value
        carrier = False
    if oper in ("up", "unknown") and carrier:
        return True, f"{name} is up with its link"
    if not carrier and oper != "down":
        return False, f"{name} has no link (no carrier, {oper})"
    return False, f"{name} is {oper}"


def _own_netns(proc: Path) -> str:
    try:
        return os.readlink(proc / "self" / "ns" / "net")
    except OSError:
        return ""


def processes(proc: Path, c: ProcessChecker) -> ProbeResult:
    """Count matching processes of this node (same network namespace as the daemon; zombies
    do not count)."""
    netns = _own_netns(proc)
    pattern = re.compile(c.regex) if c.regex is not None else None
    found: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if netns and os.readlink(entry / "ns" / "net") != netns:
                continue
            stat = (entry / "stat").read_text()
            if stat[stat.rindex(")") + 2] == "Z":
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            comm = (entry / "comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or a kernel thread
        args = [a.decode(errors="replace") for a in argv if a]
        if not args:
            continue  # kernel threads have no command line
        if pattern is not None:
            if pattern.search(" ".join(args)):
                found.append(int(entry.name))
        elif c.process is not None and (
            c.process in (comm, os.path.basename(args[0]))
            or (len(c.process) > 15 and comm == c.process[:15])  # comm is cut at 15 bytes
        ):
            found.append(int(entry.name))
    n = len(found)
    what = c.process if c.process is not None else f"/{c.regex}/"
    if n < c.min:
        return False, f"{n} process{'es' if n != 1 else ''} {what} (at least {c.min} expected)"
    if c.max is not None and n > c.max:
        return False, f"{n} processes {what} (at most {c.max} expected)"
    return True, f"{n} process{'es' if n != 1 else ''} {what}"


async def unit(name: str, limit: float) -> ProbeResult:
    """A systemd unit is active; where systemd does not run, its `/etc/init.d` script's
    `status` exits 0 (the same fallback as `services:`, adapters/services.py)."""
    if not SYSTEMD_RUNNING.is_dir():
        code, out = await run_bounded([str(INIT_D / name), "status"], {}, None, limit)
        if code == 0:
            return True, f"service {name} is running (init.d status)"
        last = out.strip().splitlines()[-1] if out.strip() else "no output"
        return False, f"service {name} is not running (init.d status: {last})"
    code, out = await run_bounded(["systemctl", "is-active", name], {}, None, limit)
    state = out.strip().splitlines()[-1] if out.strip() else "no answer"
    if code == 0:
        return True, f"unit {name} is {state}"
    if code is None:
        return False, f"unit {name}: {out}"
    return False, f"unit {name} is {state}"


def module_state(c: ModuleChecker, states: dict[str, tuple[str, str]] | None) -> ProbeResult:
    if states is None:
        return False, f"module {c.module} is not installed on this node"
    nodes = [c.node] if c.node is not None else sorted(states)
    seen = []
    for n in nodes:
        state, status = states.get(n, ("STOP", "not-ready"))
        if state in c.states and status == "ready":
            return True, f"module {c.module} is {state} ready on {n}"
        seen.append(f"{state} {status} on {n}")
    return False, f"module {c.module} is {', '.join(seen) or 'not running anywhere'}"


async def remote_module(c: ModuleChecker) -> ProbeResult:
    """The module's state in another cluster: `GET /v1/state` of one of its nodes, over mutual
    TLS and signed with that cluster's secret (each node in turn)."""
    rc = c.cluster
    assert rc is not None
    try:
        secret = (await asyncio.to_thread(Path(rc.secret_file).read_bytes)).strip()
    except OSError as e:
        return False, f"cannot read {rc.secret_file}: {e.strerror}"
    errors = []
    for node, addr in rc.nodes.items():
        api = NodeApi(
            secret, rc.name, node, [str(addr)], rc.port, timeout=c.timeout, sender="checker"
        )
        try:
            r = await asyncio.to_thread(api.request, "GET", "/v1/state")
        except NodeUnreachable as e:
            errors.extend(e.errors)
            continue
        if r.status_code != 200:
            errors.append(f"{addr}: HTTP {r.status_code}")
            continue
        mod = r.json().get("modules", {}).get(c.module)
        if mod is None:
            return False, f"module {c.module} is not installed on {node} (cluster {rc.name})"
        states = {n: (v.get("state", "STOP"), v.get("status", "")) for n, v in mod["nodes"].items()}
        ok, detail = module_state(c, states)
        return ok, f"{detail} (cluster {rc.name})"
    return False, f"cluster {rc.name} does not answer ({'; '.join(errors)})"


# --- programs ----------------------------------------------------------------------------------


def _argv(c: CustomChecker, ctx: ProbeContext) -> list[str]:
    """A relative program is the module's own (in `bin/`) if it is there, else found on PATH."""
    prog = c.command[0]
    if "/" not in prog and (ctx.bin_dir / prog).exists():
        prog = str(ctx.bin_dir / prog)
    return [prog, *c.command[1:]]


def _env(ctx: ProbeContext) -> dict[str, str]:
    return {**BASE_ENV, **ctx.env}


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), KILL_GRACE)
            break
        except TimeoutError:
            continue
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # what it left in its group


async def run_bounded(
    argv: list[str], env: Mapping[str, str], cwd: Path | None, limit: float
) -> tuple[int | None, str]:
    """Run a program in its own process group, at most `limit` s; (exit status or None, its
    output or why it did not run). Its whole group is killed when it is late."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**BASE_ENV, **env},
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as e:
        return None, f"cannot run {argv[0]}: {e.strerror or e}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit)
    except (TimeoutError, asyncio.CancelledError) as e:
        await _kill_group(proc)
        if isinstance(e, asyncio.CancelledError):
            raise
        return None, f"{os.path.basename(argv[0])} still running after {limit:g} s: killed"
    return proc.returncode, out.decode(errors="replace")[-2000:]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


async def program(c: CustomChecker, ctx: ProbeContext) -> ProbeResult:
    argv = _argv(c, ctx)
    start = time.monotonic()
    # leave 10 % of the timeout to kill it: the probe as a whole stays within `timeout`
    code, out = await run_bounded(argv, _env(ctx), ctx.bin_dir, c.timeout * 0.9)
    name = os.path.basename(argv[0])
    said = _last_line(out)
    if code is None:
        return False, out if not said else f"{out}; last said: {said}"
    detail = f"{name} exited {code} ({_ms(start)})" + (f": {said}" if said else "")
    return code == 0, detail


async def program_stream(c: CustomChecker, ctx: ProbeContext) -> AsyncGenerator[ProbeResult, None]:
    """Start the program and yield a result for each `up`/`down` line it prints; a silence of
    `timeout` yields a failure; its exit yields a failure and ends the stream (the runner starts
    it again after `interval`)."""
    argv = _argv(c, ctx)
    name = os.path.basename(argv[0])
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=_env(ctx),
            cwd=ctx.bin_dir,
            start_new_session=True,
        )
    except OSError as e:
        yield False, f"cannot run {argv[0]}: {e.strerror or e}"
        return
    assert proc.stdout is not None
    try:
        while True:
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), c.timeout)
            except TimeoutError:
                yield False, f"{name} said nothing for {c.timeout:g} s"
                continue
            if not line:
                code = await proc.wait()
                yield False, f"{name} exited {code}"
                return
            text = line.decode(errors="replace").strip()
            word, _, rest = text.partition(" ")
            if word.lower() == "up":
                yield True, rest.strip() or f"{name} says up"
            elif word.lower() == "down":
                yield False, rest.strip() or f"{name} says down"
    finally:
        if proc.returncode is None:
            await _kill_group(proc)
