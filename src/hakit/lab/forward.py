"""A TCP forwarder from this machine's loopback into a lab host: how a browser on the machine
reaches the console that `hakit lab demo --console` runs on a lab client.

    python -m hakit.lab.forward NETNS_FILE LISTEN_PORT TARGET_HOST TARGET_PORT

It binds 127.0.0.1:LISTEN_PORT in the namespace it starts in, then enters the lab host's network
namespace (NETNS_FILE, e.g. /run/netns/hk.demo.client1), so every connection it makes is made
from inside the lab: nothing of the lab appears in the machine's own network. Once in the lab's
namespace the process is one of the lab's: `hakit lab down` ends it. Bounded: at most 64
connections at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import sys

CLONE_NEWNET = 0x40000000
MAX_CONNECTIONS = 64


def enter_netns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


async def serve(listener: socket.socket, host: str, port: int) -> None:
    slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if slots.locked():
            writer.close()
            return
        async with slots:
            try:
                up_r, up_w = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            except (OSError, TimeoutError):
                writer.close()
                return
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_pipe(reader, up_w))
                tg.create_task(_pipe(up_r, writer))

    server = await asyncio.start_server(one, sock=listener)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    netns, listen_port, host, port = argv[1], int(argv[2]), argv[3], int(argv[4])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listen_port))
    listener.listen(64)
    enter_netns(netns)
    asyncio.run(serve(listener, host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
