"""The lab's delay proxy (`hakit.lab.delay`): every byte through, in order, each way later by
the delay asked for (a lower bound: a loaded machine only adds to it)."""

from __future__ import annotations

import asyncio
import os
import statistics
import time

from hakit.lab.delay import DelayProxy

DELAY = 0.03


async def echo_tcp() -> asyncio.Server:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


def test_tcp_through_the_proxy_is_whole_in_order_and_delayed() -> None:
    async def main() -> tuple[bytes, bytes, list[float]]:
        server = await echo_tcp()
        port = server.sockets[0].getsockname()[1]
        proxy = DelayProxy(("127.0.0.1", 0), ("127.0.0.1", port), DELAY)
        await proxy.start()
        try:
            r, w = await asyncio.open_connection(*proxy.address)
            rtts = []
            for i in range(5):
                start = time.monotonic()
                w.write(b"ping %d\n" % i)
                await w.drain()
                assert await r.readline() == b"ping %d\n" % i
                rtts.append(time.monotonic() - start)
            blob = os.urandom(3 << 20)
            w.write(blob)
            await w.drain()
            got = await asyncio.wait_for(r.readexactly(len(blob)), 60)
            w.close()
            await w.wait_closed()
            return blob, got, rtts
        finally:
            await proxy.close()
            server.close()
            await server.wait_closed()

    blob, got, rtts = asyncio.run(main())
    assert got == blob
    assert min(rtts) >= 2 * DELAY


def test_udp_through_the_proxy_comes_back_in_order_and_delayed() -> None:
    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.t.sendto(data, addr)  # type: ignore[attr-defined]

    class Client(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.got: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.got.put_nowait((data, time.monotonic()))

    async def main() -> tuple[list[bytes], list[float]]:
        loop = asyncio.get_running_loop()
        echo, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        proxy = DelayProxy(
            ("127.0.0.1", 0), echo.get_extra_info("sockname")[:2], DELAY, protocol="udp"
        )
        await proxy.start()
        client = Client()
        t, _ = await loop.create_datagram_endpoint(lambda: client, local_addr=("127.0.0.1", 0))
        try:
            sent = {}
            for i in range(20):
                sent[b"%d" % i] = time.monotonic()
                t.sendto(b"%d" % i, proxy.address)
            order, rtts = [], []
            for _ in range(20):
                data, at = await asyncio.wait_for(client.got.get(), 30)
                order.append(data)
                rtts.append(at - sent[data])
            return order, rtts
        finally:
            t.close()
            await proxy.close()
            echo.close()

    order, rtts = asyncio.run(main())
    assert order == [b"%d" % i for i in range(20)]
    assert min(rtts) >= 2 * DELAY
    assert statistics.median(rtts) >= 2 * DELAY
