"""A userspace delay proxy: a longer link between two sites, where the kernel has no netem.

`DelayProxy` listens on one address and forwards to another, holding every chunk (TCP) or
datagram (UDP) for `delay` seconds in each direction, so a round trip through it takes 2 ×
`delay` more. Order is kept (a FIFO per direction, each item released at its arrival time +
`delay`); TCP back-pressure is kept too: a direction reads nothing more while `window` bytes
are held in it. UDP replies go back to the sender the datagram came from, one upstream socket
per sender. Bounded: at most `max_flows` TCP connections and UDP senders at once.

For the lab and benchmarks only (`hakit.lab`), on addresses the lab made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Address = tuple[str, int]


@dataclass
class _Pipe:
    """One direction of one TCP connection: chunks released `delay` after they were read."""

    delay: float
    window: int
    clock: Callable[[], float]
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    held: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    async def read_from(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                while self.held >= self.window:
                    self.changed.clear()
                    await self.changed.wait()
                data = await reader.read(65536)
                if not data:
                    break
                self.queue.append((self.clock() + self.delay, data))
                self.held += len(data)
                self.changed.set()
        finally:
            self.closed = True
            self.changed.set()

    async def write_to(self, writer: asyncio.StreamWriter) -> None:
        while True:
            if not self.queue:
                if self.closed:
                    break
                self.changed.clear()
                await self.changed.wait()
                continue
            due, data = self.queue[0]
            wait = due - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self.queue.popleft()
            writer.write(data)
            await writer.drain()
            self.held -= len(data)
            self.changed.set()
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()


class _UdpFlow(asyncio.DatagramProtocol):
    """The upstream socket of one UDP sender: replies go back to it, delayed."""

    def __init__(self, proxy: DelayProxy, client: Address) -> None:
        self.proxy = proxy
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        front = self.proxy._front
        if front is not None:
            self.proxy._later(lambda: front.sendto(data, self.client))


class _UdpFront(asyncio.DatagramProtocol):
    def __init__(self, proxy: DelayProxy) -> None:
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.proxy._udp_in(data, (str(addr[0]), int(addr[1])))


@dataclass
class DelayProxy:
    listen: Address
    target: Address
    delay: float
    protocol: str = "tcp"  # "tcp" | "udp"
    window: int = 4 << 20  # bytes held per TCP direction before reading pauses
    max_flows: int = 256
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._front: asyncio.DatagramTransport | None = None
        self._flows: dict[Address, _UdpFlow] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = 0

    @property
    def address(self) -> Address:
        """Where it listens (with the port chosen by the kernel when `listen` asked for 0)."""
        if self._server is not None:
            host, port = self._server.sockets[0].getsockname()[:2]
            return str(host), int(port)
        if self._front is not None:
            host, port = self._front.get_extra_info("sockname")[:2]
            return str(host), int(port)
        return self.listen

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.protocol == "tcp":
            self._server = await asyncio.start_server(self._tcp, *self.listen)
        else:
            self._front, _ = await loop.create_datagram_endpoint(
                lambda: _UdpFront(self), local_addr=self.listen
            )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._front is not None:
            self._front.close()
        for f in self._flows.values():
            if f.transport is not None:
                f.transport.close()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _later(self, send: Callable[[], None]) -> None:
        """Run `send` `delay` seconds from now; the loop's timers keep the order."""
        asyncio.get_running_loop().call_later(self.delay, send)

    # -- TCP ------------------------------------------------------------------------------------

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self.max_flows:
            writer.transport.abort()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._open += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._open -= 1
            writer.transport.abort()
            return
        there = _Pipe(self.delay, self.window, self.clock)
        back = _Pipe(self.delay, self.window, self.clock)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(there.read_from(reader))
                tg.create_task(there.write_to(up_writer))
                tg.create_task(back.read_from(up_reader))
                tg.create_task(back.write_to(writer))
        except* (OSError, ConnectionError):
            pass
        finally:
            self._open -= 1
            writer.transport.abort()
            up_writer.transport.abort()

    # -- UDP ------------------------------------------------------------------------------------

    def _udp_in(self, data: bytes, client: Address) -> None:
        flow = self._flows.get(client)
        if flow is None:
            if len(self._flows) >= self.max_flows:
                return
            flow = self._flows[client] = _UdpFlow(self, client)
            self._spawn(self._connect(flow))

        def send(tries: int = 0) -> None:
            if flow.transport is not None:
                flow.transport.sendto(data, self.target)
            elif tries < 1000:  # its upstream socket is still being made (bounded wait)
                asyncio.get_running_loop().call_later(0.001, send, tries + 1)

        self._later(send)

    async def _connect(self, flow: _UdpFlow) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: flow, local_addr=(self.listen[0], 0))


# -- command line: several proxies in one process (the lab's slow links) ------------------------


def _forward(value: str) -> tuple[int, Address]:
    """`LPORT:HOST:PORT` → (LPORT, (HOST, PORT))."""
    try:
        lport, host, port = value.rsplit(":", 2)
        return int(lport), (host, int(port))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{value!r}: expected LPORT:HOST:PORT") from e


async def _serve(
    delay: float, tcp: list[tuple[int, Address]], udp: list[tuple[int, Address]]
) -> None:
    proxies = [DelayProxy(("0.0.0.0", lp), t, delay) for lp, t in tcp]
    proxies += [DelayProxy(("0.0.0.0", lp), t, delay, protocol="udp") for lp, t in udp]
    for p in proxies:
        await p.start()
    print(f"ready: {len(proxies)} proxies, {delay * 1000:g} ms each way", flush=True)
    try:
        await asyncio.Event().wait()  # until killed
    finally:
        for p in proxies:
            await p.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hakit.lab.delay",
        description="Delay proxies listening on 0.0.0.0, each forwarding to one target.",
    )
    parser.add_argument("--delay", type=float, required=True, help="seconds added each way")
    parser.add_argument(
        "--tcp", type=_forward, action="append", default=[], metavar="LPORT:HOST:PORT"
    )
    parser.add_argument(
        "--udp", type=_forward, action="append", default=[], metavar="LPORT:HOST:PORT"
    )
    args = parser.parse_args(argv)
    if args.delay < 0 or not (args.tcp or args.udp):
        parser.error("a delay >= 0 and at least one --tcp or --udp forward are needed")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.delay, args.tcp, args.udp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
