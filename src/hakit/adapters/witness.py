"""The witness client used by node daemons: one UDP request, the first valid answer wins.

`WitnessPort` is the port the mirror state machine talks to; `WitnessClient` is the real
adapter (UDP to every configured witness address at once), `hakit.testing.witness` the
in-memory fake, both held to the same contract tests (tests/contract/test_witness_client.py).

What a node may believe: a granted `acquire`/`renew` holds until `deadline`, the monotonic time
at which the request was *sent* plus the ttl. The witness counts the same ttl from the moment it
received the request, which is later: the node's deadline always comes first, whatever the
network delay. The node must stop the module within its grace after that deadline if it could
not renew; the witness gives the lease to another node only after the holder's expiry + grace.

The client also remembers its own deadline per module (`LeaseMemory`), which makes two mistakes
of a caller harmless:
- a `renew` once the client's own deadline has passed is sent as `acquire`: after a witness
  restart, `renew` of a lease nobody holds is granted at once (the witness must trust the node
  that says it held it), which is only safe while that node's lease has not run out;
- the answer to a `renew` that arrives after the deadline that was current when it was sent is
  ignored (a later retransmission, sent as `acquire`, may still be answered): a renewal delayed
  in the network for longer than the lease cannot extend it across a witness restart;
- the answer to a request sent before a `release` of the same module is ignored: the lease it
  granted was given back since;
- a `query` grants nothing: its deadline is that of the lease the client holds, if the witness
  confirms it (the witness may not have received our `release` yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hakit.wire.heartbeat import make_boot_id
from hakit.wire.witness import (
    DecodeError,
    Op,
    Request,
    decode_reply,
    derive_key,
    encode_request,
)

ROUNDS = 4  # sends per request: at 0, timeout/4, timeout/2 and 3·timeout/4
RECV_BATCH = 32  # datagrams read per wake-up (bounded work in the reader callback)
RECV_SIZE = 2048


@dataclass(frozen=True)
class WitnessReply:
    granted: bool
    holder: str  # "" if none
    remaining: float  # witness-side remaining lease, s
    reason: str
    deadline: float  # client-side conservative end of the lease: monotonic at SEND + ttl, or 0.0
    # (for a `query`: the end of the lease this client was granted, if the witness confirms it)


class WitnessPort(Protocol):
    async def request(
        self,
        op: str,
        module: str,
        ttl: float,
        grace: float,
        timeout: float,  # noqa: ASYNC109 - the retransmission schedule is built from it
        *,
        alone: bool = False,
        force: bool = False,
    ) -> WitnessReply | None:
        """Ask the witness; op in {"acquire", "renew", "release", "query"}.

        `alone`: this node serves (or asks to serve) the module without a ready secondary,
        `force`: the operator forced it primary (see `hakit.wire.witness.Request`).
        None means no valid answer within `timeout` seconds (witness down, unreachable, or
        refusing our datagrams): the caller must then assume it holds nothing beyond the
        deadline it already has.
        """
        ...


@dataclass(frozen=True)
class Sent:
    """One request as sent: what to check its answer against."""

    op: Op  # as sent on the wire (a late `renew` goes as `acquire`)
    at: float  # monotonic time of sending
    held_until: float  # the client's deadline for the module when it was sent
    epoch: int  # releases of the module sent before it


class LeaseMemory:
    """The client's own view of its leases: the deadline of its last grant, per module.

    Shared by the real client and the fake so both apply the same rules (see module docstring).
    """

    def __init__(self) -> None:
        self._deadlines: dict[str, float] = {}
        self._epochs: dict[str, int] = {}

    def deadline(self, module: str) -> float:
        return self._deadlines.get(module, 0.0)

    def send(self, asked: Op, module: str, now: float) -> Sent:
        """Record a request about to be sent at monotonic `now`; returns what to send."""
        held = self.deadline(module)
        op = Op.ACQUIRE if asked is Op.RENEW and now >= held else asked
        if op is Op.RELEASE:  # the caller stopped the module before giving the lease back
            self._deadlines.pop(module, None)
            self._epochs[module] = self._epochs.get(module, 0) + 1
        return Sent(op, now, held, self._epochs.get(module, 0))

    def trusts(self, sent: Sent, module: str, now: float) -> bool:
        """May an answer to `sent` received at `now` be believed?

        Not the answer to a `renew` arriving after the deadline it was meant to extend, nor
        the answer to a request sent before a later `release` (the lease it granted was given
        back since).
        """
        if sent.op is not Op.RELEASE and sent.epoch != self._epochs.get(module, 0):
            return False
        return sent.op is not Op.RENEW or now < sent.held_until

    def answer(self, sent: Sent, module: str, granted: bool, remaining: float, ttl: float) -> float:
        """Record a believed answer; returns its client-side deadline (0.0 if it grants none)."""
        if sent.op in (Op.ACQUIRE, Op.RENEW):
            if not granted:
                self._deadlines.pop(module, None)
                return 0.0
            deadline = sent.at + min(ttl, remaining)
            self._deadlines[module] = max(self.deadline(module), deadline)
            return deadline
        if sent.op is Op.QUERY and granted:
            # The witness confirms we hold it. A query grants nothing: it never reaches past
            # what our own grants gave us (our release may be on its way to the witness).
            return min(sent.at + remaining, self.deadline(module))
        return 0.0


def _family(host: str) -> socket.AddressFamily:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"witness address {host!r} is not an IP address") from None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


class WitnessClient:
    """The real `WitnessPort`: UDP requests to every address of the witness at once.

    `key_secret` is the raw cluster secret (`ClusterFile.secret`); the witness key is derived
    from it. `boot_id` orders this client's lives for the witness's replay protection (default:
    now + random, like the heartbeat's); sequence numbers start from the wall clock in µs, so a
    new client reusing a boot id still counts upwards. One client per node serves all modules;
    concurrent requests are fine.
    """

    def __init__(
        self,
        cluster: str,
        node: str,
        key_secret: bytes,
        addresses: Sequence[tuple[str, int]],
        boot_id: bytes | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("a witness client needs at least one witness address")
        self.cluster = cluster
        self.node = node
        self.addresses = [(str(h), int(p)) for h, p in addresses]
        self._families = {_family(h) for h, _ in self.addresses}
        self._key = derive_key(key_secret, cluster)
        self._boot = boot_id or make_boot_id(time.time_ns(), os.urandom(8))
        self._seq = time.time_ns() // 1000
        self._memory = LeaseMemory()
        self._closed = False

    @property
    def boot_id(self) -> bytes:
        return self._boot

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _open(self) -> dict[socket.AddressFamily, socket.socket]:
        socks: dict[socket.AddressFamily, socket.socket] = {}
        for family in self._families:
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
            except OSError:
                continue
            sock.setblocking(False)
            socks[family] = sock
        return socks

    async def request(
        self,
        op: str,
        module: str,
        ttl: float,
        grace: float,
        timeout: float,  # noqa: ASYNC109 - the retransmission schedule is built from it
        *,
        alone: bool = False,
        force: bool = False,
    ) -> WitnessReply | None:
        """Send to every address at once, again every timeout/4; the first valid answer wins.

        A fresh socket (ephemeral port) per request; a fresh sequence number per round, so a
        round whose answer was lost is not taken for a replay. Network errors are not raised:
        they end in None.
        """
        if self._closed:
            raise RuntimeError("WitnessClient.request after close()")
        asked = Op(op)  # ValueError: a caller's bug, not a network error
        loop = asyncio.get_running_loop()
        end = time.monotonic() + timeout
        socks = self._open()
        if not socks:
            return None
        found: asyncio.Future[WitnessReply] = loop.create_future()
        sent: dict[int, Sent] = {}

        def readable(sock: socket.socket) -> None:
            for _ in range(RECV_BATCH):
                try:
                    data = sock.recv(RECV_SIZE)
                except OSError:  # BlockingIOError: drained; others: nothing useful to read
                    return
                if found.done():
                    continue
                reply = self._match(data, module, ttl, sent)
                if reply is not None:
                    found.set_result(reply)

        for sock in socks.values():
            loop.add_reader(sock.fileno(), readable, sock)
        try:
            for n in range(ROUNDS):
                now = time.monotonic()
                if now >= end:
                    break
                self._send(asked, module, (ttl, grace, alone, force), now, socks, sent)
                until = end if n == ROUNDS - 1 else min(end, now + timeout / ROUNDS)
                done, _ = await asyncio.wait({found}, timeout=max(0.0, until - time.monotonic()))
                if done:
                    return found.result()
            return found.result() if found.done() else None
        finally:
            for sock in socks.values():
                loop.remove_reader(sock.fileno())
                sock.close()
            if not found.done():
                found.cancel()

    def _send(
        self,
        asked: Op,
        module: str,
        terms: tuple[float, float, bool, bool],  # ttl, grace, alone, force
        now: float,
        socks: dict[socket.AddressFamily, socket.socket],
        sent: dict[int, Sent],
    ) -> None:
        ttl, grace, alone, force = terms
        record = self._memory.send(asked, module, now)
        seq = self._next_seq()
        sent[seq] = record
        req = Request(
            self.cluster,
            self.node,
            module,
            record.op,
            ttl,
            grace,
            self._boot,
            seq,
            time.time(),
            alone,
            force,
        )
        data = encode_request(req, self._key)
        for host, port in self.addresses:
            sock = socks.get(_family(host))
            if sock is None:
                continue
            with contextlib.suppress(OSError):  # unreachable now; other addresses, next round
                sock.sendto(data, (host, port))

    def _match(
        self, data: bytes, module: str, ttl: float, sent: dict[int, Sent]
    ) -> WitnessReply | None:
        """The answer to one of our rounds, or None for anything else (ignored)."""
        try:
            rep = decode_reply(data, self.cluster, self._key)
        except DecodeError:
            return None
        record = sent.get(rep.seq)
        if (
            record is None
            or rep.boot != self._boot
            or rep.node != self.node
            or rep.module != module
            or rep.op is not record.op
        ):
            return None
        now = time.monotonic()
        if not self._memory.trusts(record, module, now):
            return None
        deadline = self._memory.answer(record, module, rep.granted, rep.remaining, ttl)
        return WitnessReply(rep.granted, rep.holder, rep.remaining, rep.reason, deadline)

    def close(self) -> None:
        """No socket outlives a request; after close, `request` is a caller's bug."""
        self._closed = True
