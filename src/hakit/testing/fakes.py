"""In-memory fakes of the side-effect ports, held to the same contract tests as the real adapters.

`FakeVips` is a node's interfaces and their addresses (`VipPort`); `FakeScriptRunner` runs no
process and answers with scripted outcomes (`ScriptRunner`); `FakeProbes` answers checkers'
probes as the test says (`ProbePort`); `FakeCloud` and its `FakeMover`s are a cloud's API for
VIPs (`MoverPort`). They record what they were asked to do, so tests of the
daemon can assert the actions and their order.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hakit.adapters.farm import FarmPath, FarmPathError
from hakit.adapters.probes import ProbeContext, ProbeResult
from hakit.adapters.scripts import ScriptResult
from hakit.adapters.vip import IFNAMSIZ, InUse, Probe, Vip, VipError
from hakit.config.checkers import CheckerBase, CustomChecker, VipChecker

# -- virtual IPs -----------------------------------------------------------------------------

Address = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


@dataclass(frozen=True)
class Announcement:
    """One announcement frame as a neighbour sees it: on which link, from which MAC, for what."""

    interface: str
    mac: str  # "02:00:00:00:00:01"
    address: str


@dataclass
class FakeInterface:
    mac: str
    addresses: list[Address] = field(default_factory=list)
    ours: dict[Address, str] = field(default_factory=dict)  # added by hakit -> label


def _address(text: str) -> Address:
    net = ipaddress.ip_interface(text)
    return net.ip, net.network.prefixlen


class FakeVips:
    """A `VipPort` over in-memory interfaces, e.g. `FakeVips({"eth0": ["10.0.0.1/24"]})`.

    `remove_interface` makes an interface disappear (with its addresses); `fail_next` makes the
    next call of a method raise `VipError`. `announced` lists the frames sent, `calls` every call.
    `occupy(address, mac)`: another host on the links uses `address` (probes find it);
    `neighbour(address, mac)`: the neighbour table knows `address` at `mac`.
    """

    def __init__(self, interfaces: Mapping[str, Iterable[str]] | None = None) -> None:
        self.interfaces: dict[str, FakeInterface] = {}
        self.announced: list[Announcement] = []
        self.calls: list[tuple[str, Vip | None]] = []
        self._failures: dict[str, str] = {}
        self.elsewhere: dict[str, str] = {}  # address used by another host -> its MAC
        self.neighbours: dict[str, str] = {}  # address -> MAC
        self.probed: list[tuple[Vip, Probe]] = []
        for name, addresses in (interfaces or {}).items():
            self.add_interface(name, addresses)

    # -- the world ------------------------------------------------------------------------

    def add_interface(
        self, name: str, addresses: Iterable[str] = (), mac: str | None = None
    ) -> None:
        assert 0 < len(name) < IFNAMSIZ, name
        n = len(self.interfaces) + 1
        self.interfaces[name] = FakeInterface(
            mac=mac or f"02:00:00:00:{n >> 8:02x}:{n & 0xFF:02x}",
            addresses=[_address(a) for a in addresses],
        )

    def remove_interface(self, name: str) -> None:
        del self.interfaces[name]

    def mac(self, name: str) -> str:
        return self.interfaces[name].mac

    def occupy(self, address: str, mac: str) -> None:
        self.elsewhere[str(ipaddress.ip_address(address))] = mac

    def release(self, address: str) -> None:
        self.elsewhere.pop(str(ipaddress.ip_address(address)), None)

    def neighbour(self, address: str, mac: str) -> None:
        self.neighbours[str(ipaddress.ip_address(address))] = mac

    def addresses(self, name: str) -> list[str]:
        """The addresses of interface `name`, as "10.0.0.1/24"."""
        return [f"{ip}/{p}" for ip, p in self.interfaces[name].addresses]

    def fail_next(self, method: str, message: str) -> None:
        """The next call of `method` ("add", "remove", ...) raises `VipError(message)`."""
        self._failures[method] = message

    def _enter(self, method: str, vip: Vip | None) -> None:
        self.calls.append((method, vip))
        message = self._failures.pop(method, None)
        if message is not None:
            raise VipError(message)

    # -- VipPort --------------------------------------------------------------------------

    def interface_of(self, vip: Vip) -> str:
        self._enter("interface_of", vip)
        return self._resolve(vip)

    def _resolve(self, vip: Vip) -> str:
        if vip.interface is not None:
            if vip.interface not in self.interfaces:
                raise VipError(f"VIP {vip}: interface {vip.interface} does not exist on this node")
            return vip.interface
        local = ipaddress.ip_address(vip.local_address or "")
        holders = [
            name for name, i in self.interfaces.items() if any(ip == local for ip, _ in i.addresses)
        ]
        if not holders:
            raise VipError(f"VIP {vip}: no interface holds the local address {local}")
        if len(holders) > 1:
            raise VipError(
                f"VIP {vip}: the local address {local} is on {', '.join(holders)}: "
                "name the interface"
            )
        return holders[0]

    def add(self, vip: Vip) -> bool:
        self._enter("add", vip)
        name = self._resolve(vip)
        i = self.interfaces[name]
        key = (vip.ip, vip.prefixlen)
        if key in i.addresses:
            return False
        if vip.version == 6 and any(ip == vip.ip for ip, _ in i.addresses):
            raise VipError(f"cannot add VIP {vip} on {name}: already there with another prefix")
        i.addresses.append(key)
        i.ours[key] = vip.label if vip.version == 4 else "hakit"  # IPv6 has no labels
        return True

    def remove(self, vip: Vip) -> bool:
        self._enter("remove", vip)
        key = (vip.ip, vip.prefixlen)
        removed = False
        for i in self.interfaces.values():
            if key in i.addresses:
                i.addresses.remove(key)
                i.ours.pop(key, None)
                removed = True
        return removed

    def present(self, vip: Vip) -> bool:
        self._enter("present", vip)
        try:
            name = self._resolve(vip)
        except VipError:
            return False
        return (vip.ip, vip.prefixlen) in self.interfaces[name].addresses

    def held(self) -> list[Vip]:
        self._enter("held", None)
        return [
            Vip(str(ip), p, interface=name, label=label)
            for name, i in self.interfaces.items()
            for (ip, p), label in i.ours.items()
        ]

    def announce(self, vip: Vip, sender: bytes | None = None) -> None:
        self._enter("announce", vip)
        name = self._resolve(vip)
        own = self.interfaces[name].mac
        mac = own if sender is None or sender.hex(":") == own else f"{sender.hex(':')} from {own}"
        self.announced.append(Announcement(name, mac, vip.address))

    def probe(self, vip: Vip, probe: Probe) -> InUse | None:
        self._enter("probe", vip)
        if probe.count <= 0 or vip.version != 4:
            return None
        name = self._resolve(vip)
        if (vip.ip, vip.prefixlen) in self.interfaces[name].addresses:
            return None
        self.probed.append((vip, probe))
        mac = self.elsewhere.get(vip.address)
        if mac is None:
            return None
        peers = {self.neighbours.get(str(ipaddress.ip_address(a))): a for a in probe.peers}
        return InUse(mac, peers.get(mac))


# -- scripts ---------------------------------------------------------------------------------

Outcome = int | Literal["timeout", "missing", "not-executable"]
"""How a fake script ends: an exit code (0 = success), or one of the named ways."""


@dataclass(frozen=True)
class ScriptCall:
    name: str
    script: Path
    args: tuple[str, ...]
    env: Mapping[str, str]
    timeout: float
    log_dir: Path


Hook = Callable[[ScriptCall], Awaitable[Outcome | None]]


class FakeScriptRunner:
    """A `ScriptRunner` that runs nothing: each name answers with its scripted outcomes.

    `will("start_prim", 3)` makes the next run of start_prim exit 3; `will(name, 1, 0)` fails
    once then succeeds (the last outcome repeats). Unscripted names end with `default`. The
    optional async `hook` sees every call first (to block, to change the world the way the
    script would) and may return an outcome that overrides the scripted one.
    """

    def __init__(
        self,
        outcomes: Mapping[str, Outcome | Sequence[Outcome]] | None = None,
        default: Outcome = 0,
        hook: Hook | None = None,
    ) -> None:
        self.default: Outcome = default
        self.hook = hook
        self.calls: list[ScriptCall] = []
        self._outcomes: dict[str, list[Outcome]] = {}
        for name, o in (outcomes or {}).items():
            if isinstance(o, int | str):
                self.will(name, o)
            else:
                self.will(name, *o)

    def will(self, name: str, *outcomes: Outcome) -> None:
        assert outcomes, "say how the script ends"
        self._outcomes[name] = list(outcomes)

    def names(self) -> list[str]:
        """The names of the scripts run so far, in order."""
        return [c.name for c in self.calls]

    def _next(self, name: str) -> Outcome:
        queue = self._outcomes.get(name)
        if not queue:
            return self.default
        return queue.pop(0) if len(queue) > 1 else queue[0]

    async def run(
        self,
        name: str,
        script: Path,
        args: Sequence[str],
        env: Mapping[str, str],
        timeout: float,  # noqa: ASYNC109 - the script's limit (never waited for here)
        log_dir: Path,
    ) -> ScriptResult:
        call = ScriptCall(name, script, tuple(args), dict(env), timeout, log_dir)
        self.calls.append(call)
        outcome = self._next(name)
        if self.hook is not None:
            override = await self.hook(call)
            if override is not None:
                outcome = override
        argv = (str(script), *args)
        if outcome == "missing":
            return ScriptResult.absent(name, argv)
        if outcome == "not-executable":
            return ScriptResult.not_executable(name, argv)
        if outcome == "timeout":
            return ScriptResult.timeout(name, argv, -15, timeout, timeout, False, None)
        return ScriptResult.exited(name, argv, outcome, 0.0, None)


# -- farm data path ----------------------------------------------------------------------------


class FakeFarmPath:
    """In-memory `FarmPathPort`: the buckets each installed farm accepts."""

    def __init__(self) -> None:
        self.tables: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []

    def install(self, fp: FarmPath) -> None:
        self.calls.append(("install", fp.module))
        self.tables[fp.module] = 0

    def set_buckets(self, fp: FarmPath, owned: int) -> None:
        if fp.module not in self.tables:
            raise FarmPathError(f"farm {fp.module}: changing the buckets: no such table")
        self.calls.append(("buckets", fp.module))
        self.tables[fp.module] = owned

    def owned(self, module: str) -> int | None:
        return self.tables.get(module)

    def remove(self, fp: FarmPath) -> bool:
        self.calls.append(("remove", fp.module))
        return self.tables.pop(fp.module, None) is not None


class FakeProbes:
    """Probe results chosen by the test, per checker name (default: up). A `vip` checker with
    no result set looks at the module's VIPs through the context, like the real probe."""

    def __init__(self) -> None:
        self.results: dict[str, ProbeResult] = {}
        self.calls: Counter[str] = Counter()

    def set(self, name: str, ok: bool, detail: str = "") -> None:
        self.results[name] = (ok, detail or ("fake: up" if ok else "fake: down"))

    async def probe(self, checker: CheckerBase, ctx: ProbeContext) -> ProbeResult:
        self.calls[checker.name] += 1
        await asyncio.sleep(0)
        if checker.name not in self.results and isinstance(checker, VipChecker):
            missing = ctx.missing_vips()
            return (not missing, f"missing: {missing}" if missing else "every VIP present")
        return self.results.get(checker.name, (True, "fake: up"))

    async def stream(
        self, checker: CustomChecker, ctx: ProbeContext
    ) -> AsyncGenerator[ProbeResult, None]:
        while True:
            self.calls[checker.name] += 1
            yield self.results.get(checker.name, (True, "fake: up"))
            await asyncio.sleep(checker.interval)


