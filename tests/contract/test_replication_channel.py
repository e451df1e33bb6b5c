"""The replication channel on loopback: authenticated, ordered, acknowledged per mode."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from hakit.replication.channel import ChannelError, Mode, Receiver, Sender, channel_key
from hakit.wire.replication import Kind, Op

KEY = channel_key(b"s" * 32, "demo")


def scenario(
    tmp_path: Path,
    body: Callable[[Sender, Receiver, asyncio.Server], Awaitable[None]],
    mode: Mode = Mode.SYNC,
    key: bytes = KEY,
) -> Receiver:
    replica = tmp_path / "replica"
    replica.mkdir(exist_ok=True)
    fd = os.open(replica, os.O_RDONLY | os.O_DIRECTORY)
    receiver = Receiver("web", KEY, fd, mode)

    async def main() -> None:
        server = await asyncio.start_server(receiver.serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            sender = await Sender.connect("127.0.0.1", port, "web", key, ack_timeout=2.0)
            async with asyncio.TaskGroup() as tg:
                reading = tg.create_task(sender.run())
                try:
                    await body(sender, receiver, server)
                finally:
                    sender.close()
                    reading.cancel()
        finally:
            server.close()
            await server.wait_closed()

    try:
        asyncio.run(main())
    finally:
        os.close(fd)
    return receiver


@pytest.mark.parametrize("mode", list(Mode))
def test_operations_are_applied_in_order_and_acknowledged(tmp_path: Path, mode: Mode) -> None:
    async def body(s: Sender, r: Receiver, server: asyncio.Server) -> None:
        assert await s.send(Op(Kind.CREATE, 0, (0o644,), (b"f",))) == 0
        # pipelined: 200 writes in flight at once, applied in sequence order
        results = await asyncio.gather(
            *(
                s.send(Op(Kind.WRITE, 0, (i * 10,), (b"f", f"{i:09d}\n".encode())))
                for i in range(200)
            )
        )
        assert results == [0] * 200
        assert await s.send(Op(Kind.FSYNC, 0, (0,), (b"f",))) == 0
        if mode is Mode.SYNC:
            assert r.applied == 202  # acknowledged means applied (and the fsync done)
        for _ in range(500):  # semi: acknowledged on receipt, applied right after
            if r.applied == 202:
                break
            await asyncio.sleep(0.01)

    r = scenario(tmp_path, body, mode)
    data = (tmp_path / "replica" / "f").read_text().splitlines()
    assert data == [f"{i:09d}" for i in range(200)]
    assert r.applied == 202


def test_a_failed_operation_reports_its_errno_in_sync_mode(tmp_path: Path) -> None:
    errors: list[tuple[Op, int]] = []

    async def body(s: Sender, r: Receiver, server: asyncio.Server) -> None:
        r.on_error = lambda op, err: errors.append((op, err))
        assert await s.send(Op(Kind.UNLINK, 0, (), (b"missing",))) == errno.ENOENT

    scenario(tmp_path, body)
    assert errors[0][1] == errno.ENOENT


def test_semi_mode_acknowledges_before_applying_and_reports_errors_aside(tmp_path: Path) -> None:
    errors: list[int] = []

    async def body(s: Sender, r: Receiver, server: asyncio.Server) -> None:
        r.on_error = lambda op, err: errors.append(err)
        assert await s.send(Op(Kind.UNLINK, 0, (), (b"missing",))) == 0
        for _ in range(100):
            if errors:
                break
            await asyncio.sleep(0.01)

    scenario(tmp_path, body, Mode.SEMI)
    assert errors == [errno.ENOENT]


def test_wrong_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ChannelError, match="refused module 'web'"):
        scenario(tmp_path, lambda s, r, srv: asyncio.sleep(0), key=channel_key(b"x" * 32, "demo"))


def test_a_silent_replica_fails_pending_writes_within_the_timeout() -> None:
    """A replica that authenticates, then never acknowledges (hung, or cut off)."""

    ended = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"c" * 32)
            n = (await reader.readexactly(1))[0]
            await reader.readexactly(n + 32)
            writer.write(b"Y")
            await writer.drain()
            while await reader.read(1 << 16):
                pass  # reads everything, answers nothing
        finally:
            writer.close()
            ended.set()

    async def main() -> float:
        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            s = await Sender.connect("127.0.0.1", port, "web", KEY, ack_timeout=0.3)
            async with asyncio.TaskGroup() as tg:
                reading = tg.create_task(s.run())
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                with pytest.raises(ChannelError, match=r"no acknowledgement within 0\.3 s"):
                    await s.send(Op(Kind.WRITE, 0, (0,), (b"f", b"x")))
                elapsed = loop.time() - t0
                with pytest.raises(ChannelError):  # and it stays broken
                    await s.send(Op(Kind.WRITE, 0, (0,), (b"f", b"y")))
                reading.cancel()
            await asyncio.wait_for(ended.wait(), 5)  # the replica saw the primary give up
            return elapsed
        finally:
            server.close()

    assert asyncio.run(main()) < 1.0
