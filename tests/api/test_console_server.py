"""The console's HTTPS server on loopback: its self-signed certificate, its headers, and the
bounds it keeps before anybody authenticated (connections per address, request heads)."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from hakit.adapters.httpserver import BoundedH11, uvicorn_config
from hakit.adapters.tcp import listen
from hakit.console.server import PER_ADDRESS, ConsoleServer, ServeOptions, prepare
from hakit.console.store import ConsoleError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_insecure_http_only_on_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConsoleError, match="loopback"):
        prepare(ServeOptions(listen="0.0.0.0:7380", state=tmp_path, insecure_http=True))
    with pytest.raises(ConsoleError, match="HOST:PORT"):
        prepare(ServeOptions(listen="7380", state=tmp_path))


def test_https_and_bounds_before_authentication(tmp_path: Path) -> None:
    port = _free_port()
    server, sock, _console, url = prepare(
        ServeOptions(listen=f"127.0.0.1:{port}", state=tmp_path / "state")
    )
    assert url == f"https://127.0.0.1:{port}/"
    key = tmp_path / "state" / "console.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600

    async def scenario() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            async with httpx.AsyncClient(verify=False, base_url=url, trust_env=False) as c:
                r = await c.get("/login")
                assert r.status_code == 200
                assert "max-age" in r.headers["strict-transport-security"]
                assert (await c.get("/api/me")).status_code == 401
            # PER_ADDRESS idle connections (no TLS handshake) hold every slot of 127.0.0.1
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(PER_ADDRESS)]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            start = time.monotonic()
            assert await asyncio.wait_for(reader.read(1), 3) == b""  # closed at accept
            assert time.monotonic() - start < 3
            writer.close()
            for _, w in idle:
                w.close()
            # once they are gone, a client is served again
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            deadline = time.monotonic() + 10
            while True:
                try:
                    async with httpx.AsyncClient(verify=ctx, base_url=url) as c:
                        assert (await c.get("/login")).status_code == 200
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline, "slots never given back"
                    await asyncio.sleep(0.1)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)

    asyncio.run(scenario())


class _QuickHead(BoundedH11):
    head_timeout = 0.5


def test_a_trickled_request_head_is_cut() -> None:
    """A client that sends its request head a byte at a time is cut at the head deadline
    (uvicorn alone would wait for ever: each byte restarts nothing but keeps it open)."""
    port = _free_port()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    server = ConsoleServer(uvicorn_config(app, None, _QuickHead))
    sock = listen("127.0.0.1", port)

    async def scenario() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            start = time.monotonic()
            closed = False
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                writer.write(bytes([byte]))
                try:
                    await writer.drain()
                    if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
                except ConnectionError:
                    closed = True
                    break
            assert closed, "the trickled head was never cut"
            assert 0.4 < time.monotonic() - start < 5
            writer.close()
            # a normal request on a new connection is answered
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(reader.readline(), 3)).startswith(b"HTTP/1.1 200")
            writer.close()
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