# -- cloud VIP movers ------------------------------------------------------------------------


class FakeCloud:
    """The cloud's view of VIPs shared by the nodes' `FakeMover`s: address -> holder id.

    `fail(message)` makes every call fail with `VipError(message)` until `repair()`.
    """

    def __init__(self, holders: Mapping[str, str]) -> None:
        self.ids = dict(holders)  # node -> its holder id (an interface, a NIC, an instance)
        self.where: dict[str, str] = {}
        self.failure: str | None = None
        self.calls: list[tuple[str, str, str]] = []  # (node, call, address)

    def fail(self, message: str) -> None:
        self.failure = message

    def repair(self) -> None:
        self.failure = None

    def mover(self, node: str) -> FakeMover:
        return FakeMover(self, node)


@dataclass
class FakeMover:
    """A `MoverPort` over a `FakeCloud`."""

    cloud: FakeCloud
    node: str

    @property
    def mine(self) -> str:
        return self.cloud.ids[self.node]

    def node_of(self, holder: str) -> str | None:
        return next((n for n, i in self.cloud.ids.items() if i == holder), None)

    def _enter(self, call: str, vip: Vip) -> None:
        self.cloud.calls.append((self.node, call, vip.address))
        if self.cloud.failure is not None:
            raise VipError(self.cloud.failure)

    def holder(self, vip: Vip) -> str | None:
        self._enter("holder", vip)
        return self.cloud.where.get(vip.address)

    def acquire(self, vip: Vip) -> bool:
        self._enter("acquire", vip)
        if self.cloud.where.get(vip.address) == self.mine:
            return False
        self.cloud.where[vip.address] = self.mine
        return True

    def release(self, vip: Vip) -> bool:
        self._enter("release", vip)
        if self.cloud.where.get(vip.address) != self.mine:
            return False
        del self.cloud.where[vip.address]
        return True
