"""VIPs on clouds without layer 2: a cloud API call moves the address, behind the same `VipPort`.

In a VPC a gratuitous ARP moves nothing: the cloud's fabric delivers an address only to the
network interface (or the route's next hop) that its API says holds it. A `MoverPort` is that
API for one VIP and one node: who holds the address (`holder`), take it (`acquire`: from the
other node's interface at once), give it back (`release`, only if it is ours). `CloudVips` puts
movers behind the `VipPort` the runners use: a VIP with a mover is added to the interface *and*
acquired in the cloud, removed from both, and probed by asking the cloud who holds it (an ARP
probe in a VPC is answered by the fabric, not by the holder). VIPs without a mover go to the
local port unchanged.

Every mover call is bounded (`run_bounded`, the mover's `timeout`) and fails with a `VipError`
that names the cloud, the call, the object and the cloud's own error code; `present` never
raises and asks the cloud at most every `check_every` seconds (the answer of the last call
meanwhile), so a VIP checker does not turn into an API flood.

The movers: `aws.AwsVips` (boto3), `azure.AzureVips` and `gcp.GcpVips` (their REST APIs over
httpx; credentials from azure-identity and google-auth), built by `movers_for` from a module's
configuration. Credentials come only from each cloud's standard sources, never from hakit's
files (docs/cloud.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from hakit.adapters.vip import InUse, Probe, Vip, VipError, VipPort
from hakit.config.cloud import AwsMover, AzureMover, GcpMover
from hakit.config.vips import VirtualIp

CHECK_EVERY = 10.0  # s between two questions to the cloud from `present`


class MoverPort(Protocol):
    """One cloud's view of where VIPs are, for one node. Blocking and bounded."""

    @property
    def mine(self) -> str:
        """This node's holder id in the cloud (an interface, a NIC, an instance)."""
        ...

    def node_of(self, holder: str) -> str | None:
        """The module node whose holder id is `holder`; None for an object of no module node."""
        ...

    def holder(self, vip: Vip) -> str | None:
        """Who holds `vip` in the cloud (`mine` if this node), None if nobody."""
        ...

    def acquire(self, vip: Vip) -> bool:
        """Make the cloud deliver `vip` to this node: True if moved now, False if it was ours."""
        ...

    def release(self, vip: Vip) -> bool:
        """Stop the cloud delivering `vip` here: True if released now, False if not ours."""
        ...


def missing_extra(cloud: str, module: str) -> VipError:
    return VipError(
        f"the {cloud} VIP mover needs the Python package {module}, which is not installed: "
        f"`pip install 'hakit[{cloud.lower()}]'` in hakit's environment"
    )


def _build(cfg: AwsMover | AzureMover | GcpMover, node: str) -> MoverPort:
    if isinstance(cfg, AwsMover):
        from hakit.adapters.aws import AwsVips

        return AwsVips(cfg, node)
    if isinstance(cfg, AzureMover):
        from hakit.adapters.azure import AzureVips

        return AzureVips(cfg, node)
    from hakit.adapters.gcp import GcpVips

    return GcpVips(cfg, node)


def movers_for(
    vips: tuple[VirtualIp, ...],
    node: str,
    build: Callable[[AwsMover | AzureMover | GcpMover, str], MoverPort] = _build,
) -> dict[str, MoverPort]:
    """VIP address -> its mover on `node`, for the VIPs of a module that have one. `VipError`
    if a mover cannot be made (its cloud's package missing)."""
    return {str(v.address.ip): build(v.mover, node) for v in vips if v.mover is not None}


@dataclass
class _Known:
    mine: bool
    at: float


@dataclass
class CloudVips:
    """A `VipPort`: `local` for the interfaces, the `movers` (by VIP address) for the cloud."""

    local: VipPort
    movers: Mapping[str, MoverPort]
    check_every: float = CHECK_EVERY
    clock: Callable[[], float] = time.monotonic
    _known: dict[str, _Known] = field(default_factory=dict)

    def _mover(self, vip: Vip) -> MoverPort | None:
        return self.movers.get(vip.address)

    def interface_of(self, vip: Vip) -> str:
        return self.local.interface_of(vip)

    def add(self, vip: Vip) -> bool:
        mover = self._mover(vip)
        added = self.local.add(vip)
        if mover is None:
            return added
        try:
            moved = mover.acquire(vip)
        except VipError:
            if added:  # nothing half-done: the address is not left here without the cloud
                self.local.remove(vip)
            raise
        self._known[vip.address] = _Known(True, self.clock())
        return added or moved

    def remove(self, vip: Vip) -> bool:
        mover = self._mover(vip)
        removed = self.local.remove(vip)
        if mover is None:
            return removed
        self._known.pop(vip.address, None)
        return mover.release(vip) or removed

    def present(self, vip: Vip) -> bool:
        if not self.local.present(vip):
            return False
        mover = self._mover(vip)
        if mover is None:
            return True
        known = self._known.get(vip.address)
        now = self.clock()
        if known is None or now - known.at >= self.check_every:
            try:
                known = _Known(mover.holder(vip) == mover.mine, now)
            except VipError:
                if known is None:
                    return False
                known = _Known(known.mine, now)  # the API did not answer: the last answer
            self._known[vip.address] = known
        return known.mine

    def held(self) -> list[Vip]:
        return self.local.held()

    def announce(self, vip: Vip, sender: bytes | None = None) -> None:
        self.local.announce(vip, sender)

    def probe(self, vip: Vip, probe: Probe) -> InUse | None:
        mover = self._mover(vip)
        if mover is None:
            return self.local.probe(vip, probe)
        holder = mover.holder(vip)
        if holder is None or holder == mover.mine:
            return None
        return InUse(holder, mover.node_of(holder), "cloud holder", "asked the cloud's API")
