"""The health-probe endpoint (src/hakit/probe/): answers, refusals and limits, over real
loopback sockets; the manager that follows the modules' configurations."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from hakit.daemon.logs import Event
from hakit.probe.http import Limits, ProbeListener
from hakit.probe.manager import ProbeManager, listening_socket, verdict

ADDR = "127.0.0.1"


def status(kind: str = "mirror", state: str = "PRIM", st: str = "ready") -> dict[str, Any]:
    return {
        "node": "node1",
        "modules": {
            "web": {
                "kind": kind,
                "nodes": {"node1": {"state": state, "status": st, "reason": "secret path /x"}},
            }
        },
    }


@pytest.mark.parametrize(
    ("kind", "state", "st", "code"),
    [
        ("mirror", "PRIM", "ready", 200),
        ("mirror", "ALONE", "ready", 200),
        ("mirror", "ALONE", "transient", 503),
        ("mirror", "SECOND", "ready", 503),
        ("mirror", "UP", "ready", 503),
        ("farm", "UP", "ready", 200),
        ("farm", "UP", "not-ready", 503),
        ("farm", "PRIM", "ready", 503),
    ],
)
def test_verdict_is_200_only_where_the_node_serves(kind: str, state: str, st: str, code: int):
    got, body = verdict(status(kind, state, st), "web")
    assert got == code
    assert body == {"module": "web", "node": "node1", "state": state, "status": st}


def test_an_unknown_or_broken_module_is_503() -> None:
    assert verdict(status(), "other")[0] == 503
    broken = {"node": "node1", "modules": {"web": {"kind": "mirror", "nodes": {}, "error": "x"}}}
    assert verdict(broken, "web") == (
        503,
        {"module": "web", "node": "node1", "state": "STOP", "status": "not-ready"},
    )


# -- the listener over loopback ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def serving(
    test: Callable[[int, ProbeListener, dict[str, Any]], Awaitable[None]],
    limits: Limits | None = None,
    clock: Callable[[], float] | None = None,
) -> None:
    doc = status()
    sock = listening_socket(ADDR, 0)
    port = sock.getsockname()[1]
    listener = ProbeListener("/health", lambda: verdict(doc, "web"), limits or Limits())
    if clock is not None:
        listener = ProbeListener("/health", listener.verdict, listener.limits, clock)
    await listener.start([sock])
    try:
        await test(port, listener, doc)
    finally:
        await listener.close()


async def exchange(port: int, data: bytes, limit: float = 10.0) -> bytes:
    """Send `data`, read until the server closes (at most `limit` s: a test bound, not a
    threshold: the server closes long before)."""
    reader, writer = await asyncio.open_connection(ADDR, port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), limit)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    code = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return code, headers, body


GET = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def test_get_follows_the_state_and_reveals_only_the_verdict() -> None:
    async def test(port: int, _listener: ProbeListener, doc: dict[str, Any]) -> None:
        code, headers, body = parse(await exchange(port, GET))
        assert code == 200
        assert json.loads(body) == {
            "module": "web",
            "node": "node1",
            "state": "PRIM",
            "status": "ready",
        }
        assert headers["connection"] == "close"
        assert headers["content-type"] == "application/json"
        assert b"secret" not in body
        doc["modules"]["web"]["nodes"]["node1"]["state"] = "SECOND"
        code, _, body = parse(await exchange(port, b"GET /health?x=1 HTTP/1.0\r\n\r\n"))
        assert code == 503
        assert json.loads(body)["state"] == "SECOND"

    asyncio.run(serving(test))


def test_head_has_no_body_and_other_methods_and_paths_are_refused() -> None:
    async def test(port: int, listener: ProbeListener, _doc: dict[str, Any]) -> None:
        code, headers, body = parse(
            await exchange(port, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
        )
        assert (code, body) == (200, b"")
        assert int(headers["content-length"]) > 0
        code, headers, _ = parse(
            await exchange(
                port, b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            )
        )
        assert code == 405
        assert headers["allow"] == "GET, HEAD"
        assert parse(await exchange(port, b"GET /v1/state HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 404
        assert parse(await exchange(port, b"\x16\x03\x01garbage\r\n\r\n"))[0] == 400
        big = b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 8000 + b"\r\n\r\n"
        assert parse(await exchange(port, big))[0] == 431
        assert listener.counters.bad == 4
        assert parse(await exchange(port, GET))[0] == 200  # and it goes on answering

    asyncio.run(serving(test))


def test_a_slow_client_is_cut_off_and_others_are_answered_meanwhile() -> None:
    async def test(port: int, listener: ProbeListener, _doc: dict[str, Any]) -> None:
        reader, writer = await asyncio.open_connection(ADDR, port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finishes its head
        await writer.drain()
        assert parse(await exchange(port, GET))[0] == 200
        assert await asyncio.wait_for(reader.read(100), 10) == b""  # closed by the server
        writer.close()
        assert listener.counters.timed_out == 1

    asyncio.run(serving(test, Limits(request_time=0.3)))


def test_connections_beyond_the_limits_are_closed_at_once() -> None:
    async def test(port: int, listener: ProbeListener, _doc: dict[str, Any]) -> None:
        idle = [await asyncio.open_connection(ADDR, port) for _ in range(3)]
        await asyncio.sleep(0)
        # the fourth from this address is closed before a byte is read
        assert await exchange(port, GET) == b""
        assert listener.counters.refused >= 1
        for _, w in idle:
            w.close()
        for r, _ in idle:
            await asyncio.wait_for(r.read(100), 10)

        raw = b""
        for _ in range(200):  # the server notices the closes on its side
            raw = await exchange(port, GET)
            if raw:
                break
            await asyncio.sleep(0.02)
        assert parse(raw)[0] == 200

    asyncio.run(serving(test, Limits(per_address=3, request_time=30)))


def test_the_answer_rate_is_bounded() -> None:
    clock = Clock()

    async def test(port: int, listener: ProbeListener, _doc: dict[str, Any]) -> None:
        assert parse(await exchange(port, GET))[0] == 200
        assert parse(await exchange(port, GET))[0] == 200
        assert await exchange(port, GET) == b""  # no token left: closed unanswered
        clock.now += 1.0
        assert parse(await exchange(port, GET))[0] == 200
        assert listener.counters.refused == 1

    asyncio.run(serving(test, Limits(rate=2.0), clock))


# -- the manager ---------------------------------------------------------------------------------


def module_status(port: int, bind: str = ADDR) -> dict[str, Any]:
    doc = status()
    doc["modules"]["web"]["health_probe"] = {"port": port, "bind": [bind], "path": "/health"}
    return doc


def free_port() -> int:
    with socket.socket() as s:
        s.bind((ADDR, 0))
        return int(s.getsockname()[1])


def test_the_manager_follows_the_modules_and_reports_a_taken_port() -> None:
    events: list[Event] = []

    async def main() -> None:
        port = free_port()
        doc = module_status(port)
        mgr = ProbeManager(lambda: doc, events.append)
        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind((ADDR, port))
        holder.listen(1)
        await mgr.reconcile(doc)
        await mgr.reconcile(doc)  # reported once, retried at every pass
        [err] = [e for e in events if e.kind == "module-error"]
        assert err.module == "web"
        assert (
            f"web: health probe cannot listen on {ADDR} port {port} (GET /health): EADDRINUSE"
            in (err.message)
        )
        holder.close()
        await mgr.reconcile(doc)
        assert (
            events[-1].message == f"web: health probe listening on {ADDR} port {port} (GET /health)"
        )
        assert parse(await exchange(port, GET))[0] == 200
        del doc["modules"]["web"]
        await mgr.reconcile(doc)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(ADDR, port)

    asyncio.run(main())


def test_the_manager_never_raises_on_a_broken_status() -> None:
    calls = 0

    def broken() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 3:
            mgr.close()
        raise RuntimeError("status failed")

    mgr = ProbeManager(broken, lambda _: None, every=0.01)

    async def main() -> None:
        await asyncio.wait_for(mgr.run(), 30)

    asyncio.run(main())
    assert calls == 3
